# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tables that repeat, leaves where none can be, and the addresses printed
for them: what a corrupt kernel's tables do to the whole-table walk.

Each case failed before its fix: a TDP table page linked from every entry of
the root was walked 512 times (512 times its leaves), a cycle or a table
repeated at every level kept the walk going for hours, and a leaf in the
upper half of a GVA root's top table came out as a non-canonical address
that ``--addr`` refused.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from drgn_kvmwalk import stats as stats_mod
from drgn_kvmwalk.cli import EXIT_USAGE, main
from drgn_kvmwalk.errors import CorruptList
from drgn_kvmwalk.leaves import (
    LeafRun,
    Unreadable,
    count_leaves,
    iter_leaf_columns,
    iter_leaves,
    iter_range_blocks,
)
from drgn_kvmwalk.walk import MAX_TABLES, Root, TableCache, walk_addr

from .tables import FakeMem, Tables
from .test_walk import X86, X86_LEAF, X86_TABLE, npt

PS = 1 << 7


def shadow(level=4):
    """Shadow paging tables of a 64-bit guest (a GVA root)."""
    mem = FakeMem()
    t = Tables(mem, level, X86_TABLE, X86_LEAF)
    return mem, t, Root(t.root, level, False, level)


def entries(mem, table):
    return np.frombuffer(mem.read(table, 4096), dtype="<u8").tolist()


def leaves_of(items):
    """(address, sptep) of every leaf of iter_leaves' items."""
    got = []
    for item in items:
        if isinstance(item, LeafRun):
            got += zip(item.addrs().tolist(), item.spteps().tolist())
    return got


def skipped(items, kind):
    return [u for u in items if isinstance(u, Unreadable) and u.kind == kind]


def test_a_tdp_table_linked_from_every_root_entry_is_walked_once(deadline):
    mem, t, root = npt(4)
    sptep = t.map(0x1000, 0x5000)
    top = entries(mem, t.root)[0]
    for i in range(1, 512):
        mem.set(t.root + 8 * i, top)
    items = list(iter_leaves(mem, X86, root))
    assert leaves_of(items) == [(0x1000, sptep)]
    again = skipped(items, "repeated")
    assert [(u.level, u.base, u.size) for u in again] == [
        (3, i << 39, 1 << 39) for i in range(1, 512)
    ]
    assert "KVM never links a TDP table page twice" in again[0].error
    assert count_leaves(mem, X86, root)[0] == {1: 1}


def test_a_page_table_repeated_in_a_page_directory_is_walked_once():
    """The page directory's page tables are read as one block: the repeat
    is found there too, in its place in address order."""
    mem, t, root = npt(4)
    a = t.map(0x0, 0x5000)
    b = t.map(0x200000, 0x6000)
    pd = t.table_for(0x0, 2)
    mem.set(pd + 8 * 2, entries(mem, pd)[0])  # 0x400000 -> the page table of 0x0
    items = list(iter_leaves(mem, X86, root))
    assert leaves_of(items) == [(0x0, a), (0x200000, b)]
    assert [(u.level, u.base) for u in skipped(items, "repeated")] == [(1, 0x400000)]
    assert isinstance(items[-1], Unreadable)  # after 0x200000, in address order


def test_a_shadow_page_shared_at_its_own_level_is_walked_again():
    """One shadow page, several parents: legitimate, each parent's addresses."""
    mem, t, root = shadow(4)
    sptep = t.map(0x1000, 0x5000)
    mem.set(t.root + 8 * 1, entries(mem, t.root)[0])
    items = list(iter_leaves(mem, X86, root))
    assert leaves_of(items) == [(0x1000, sptep), ((1 << 39) + 0x1000, sptep)]
    assert not [u for u in items if isinstance(u, Unreadable)]


def test_a_shadow_cycle_is_reported_where_it_comes_back(deadline):
    mem, t, root = shadow(4)
    sptep = t.map(0x1000, 0x5000)
    l3 = t.table_for(0x1000, 3)
    mem.set(l3 + 8 * 5, t.root | X86_TABLE)  # back to the root, as a level-2 table
    items = list(iter_leaves(mem, X86, root))
    assert leaves_of(items) == [(0x1000, sptep)]
    (u,) = skipped(items, "repeated")
    assert (u.level, u.table, u.base) == (2, t.root, 5 << 30)
    assert "reached again at level 2, first at level 4" in u.error


def repeating_tree(level):
    """Every entry of every table page points at the one page below: 512**(level-1)
    page tables' worth of walk from ``level`` pages."""
    mem = FakeMem()
    pages = [mem.alloc() for _ in range(level)]
    leaf = 0x5000 | X86_LEAF
    for i in range(512):
        mem.set(pages[-1] + 8 * i, leaf)
    for upper, lower in zip(pages, pages[1:]):
        for i in range(512):
            mem.set(upper + 8 * i, lower | X86_TABLE)
    return mem, Root(pages[0], level, False, level)


