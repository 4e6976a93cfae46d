# SPDX-License-Identifier: LGPL-2.1-or-later
"""The short fixed-seed fuzz run (vm-test/fuzz.py): generated table trees,
walked by the tool and by the fuzzer's own reference walk; and the fuzzer
catching faults made on purpose in the tool it checks."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vm-test"))

import fuzz  # noqa: E402


def test_the_short_fuzz_run_finds_nothing():
    summary = fuzz.run(seed=7, cases=1000, seconds=110)
    assert summary["cases"] == 1000, summary
    assert (summary["crashes"], summary["hangs"], summary["mismatches"]) == (0, 0, 0), summary[
        "failures"
    ]
    assert summary["leaves_compared"] > 100_000 and summary["walks_compared"] > 10_000


def _drop_last_leaf(real):
    def iter_leaves(*args, **kwargs):
        items = list(real(*args, **kwargs))
        for i in range(len(items) - 1, -1, -1):
            if isinstance(items[i], fuzz.LeafRun):
                del items[i]
                break
        return iter(items)

    return iter_leaves


def _raise(*args, **kwargs):
    raise RuntimeError("made on purpose")


@pytest.mark.parametrize(
    "name,fault,counter",
    [
        ("iter_leaves", _drop_last_leaf(fuzz.iter_leaves), "mismatches"),
        ("count_leaves", _raise, "crashes"),
        ("canonical", lambda root, raw: raw, "mismatches"),
    ],
)
def test_the_fuzzer_catches_a_fault_made_on_purpose(monkeypatch, name, fault, counter):
    if name == "canonical":  # the reference's own sign extension is left alone
        import drgn_kvmwalk.leaves as leaves

        monkeypatch.setattr(leaves, "canonical", fault)
    else:
        monkeypatch.setattr(fuzz, name, fault)
    summary = fuzz.run(seed=7, cases=40, seconds=60)
    assert summary[counter] > 0, summary
