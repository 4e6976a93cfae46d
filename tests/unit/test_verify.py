# SPDX-License-Identifier: LGPL-2.1-or-later
"""--verify's checks of leaf SPTEs, on made-up memslots and made-up host page
tables: each problem is found where it was made, and nowhere else."""

from __future__ import annotations

import numpy as np

from drgn_kvmwalk.guest import HostPageTables, HostUnmapped
from drgn_kvmwalk.kvm import Memslot
from drgn_kvmwalk.spte import PAGE_SIZE, x86_format
from drgn_kvmwalk.verify import (
    HOST_OK,
    HOST_UNMAPPED,
    HOST_UNREADABLE,
    HostColumns,
    _Checker,
    _Invalidation,
    _Leaves,
    _Slots,
)
from drgn_kvmwalk.walk import TableCache

from .tables import MMU_PRESENT, FakeMem, Tables

FMT = x86_format(phys_bits=48)
U64 = np.uint64
HOST_TABLE = MMU_PRESENT | 0x7  # P, RW, US (bit 11: what Tables tests)
HOST_LEAF_RW = 0x67  # P, RW, US, A, D
HOST_LEAF_RO = 0x65  # P, US, A, D
SPTE_RW = MMU_PRESENT | (1 << 9) | (1 << 10) | 0x7  # host- and MMU-writable, W
SPTE_RO = MMU_PRESENT | 0x5

SLOT_HVA = 0x7F00_0000_0000
SLOT_GFN = 0x100  # GPA 0x100000
SLOT_PAGES = 1024  # 4 MiB


NO_INVALIDATION = _Invalidation(0, None, None, True)


class FakeHost:
    """What HostColumns needs of HostPageTables, without a kernel."""

    entry = HostPageTables.entry

    def __init__(self, mem: FakeMem, pgd: int) -> None:
        self.pgd = pgd
        self.levels = 4
        self.addr_mask = ((1 << 52) - 1) & ~0xFFF
        self.tables = TableCache(mem)


