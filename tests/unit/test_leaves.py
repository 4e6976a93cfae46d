# SPDX-License-Identifier: LGPL-2.1-or-later
"""iter_leaves(): every leaf under a root, in address order, over synthetic tables."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_kvmwalk.leaves import (
    LeafColumns,
    LeafRun,
    Unreadable,
    count_leaves,
    iter_leaf_columns,
    iter_leaves,
)
from drgn_kvmwalk.spte import FROZEN_SPTE_VALUES, decode_spte, level_size
from drgn_kvmwalk.walk import AddressError, Root, TableCache, walk_addr

from .tables import FakeMem, Tables
from .test_walk import (
    EPT,
    EPT_LEAF,
    EPT_TABLE,
    X86,
    X86_LEAF,
    X86_TABLE,
    npt,
    old_layout,
    pae_setup,
)


def flatten(runs, fmt):
    """(addr, level, sptep, spte, hpa) per leaf, and the Unreadable items."""
    leaves, holes = [], []
    for r in runs:
        if isinstance(r, Unreadable):
            holes.append(r)
            continue
        assert isinstance(r, LeafRun) and len(r.indexes) == len(r.sptes) > 0
        for addr, sptep, spte, hpa in zip(
            r.addrs().tolist(), r.spteps().tolist(), r.sptes.tolist(), r.hpas(fmt).tolist()
        ):
            leaves.append((addr, r.level, sptep, spte, hpa))
    return leaves, holes


def flatten_columns(items):
    """What flatten() gives, from iter_leaf_columns()."""
    leaves, holes = [], []
    for c in items:
        if isinstance(c, Unreadable):
            holes.append(c)
            continue
        assert isinstance(c, LeafColumns) and len(c.addrs) > 0
        cols = (c.addrs.tolist(), c.spteps.tolist(), c.sptes.tolist(), c.hpas.tolist())
        leaves += [(a, c.level, p, s, h) for a, p, s, h in zip(*cols)]
    return leaves, holes


def reference(mem, fmt, table, level, base=0):
    """A plain recursive reading of the tables with decode_spte()."""
    out = []
    for i in range(512):
        sptep = table + 8 * i
        spte = int.from_bytes(mem.read(sptep, 8), "little")
        info = decode_spte(fmt, spte, level)
        addr = base + i * level_size(level)
        if info.leaf:
            out.append((addr, level, sptep, spte, info.hpa))
        elif info.present:
            out += reference(mem, fmt, spte & fmt.base_addr_mask, level - 1, addr)
    return out


def test_leaves_in_address_order_with_mixed_sizes():
    mem, t, root = npt(4)
    t.map(0x4000_0000, 0x8000_0000, level=3)  # 1G
    t.map(0x20_0000, 0x60_0000, level=2)  # 2M, before the 4K ones above it
    t.map(0x40_1000, 0x9000)
    t.map(0x40_0000, 0x7000)
    t.map(0x7F_0000_0000, 0x5000)
    leaves, holes = flatten(iter_leaves(mem, X86, root), X86)
    assert not holes
    assert [(a, lvl, h) for a, lvl, _, _, h in leaves] == [
        (0x20_0000, 2, 0x60_0000),
        (0x40_0000, 1, 0x7000),
        (0x40_1000, 1, 0x9000),
        (0x4000_0000, 3, 0x8000_0000),
        (0x7F_0000_0000, 1, 0x5000),
    ]
    for addr, level, sptep, _, hpa in leaves:
        w = walk_addr(TableCache(mem), X86, root, addr)
        assert (w.hpa, w.page_size, w.steps[-1].sptep) == (hpa, level_size(level), sptep)


def test_each_table_page_is_read_once():
    mem, t, root = npt(5)
    for i in range(40):
        t.map(0x1000 * i, 0x100000 + 0x1000 * i)
    mem.reads = 0
    leaves, _ = flatten(iter_leaves(mem, X86, root), X86)
    assert len(leaves) == 40 and mem.reads == 5


def test_non_leaf_garbage_is_not_a_leaf():
    mem, t, root = npt(4)
    t.map(0x1000, 0x5000)
    t.put(0x2000, 1, 0)  # empty
    t.put(0x3000, 1, sorted(FROZEN_SPTE_VALUES)[0])  # frozen
    t.put(0x4000, 1, X86_LEAF & ~(1 << 11))  # no MMU-present bit
    leaves, _ = flatten(iter_leaves(mem, X86, root), X86)
    assert [a for a, *_ in leaves] == [0x1000]


def test_range_limits_the_walk():
    mem, t, root = npt(4)
    t.map(0x0, 0x10_0000, level=2)
    for i in range(8):
        t.map(0x20_0000 + 0x1000 * i, 0x5000 + 0x1000 * i)
    got = [a for a, *_ in flatten(iter_leaves(mem, X86, root, 0x20_2000, 0x20_4000), X86)[0]]
    assert got == [0x20_2000, 0x20_3000]
    # A large leaf that overlaps the range counts whole.
    got = [a for a, *_ in flatten(iter_leaves(mem, X86, root, 0x1F_F000, 0x20_1000), X86)[0]]
    assert got == [0x0, 0x20_0000]
    with pytest.raises(AddressError):
        list(iter_leaves(mem, X86, root, 0x2000, 0x1000))
    with pytest.raises(AddressError):
        list(iter_leaves(mem, X86, root, 0, (1 << 48) + 1))


def test_shadow_gvas_are_canonical():
    mem, t, root = npt(4)
    root = root._replace(direct=False)
    t.map(0xFFFF_8880_0000_0000, 0x5000)
    t.map(0x7F00_0000_0000, 0x6000)
    leaves, _ = flatten(iter_leaves(mem, X86, root), X86)
    assert [a for a, *_ in leaves] == [0x7F00_0000_0000, 0xFFFF_8880_0000_0000]
    high, _ = flatten(iter_leaves(mem, X86, root, 0xFFFF_8000_0000_0000, 1 << 64), X86)
    assert [a for a, *_ in high] == [0xFFFF_8880_0000_0000]
    with pytest.raises(AddressError):
        list(iter_leaves(mem, X86, root, 0x7F00_0000_0000, 0xFFFF_8880_0000_1000))


@pytest.mark.parametrize("root_level,cpu_level", [(3, 3), (3, 2), (4, 3), (5, 3)])
def test_pae_root(root_level, cpu_level):
    mem, l2, root, pae_root = pae_setup(root_level, cpu_level)
    l2.map((2 << 30) | (5 << 21) | (6 << 12), 0x77000)
    leaves, _ = flatten(iter_leaves(mem, X86, root), X86)
    assert [(a, h) for a, _, _, _, h in leaves] == [((2 << 30) | (5 << 21) | (6 << 12), 0x77000)]


def test_unreadable_table_is_reported_and_the_rest_walked():
    mem, t, root = npt(4)
    t.map(0x1000, 0x5000)
    t.map(0x80_0000_0000, 0x6000)
    mem.set(t.root + 8 * 2, 0xDEAD000 | X86_TABLE)
    leaves, holes = flatten(iter_leaves(mem, X86, root), X86)
    assert [a for a, *_ in leaves] == [0x1000, 0x80_0000_0000]
    assert holes == [Unreadable(3, 0xDEAD000, 2 << 39, 1 << 39, holes[0].error)]


def test_5_10_layout_and_ept():
    fmt = old_layout()
    mem = FakeMem()
    t = Tables(mem, 4, 0x27, 0xC67)
    t.map(0x4000_1000, 0x8_0000)
    # MMIO: not a leaf.  (Another PML4 entry: this builder cannot see the
    # tables it made without the bit-11 present bit.)
    t.put(0x80_0000_0000, 1, (3 << 52) | (0xFEE00 << 12))
    leaves, _ = flatten(iter_leaves(mem, fmt, Root(t.root, 4, True, 4)), fmt)
    assert [(a, h) for a, _, _, _, h in leaves] == [(0x4000_1000, 0x8_0000)]
    mem = FakeMem()
    t = Tables(mem, 4, EPT_TABLE, EPT_LEAF)
    t.map(0x20_0000, 0x40_0000, level=2)
    leaves, _ = flatten(iter_leaves(mem, EPT, Root(t.root, 4, True, 4)), EPT)
    assert [(a, lvl, h) for a, lvl, _, _, h in leaves] == [(0x20_0000, 2, 0x40_0000)]


@settings(max_examples=150, deadline=None)
@given(
    level=st.sampled_from([4, 5]),
    maps=st.lists(
        st.tuples(
            st.integers(0, (1 << 39) - 1),
            st.sampled_from([1, 1, 1, 2, 3]),
            st.integers(1, (1 << 20)),
        ),
        max_size=40,
    ),
    junk=st.lists(
        st.tuples(st.integers(0, (1 << 39) - 1), st.integers(0, (1 << 64) - 1)), max_size=10
    ),
    window=st.tuples(st.integers(0, (1 << 39) - 1), st.integers(1, 1 << 38)),
)
def test_matches_a_plain_reading(level, maps, junk, window):
    """Random mappings and random junk entries: the same leaves as a plain
    recursive decode, and the same HPA as walking each leaf's address; a
    range returns exactly the leaves that overlap it."""
    mem, t, root = npt(level)
    placed = []  # (addr, size): a new leaf may not overlap an older one

    def free(addr, size):
        return all(addr + size <= a or a + s <= addr for a, s in placed)

    for addr, value in junk:
        addr &= ~0xFFF
        if free(addr, 0x1000):
            placed.append((addr, 0x1000))
            t.put(addr, 1, value)
    for addr, lvl, pfn in maps:
        addr &= ~(level_size(lvl) - 1)
        if free(addr, level_size(lvl)):
            placed.append((addr, level_size(lvl)))
            t.map(addr, (pfn << 12) & ~(level_size(lvl) - 1), level=lvl)
    full, holes = flatten(iter_leaves(mem, X86, root), X86)
    assert not holes
    assert full == reference(mem, X86, t.root, level)
    assert count_leaves(mem, X86, root) == (Counter(x[1] for x in full), [])
    assert flatten_columns(iter_leaf_columns(mem, X86, root)) == (full, [])
    for addr, lvl, sptep, _, hpa in full[:20]:
        w = walk_addr(TableCache(mem), X86, root, addr)
        assert (w.hpa, w.page_size, w.steps[-1].sptep) == (hpa, level_size(lvl), sptep)
    start, length = window
    part, _ = flatten(iter_leaves(mem, X86, root, start, start + length), X86)
    assert part == [x for x in full if x[0] < start + length and x[0] + level_size(x[1]) > start]


def test_page_tables_under_one_pd_are_batched_like_one_by_one():
    """Many page tables under one page directory (the batched path), one of
    them unreadable, a 2M leaf between them, and ranges that cut the first
    and last: the same leaves as the plain reading, in address order."""
    mem, t, root = npt(4)
    for i in range(0, 40):
        if i == 7:
            t.map(i << 21, 0x4000_0000, level=2)
            continue
        for j in range(0, 512, 37 + i):
            t.map((i << 21) | (j << 12), 0x1_0000_0000 + (i << 21) + (j << 12))
    bad = t.table_for(9 << 21, 1)
    full = reference(mem, X86, t.root, 4)
    del mem.pages[bad]
    expect = [x for x in full if not (9 << 21) <= x[0] < (10 << 21)]
    leaves, holes = flatten(iter_leaves(mem, X86, root), X86)
    assert leaves == expect
    assert [(h.level, h.table, h.base) for h in holes] == [(1, bad, 9 << 21)]
    assert count_leaves(mem, X86, root) == (Counter(x[1] for x in expect), holes)
    assert flatten_columns(iter_leaf_columns(mem, X86, root)) == (expect, holes)
    lo, hi = (3 << 21) + 0x5000, (30 << 21) + 0x3000
    part, _ = flatten(iter_leaves(mem, X86, root, lo, hi), X86)
    assert part == [x for x in expect if x[0] < hi and x[0] + level_size(x[1]) > lo]
    assert flatten_columns(iter_leaf_columns(mem, X86, root, lo, hi))[0] == part


def test_full_page_tables_as_columns():
    """Page tables full of leaves (a pre-faulted guest): the columns are the
    leaves iter_leaves() gives, and the block holds no other table."""
    mem, t, root = npt(4)
    for i in range(3 * 512):
        t.map((4 << 21) + (i << 12), 0x1_0000_0000 + ((i * 7919) % 4096 << 12))
    full, _ = flatten(iter_leaves(mem, X86, root), X86)
    cols = list(iter_leaf_columns(mem, X86, root))
    assert len(cols) == 1 and flatten_columns(cols) == (full, [])
    assert len(full) == 3 * 512
