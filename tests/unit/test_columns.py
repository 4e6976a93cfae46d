# SPDX-License-Identifier: LGPL-2.1-or-later
"""columns.format_lines(): the same lines as Python's own formatting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_kvmwalk import columns
from drgn_kvmwalk.columns import Dec, Hex, Text, format_lines, format_lines_slowly

EDGES = sorted(
    {0, 1, (1 << 64) - 1}
    | {10**k + d for k in range(1, 20) for d in (-1, 0, 1)}
    | {16**k + d for k in range(1, 16) for d in (-1, 0, 1)}
    | {1 << k for k in range(64)}
)
LAYOUT = ['{"a": ', Dec(0), ', "b": ', Dec(1), ", ", Hex(0, 12), " ", Hex(1, 16), " ", Text(), "}"]
LAYOUT += [" |", Dec(0, 7), "|"]
TEXTS = ("x", "yy", "")


def both(a, b, which):
    """(format_lines, format_lines_slowly) of rows (a, b, which)."""
    cols = [np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)]
    w = np.array(which, dtype=np.int64)
    return format_lines(LAYOUT, cols, TEXTS, w), format_lines_slowly(LAYOUT, cols, TEXTS, w)


@pytest.fixture
def matrix_only(monkeypatch):
    """format_lines() makes every segment as a matrix, however short."""
    monkeypatch.setattr(columns, "_FEW", 1)


def test_edges_as_python_writes_them(matrix_only):
    a = [v for v in EDGES for _ in range(20)]  # runs of one width: the matrix way
    b = a[::-1]
    w = [i // 40 % 3 for i in range(len(a))]
    cols = [np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)]
    fast = format_lines(LAYOUT, cols, TEXTS, np.array(w))
    expect = "".join(
        f'{{"a": {x}, "b": {y}, {x:#014x} {y:#018x} {TEXTS[t]}}} |{x:>7}|\n'
        for x, y, t in zip(a, b, w)
    )
    assert fast == expect
    assert fast.splitlines()[0] == (
        '{"a": 0, "b": 18446744073709551615, 0x000000000000 0xffffffffffffffff x} |      0|'
    )


def test_long_runs_of_one_width_take_the_matrix_way(matrix_only):
    a = list(range(0x1000, 0x1000 + 4096 * 4096, 4096))
    b = [0x8000_0000_0000_0000 | v for v in a]
    cols = [np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)]
    fast = format_lines(LAYOUT, cols, TEXTS, np.zeros(len(a), dtype=np.int64))
    assert fast.count("\n") == len(a)
    assert fast.splitlines()[-1] == (
        f'{{"a": {a[-1]}, "b": {b[-1]}, {a[-1]:#014x} {b[-1]:#018x} x}} |{a[-1]:>7}|'
    )


def test_the_reference_is_python_formatting():
    fast, slow = both([5, 300], [1 << 63, 0], [1, 2])
    assert slow == (
        '{"a": 5, "b": 9223372036854775808, 0x000000000005 0x8000000000000000 yy} |      5|\n'
        '{"a": 300, "b": 0, 0x00000000012c 0x0000000000000000 } |    300|\n'
    )
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(EDGES), st.integers(0, (1 << 64) - 1)),
            st.integers(0, (1 << 64) - 1),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=300,
    ),
    st.booleans(),
)
def test_any_values(rows, sort):
    """Segments long and short, made as matrices or line by line."""
    if sort:  # address order: the usual, few width changes
        rows = sorted(rows)
    fast, slow = both(*zip(*rows))
    assert fast == slow


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(EDGES), st.integers(0, (1 << 64) - 1), st.integers(0, 2)),
        min_size=1,
        max_size=200,
    )
)
def test_any_values_as_matrices(rows):
    """The same, with every segment made as a matrix (one row each, often)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(columns, "_FEW", 1)
        fast, slow = both(*zip(*rows))
    assert fast == slow