class Host:
    """A VMM whose one memslot of 4 MiB is mapped by 4K host pages at
    HPA 0x4000_0000 + 4K * i, read-only from page 8 on, the last 2M of it
    by one huge host page (from page 512 on), page 5 not mapped."""

    def __init__(self) -> None:
        self.mem = FakeMem()
        self.tables = Tables(self.mem, 4, HOST_TABLE, 0)
        for i in range(SLOT_PAGES // 2):
            if i == 5:
                continue
            bits = HOST_LEAF_RW if i < 8 else HOST_LEAF_RO
            self.tables.put(SLOT_HVA + i * PAGE_SIZE, 1, self.hpa(i) | bits)
        self.tables.put(SLOT_HVA + (1 << 21), 2, self.hpa(512) | HOST_LEAF_RW | (1 << 7))
        self.columns = HostColumns(FakeHost(self.mem, self.tables.root))  # type: ignore[arg-type]

    @staticmethod
    def hpa(page: int) -> int:
        return 0x4000_0000 + page * PAGE_SIZE


def checker(
    host: Host,
    readonly_slot: bool = False,
    inval: _Invalidation = NO_INVALIDATION,
) -> _Checker:
    slot = Memslot(0, 1, SLOT_GFN, SLOT_PAGES, SLOT_HVA, 2 if readonly_slot else 0)
    return _Checker(
        None,  # type: ignore[arg-type]  # no kernel: only leaves() is called
        4242,
        FMT,
        host.mem,
        {0: _Slots([slot])},
        lambda: host.columns,
        inval,
        {},
    )


def leaves(level: int, pages_and_sptes: list) -> _Leaves:
    gfns = np.array([SLOT_GFN + p for p, _ in pages_and_sptes], dtype=U64)
    sptes = np.array([s for _, s in pages_and_sptes], dtype=U64)
    spteps = np.arange(len(gfns), dtype=U64) * U64(8) + U64(0x9000_0000)
    return _Leaves(level, gfns << U64(12), gfns, spteps, sptes)


def problems(c: _Checker) -> list:
    return sorted((int(p.gfn) - SLOT_GFN, p.problem) for p in c.take())


def test_host_columns_translate_4k_huge_and_holes() -> None:
    host = Host()
    hvas = np.array(
        [
            SLOT_HVA + 3 * PAGE_SIZE + 7,
            SLOT_HVA + 5 * PAGE_SIZE,
            SLOT_HVA + 600 * PAGE_SIZE,
            0x1000,
        ],
        dtype=U64,
    )
    hpa, size, writable, status = host.columns.translate(hvas)
    assert status.tolist() == [HOST_OK, HOST_UNMAPPED, HOST_OK, HOST_UNMAPPED]
    assert int(hpa[0]) == Host.hpa(3) + 7
    assert int(hpa[2]) == Host.hpa(600) and int(size[2]) == 1 << 21
    assert writable.tolist() == [True, False, True, False]


def _one_by_one(host: Host, hvas: "np.ndarray") -> list:
    """HostPageTables.entry per HVA: what translate() must give for each."""
    out = []
    fake = host.columns.host
    for hva in hvas.tolist():
        try:
            e = fake.entry(hva)
        except HostUnmapped:
            out.append((0, 0, False, HOST_UNMAPPED))
            continue
        span = 1 << (12 + 9 * (e.level - 1))
        hpa = (e.value & fake.addr_mask & ~(span - 1)) | (hva & (span - 1))
        out.append((hpa, span, e.writable and bool(e.value & 2), HOST_OK))
    return out


def test_host_columns_agree_with_one_walk_per_address() -> None:
    """Sorted and unsorted, over 4K, 2M and 1G host pages, holes and another
    GiB: each HVA as HostPageTables.entry finds it alone."""
    host = Host()
    gib = 1 << 30
    host.tables.put(SLOT_HVA + 2 * gib, 3, 0x8000_0000 | HOST_LEAF_RO | (1 << 7))
    rng = np.random.default_rng(7)
    offsets = rng.integers(0, 2 * SLOT_PAGES * PAGE_SIZE, 400).astype(U64)
    hvas = np.concatenate(
        [U64(SLOT_HVA) + offsets, U64(SLOT_HVA + 2 * gib) + offsets, U64(SLOT_HVA + gib) + offsets]
    )
    for order in (np.sort(hvas), hvas):
        hpa, size, writable, status = host.columns.translate(order)
        got = list(zip(hpa.tolist(), size.tolist(), writable.tolist(), status.tolist()))
        assert got == _one_by_one(host, order)
    assert HOST_OK in status.tolist() and HOST_UNMAPPED in status.tolist()


def test_host_columns_unreadable_page_table() -> None:
    host = Host()
    hvas = np.array([SLOT_HVA + 3 * PAGE_SIZE, SLOT_HVA + 600 * PAGE_SIZE], dtype=U64)
    pt = host.columns.host.entry(int(hvas[0]), lowest=2).value & ~0xFFF & ((1 << 52) - 1)
    del host.mem.pages[pt]
    _, _, _, status = host.columns.translate(hvas)
    assert status.tolist() == [HOST_UNREADABLE, HOST_OK]


def test_healthy_leaves_have_no_problems() -> None:
    host = Host()
    c = checker(host)
    c.leaves(0, 0, leaves(1, [(p, Host.hpa(p) | SPTE_RW) for p in (0, 1, 7)]), False)
    c.leaves(0, 0, leaves(1, [(p, Host.hpa(p) | SPTE_RO) for p in (8, 9, 600)]), False)
    c.leaves(0, 0, leaves(2, [(512, Host.hpa(512) | SPTE_RW | (1 << 7))]), False)
    assert problems(c) == [] and c.checked == 7 and c.problems == 0


def test_each_fault_is_found_where_it_was_made() -> None:
    host = Host()
    c = checker(host)
    c.leaves(
        0,
        0,
        leaves(
            1,
            [
                (0, Host.hpa(1) | SPTE_RO),  # another page than the host's
                (5, Host.hpa(5) | SPTE_RO),  # the host does not map it
                (8, Host.hpa(8) | SPTE_RW),  # writable over a read-only PTE
                (9, Host.hpa(9) | SPTE_RO | (1 << 9)),  # host-writable over read-only
                (SLOT_PAGES, 0x1234000 | SPTE_RO),  # outside the memslot
                (1, Host.hpa(1) | SPTE_RW),  # healthy
            ],
        ),
        False,
    )
    # A 2M SPTE over 4K host pages.
    c.leaves(0, 0, leaves(2, [(0, Host.hpa(0) | SPTE_RO | (1 << 7))]), False)
    assert problems(c) == [
        (0, "host_page_smaller"),
        (0, "pfn_mismatch"),
        (5, "host_unmapped"),
        (8, "writable_over_readonly"),
        (9, "host_writable_over_readonly"),
        (SLOT_PAGES, "no_memslot"),
    ]
    assert c.problems == 6 and c.checked == 7


def test_huge_leaf_past_its_memslot() -> None:
    host = Host()
    c = checker(host)
    c.leaves(0, 0, leaves(2, [(SLOT_PAGES - 256, Host.hpa(768) | SPTE_RO | (1 << 7))]), False)
    assert (SLOT_PAGES - 256, "memslot_edge") in problems(c)


def test_readonly_memslot_and_address_space() -> None:
    host = Host()
    c = checker(host, readonly_slot=True)
    c.leaves(0, 0, leaves(1, [(1, Host.hpa(1) | SPTE_RW)]), False)
    c.leaves(0, 1, leaves(1, [(2, Host.hpa(2) | SPTE_RO)]), False)  # SMM: no memslot
    assert problems(c) == [(1, "readonly_memslot"), (2, "no_memslot")]


def test_invalid_roots_and_invalidations_are_exceptions() -> None:
    host = Host()
    c = checker(host)
    c.leaves(0, 0, leaves(1, [(0, Host.hpa(1) | SPTE_RO)]), True)
    assert problems(c) == [] and c.exceptions == {"invalid_root": 1}
    # An invalidation of the HVAs of pages 0-1 (kernels before v6.8 keep HVAs).
    inval = _Invalidation(1, SLOT_HVA, SLOT_HVA + 2 * PAGE_SIZE, True)
    c = checker(host, inval=inval)
    c.leaves(0, 0, leaves(1, [(0, Host.hpa(1) | SPTE_RO), (3, Host.hpa(4) | SPTE_RO)]), False)
    assert problems(c) == [(3, "pfn_mismatch")]
    assert c.exceptions == {"invalidation_in_progress": 1}
    # The same by GFN (v6.8 and later), and with no range kept (v5.10).
    c = checker(host, inval=_Invalidation(1, SLOT_GFN + 3, SLOT_GFN + 4, False))
    c.leaves(0, 0, leaves(1, [(0, Host.hpa(1) | SPTE_RO), (3, Host.hpa(4) | SPTE_RO)]), False)
    assert problems(c) == [(0, "pfn_mismatch")]
    c = checker(host, inval=_Invalidation(1, None, None, True))
    c.leaves(0, 0, leaves(1, [(0, Host.hpa(1) | SPTE_RO)]), False)
    assert problems(c) == [] and c.exceptions == {"invalidation_in_progress": 1}


def test_guest_memfd_slots_are_not_compared() -> None:
    host = Host()
    slot = Memslot(0, 1, SLOT_GFN, SLOT_PAGES, SLOT_HVA, 1 << 2)
    c = checker(host)
    c.slots = {0: _Slots([slot])}
    c.leaves(0, 0, leaves(1, [(0, Host.hpa(1) | SPTE_RO)]), False)
    assert problems(c) == [] and c.exceptions == {"guest_memfd": 1}