def test_the_table_budget_ends_a_walk_that_would_take_hours(deadline):
    mem, root = repeating_tree(4)
    items = list(iter_leaf_columns(mem, X86, root, max_tables=1000))
    (u,) = skipped(items, "budget")
    assert items[-1] is u
    assert "--max-tables 1000" in u.error and "raise --max-tables" in u.error
    read = sum(len(c.addrs) for c in items if not isinstance(c, Unreadable))
    assert 0 < read <= 1000 * 512
    assert mem.reads <= 1000 + 1  # + the read of the page it stopped at: none
    # The rest of the range is what it covers, from where it stopped.
    assert u.base + u.size == 1 << 48
    # Each view ends the same way.
    for view in (iter_leaves, iter_range_blocks):
        assert skipped(list(view(mem, X86, root, max_tables=1000)), "budget")
    counts, holes = count_leaves(mem, X86, root, max_tables=1000)
    assert [h.kind for h in holes] == ["budget"]


def test_the_default_budget_is_more_than_a_real_root_has():
    # 16 GiB of table pages: 8 TiB of guest memory in 4K pages under one root.
    assert MAX_TABLES * 4096 == 16 << 30


@pytest.mark.parametrize("level,addr", [(4, 0xFFFF_9600_0000_0000), (5, 0xFF2C_0000_0000_0000)])
def test_gva_leaves_in_the_upper_half_are_canonical_and_walk_again(level, addr):
    """A leaf in the upper half of a GVA root's top table (a page-size bit
    KVM never sets there) comes out at its canonical address, and --addr of
    that address reaches the same SPTE."""
    mem, t, root = shadow(level)
    last = t.map(0xFFFF_FFFF_FFFF_F000 & ((1 << (9 * level + 12)) - 1), 0x7000)  # entry 511 path
    top = t.root + 8 * 300
    mem.set(top, 0x4000_0000_0000 | X86_LEAF | PS)
    got = leaves_of(list(iter_leaves(mem, X86, root)))
    want_last = ((1 << 64) - 1) & ~0xFFF  # the last page of the address space
    assert got == [(addr, top), (want_last, last)]
    cols = [c for c in iter_leaf_columns(mem, X86, root) if not isinstance(c, Unreadable)]
    assert sorted(a for c in cols for a in c.addrs.tolist()) == [addr, want_last]
    blocks = [b for b in iter_range_blocks(mem, X86, root) if not isinstance(b, Unreadable)]
    assert sorted(a for b in blocks for a in b.start.tolist()) == [addr, want_last]
    cache = TableCache(mem)
    for a, sptep in got:
        w = walk_addr(cache, X86, root, a)
        assert w.steps[-1].sptep == sptep and w.hpa is not None


def test_a_leaf_at_level_4_is_counted_at_level_4():
    mem, t, root = npt(4)
    t.map(0x1000, 0x5000)
    mem.set(t.root + 8 * 3, 0x4000_0000_0000 | X86_LEAF | PS)
    assert count_leaves(mem, X86, root)[0] == {1: 1, 4: 1}


# -- --stats goes on past what is corrupt ---------------------------------------


def _sp(address, spt, level, root_count=0):
    return types.SimpleNamespace(
        role=types.SimpleNamespace(level=level),
        spt=spt,
        root_count=root_count,
        value_=lambda: address,
    )


def test_stats_counts_the_rest_and_names_each_corrupt_part(monkeypatch):
    mem, t, _ = npt(4)
    for i in range(3):
        t.map(0x1000 * (i + 1), 0x5000 + 0x1000 * i)
    leaf4 = t.root + 8 * 7
    mem.set(leaf4, 0x4000_0000_0000 | X86_LEAF | PS)  # a leaf where none can be
    shadow_page = mem.alloc()
    for i in range(2):
        mem.set(shadow_page + 8 * i, (0x9000 + 0x1000 * i) | X86_LEAF)

    def roots(kvm):
        yield _sp(0xA000, 0x7777000, 15)  # role.level 15: not walked
        yield _sp(0xB000, t.root, 4)
        raise CorruptList("kvm->arch.tdp_mmu_roots", 0xB000, "is linked to twice (a cycle)")

    def pages(kvm):
        yield _sp(0xC000, 0x8888000, 0)
        yield _sp(0xD000, shadow_page, 1)

    monkeypatch.setattr(stats_mod, "for_each_tdp_mmu_root", roots)
    monkeypatch.setattr(stats_mod, "for_each_active_mmu_page", pages)
    monkeypatch.setattr(stats_mod, "virt_to_phys", lambda prog, x: x)
    monkeypatch.setattr(stats_mod, "spte_format", lambda kvm: X86)
    monkeypatch.setattr(stats_mod, "DrgnPhysMem", lambda prog: mem)
    monkeypatch.setattr(stats_mod, "vm_pid", lambda kvm: 4242)
    monkeypatch.setattr(
        stats_mod, "kvm_page_counters", lambda kvm: {"pages_4k": 5, "pages_2m": 0, "pages_1g": 0}
    )
    st = stats_mod.vm_stats(types.SimpleNamespace(prog_=None))
    assert st.leaves == {"4K": 5, "2M": 0, "1G": 0} and not st.differences
    assert st.broken == [
        "role.level of TDP MMU root 0x7777000 (struct kvm_mmu_page 0xa000) is 15, not a "
        "root level (2-5): the kernel's memory is corrupt; its leaves are not counted",
        f"1 leaf SPTE at level 4 under TDP MMU root {t.root:#x}: the page-size bit is "
        "reserved at level 4, the tables are corrupt; not counted",
        "kvm->arch.tdp_mmu_roots is corrupt: the entry at 0xb000 is linked to twice (a cycle)",
        "role.level of shadow page 0x8888000 (struct kvm_mmu_page 0xc000) is 0, not a "
        "level (1-5): the kernel's memory is corrupt; its leaves are not counted",
    ]


# -- --verify names a leaf where none can be ------------------------------------


def test_verify_names_a_leaf_at_level_4():
    from drgn_kvmwalk.verify import _Leaves

    from .test_verify import Host, checker

    c = checker(Host())
    u64 = np.uint64
    spte = 0x4000_0000_0000 | X86_LEAF | PS
    c.leaves(
        0x1000,
        0,
        _Leaves(
            4,
            np.array([3 << 39], dtype=u64),
            np.array([(3 << 39) >> 12], dtype=u64),
            np.array([0x1018], dtype=u64),
            np.array([spte], dtype=u64),
        ),
        False,
    )
    (p,) = c.take()
    assert (p.problem, p.level, p.sptep, p.spte, p.addr) == ("leaf_level", 4, 0x1018, spte, 3 << 39)


# -- --max-tables on the command line ---------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dump", "--vcpu", "0", "--max-tables", "0"], "must be at least 1"),
        (["--addr", "0x1000", "--vcpu", "0", "--max-tables", "9"], "--max-tables goes with"),
    ],
)
def test_max_tables_is_checked(argv, message):
    import io

    out, err = io.StringIO(), io.StringIO()
    assert main(None, argv, out=out, err=err) == EXIT_USAGE  # type: ignore[arg-type]
    assert message in err.getvalue() and out.getvalue() == ""


# -- What the fuzz run found (vm-test/fuzz.py) --------------------------------------


def test_a_present_spte_that_also_matches_the_mmio_pattern_is_followed():
    """KVM's walks decide by is_shadow_present_pte() alone: an SPTE with the
    MMU-present bit is a leaf (or a table) even when its bits also match
    shadow_mmio_mask/value.  The tool took all-ones for an MMIO SPTE."""
    from drgn_kvmwalk.spte import decode_spte

    assert X86.is_mmio((1 << 64) - 1)
    info = decode_spte(X86, (1 << 64) - 1, 1)
    assert (info.kind, info.present, info.leaf) == ("leaf", True, True)
    mem, t, root = npt(4)
    sptep = t.put(0x1000, 1, (1 << 64) - 1)
    w = walk_addr(TableCache(mem), X86, root, 0x1000)
    assert w.page_size == 4096 and w.steps[-1].sptep == sptep
    assert leaves_of(list(iter_leaves(mem, X86, root))) == [(0x1000, sptep)]


def test_a_pae_root_entry_is_used_by_its_address_bits():
    """shadow_walk_init_using_root(): pae_root[i] & SPTE_BASE_ADDR_MASK, zero
    or not; the present bit is not looked at."""
    mem = FakeMem()
    pae = mem.alloc()
    pd = mem.alloc()
    mem.set(pae + 8 * 1, pd)  # no present bit
    pt = mem.alloc()
    mem.set(pd, pt | X86_TABLE)
    mem.set(pt, 0x5000 | X86_LEAF)
    root = Root(mem.alloc(), 4, False, 3, pae)
    w = walk_addr(TableCache(mem), X86, root, 1 << 30)
    assert w.hpa == 0x5000
    assert leaves_of(list(iter_leaves(mem, X86, root))) == [(1 << 30, pt)]


def test_the_budget_stops_in_address_order_inside_a_page_directory():
    """The page tables of a page directory are read as a block: near the
    end of the budget they are taken one by one, so that the leaves before
    the stop are all given (they were lost with the block read)."""
    mem, t, root = npt(4)
    t.map(0x0, 0x5000, level=2)  # a 2M leaf first
    for i in range(1, 5):
        t.map(i << 21, 0x6000 + (i << 12))
    items = list(iter_leaves(mem, X86, root, max_tables=5))  # root, PDPT, PD, 2 page tables
    assert [a for a, _ in leaves_of(items)] == [0x0, 1 << 21, 2 << 21]
    (u,) = skipped(items, "budget")
    assert u.base == 3 << 21 and items[-1] is u
