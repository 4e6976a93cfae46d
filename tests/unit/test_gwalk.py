# SPDX-License-Identifier: LGPL-2.1-or-later
"""The guest's page-table walk (drgn_kvmwalk.gwalk) on hand-built guest
tables, with every expected value worked out from the SDM's formats here,
not by the code under test."""

from __future__ import annotations

import struct
from typing import Dict

import pytest

from drgn_kvmwalk.gwalk import (
    GuestAddressError,
    GuestMode,
    GuestTableCache,
    GuestTableError,
    guest_mode,
    guest_walk,
    paging_level,
)
from drgn_kvmwalk.walk import PhysMemError

OFFSET = 0x1000_0000  # HPA = GPA + OFFSET for the pages this guest has
P, RW, US, PS = 1, 2, 4, 0x80
NX = 1 << 63


class GuestMem:
    """Guest-physical pages at HPA = GPA + OFFSET; others cannot be translated."""

    def __init__(self) -> None:
        self.pages: Dict[int, bytearray] = {}

    def page(self, gpa: int) -> bytearray:
        return self.pages.setdefault(gpa & ~0xFFF, bytearray(4096))

    def set64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.page(gpa), gpa & 0xFFF, value)

    def set32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self.page(gpa), gpa & 0xFFF, value)

    def translate(self, gpa: int) -> int:
        if gpa not in self.pages:
            raise GuestTableError(gpa, "no SPTE maps it")
        return gpa + OFFSET

    def read(self, address: int, size: int) -> bytes:
        page = self.pages.get((address - OFFSET) & ~0xFFF)
        if page is None:
            raise PhysMemError(address)
        off = address & 0xFFF
        return bytes(page[off : off + size])

    def cache(self) -> GuestTableCache:
        return GuestTableCache(self.translate, self)


def test_paging_level_from_registers() -> None:
    pg, pae, la57, lma = 1 << 31, 1 << 5, 1 << 12, 1 << 10
    assert paging_level(0, pae, lma) == 0
    assert paging_level(pg, 0, 0) == 2
    assert paging_level(pg, pae, 0) == 3
    assert paging_level(pg, pae, lma) == 4
    assert paging_level(pg, pae | la57, lma) == 5
    with pytest.raises(ValueError):
        guest_mode(1, 0, 0)


def test_four_level_4k() -> None:
    m = GuestMem()
    gva = 0x7F00_0000_1234  # PML4 254, PDPT 0, PD 0, PT 1
    m.set64(0x1000 + 8 * 254, 0x2000 | P | RW)
    m.set64(0x2000, 0x3000 | P | RW)
    m.set64(0x3000, 0x4000 | P | RW | US)
    m.set64(0x4000 + 8 * 1, 0x4012_3000 | P | RW | 0x60)  # A, D
    w = guest_walk(m.cache(), GuestMode(4), 0x1000 | 0xFFF, gva)  # PCID bits ignored
    assert [s.level for s in w.steps] == [4, 3, 2, 1]
    assert [s.index for s in w.steps] == [254, 0, 0, 1]
    assert [s.gpa for s in w.steps] == [0x1000 + 8 * 254, 0x2000, 0x3000, 0x4008]
    assert [s.hpa for s in w.steps] == [s.gpa + OFFSET for s in w.steps]
    assert w.gpa == 0x4012_3234 and w.page_size == 4096
    assert w.steps[-1].flags == ["P", "W", "A", "D"]
    assert w.rights is not None and w.rights.write and not w.rights.user


def test_four_level_large_pages_and_nx() -> None:
    m = GuestMem()
    m.set64(0x1000, 0x2000 | P | RW | US)
    m.set64(0x2000 + 8 * 1, 0x8000_0000 | P | RW | US | PS | NX)  # 1 GiB at 1 GiB
    m.set64(0x2000 + 8 * 2, 0x3000 | P | US)
    m.set64(0x3000 + 8 * 3, 0x0060_0000 | P | RW | US | PS | (1 << 12))  # 2 MiB, PAT
    w = guest_walk(m.cache(), GuestMode(4, nx=True), 0x1000, 0x4123_4567)
    assert w.gpa == 0x8123_4567 and w.page_size == 1 << 30
    assert w.rights is not None and not w.rights.execute and w.rights.user
    w = guest_walk(m.cache(), GuestMode(4, nx=True), 0x1000, 0x8000_0000 + 3 * (2 << 20) + 0x1ABC)
    assert w.gpa == 0x0060_1ABC and w.page_size == 2 << 20  # PAT bit 12 is not address
    assert "PAT" in w.steps[-1].flags
    assert w.rights is not None and not w.rights.write


def test_five_level() -> None:
    m = GuestMem()
    gva = 0xFF12_3400_0000_0000 | (5 << 12)  # PML5 index 0x123 >> 1... worked out below
    i5 = (gva >> 48) & 511
    i4 = (gva >> 39) & 511
    m.set64(0x1000 + 8 * i5, 0x2000 | P)
    m.set64(0x2000 + 8 * i4, 0x3000 | P)
    m.set64(0x3000, 0x4000 | P)
    m.set64(0x4000, 0x5000 | P)
    m.set64(0x5000 + 8 * 5, 0x7000 | P)
    w = guest_walk(m.cache(), GuestMode(5), 0x1000, gva)
    assert [s.level for s in w.steps] == [5, 4, 3, 2, 1]
    assert w.gpa == 0x7000
    with pytest.raises(GuestAddressError):
        guest_walk(m.cache(), GuestMode(4), 0x1000, gva)  # not canonical at 48 bits


def test_pae_from_memory_and_from_kvm_cache() -> None:
    m = GuestMem()
    cr3 = 0x1020  # the PDPT is 32-byte aligned inside its page
    m.set64(cr3 + 8 * 3, 0x2000 | P)
    m.set64(0x2000 + 8 * 5, 0x3000 | P | RW)
    m.set64(0x3000 + 8 * 7, 0x0012_3000 | P | RW)
    m.set64(0x2000 + 8 * 6, 0x0040_0000 | P | RW | PS)
    gva = 0xC000_0000 | (5 << 21) | (7 << 12) | 0x89
    w = guest_walk(m.cache(), GuestMode(3), cr3, gva)
    assert [s.level for s in w.steps] == [3, 2, 1]
    assert w.steps[0].gpa == cr3 + 24 and w.steps[0].source == "memory"
    assert w.steps[0].flags == ["P"]
    assert w.gpa == 0x0012_3089
    w = guest_walk(m.cache(), GuestMode(3), cr3, 0xC000_0000 | (6 << 21) | 0x12345)
    assert w.gpa == 0x0041_2345 and w.page_size == 2 << 20
    # KVM's cached PDPTEs win over memory: here PDPTE 3 points elsewhere.
    m.set64(0x4000 + 8 * 5, 0x3000 | P | RW)
    w = guest_walk(m.cache(), GuestMode(3), cr3, gva, pdptes=[0, 0, 0, 0x4000 | P])
    assert w.steps[0].source == "pdptr cache" and w.steps[0].hpa is None
    assert w.steps[1].gpa == 0x4000 + 8 * 5 and w.gpa == 0x0012_3089
    with pytest.raises(GuestAddressError):
        guest_walk(m.cache(), GuestMode(3), cr3, 1 << 32)


def test_32bit_pse_and_pse36() -> None:
    m = GuestMem()
    cr3 = 0x1000
    # 4K: PDE 0x300 -> PT, PTE 0x45
    m.set32(cr3 + 4 * 0x300, 0x2000 | P | RW)
    m.set32(0x2000 + 4 * 0x45, 0x00AB_C000 | P)
    gva = (0x300 << 22) | (0x45 << 12) | 0x321
    w = guest_walk(m.cache(), GuestMode(2), cr3, gva)
    assert [s.index for s in w.steps] == [0x300, 0x45]
    assert w.steps[1].gpa == 0x2000 + 4 * 0x45
    assert w.gpa == 0x00AB_C321
    # 4 MiB with PSE-36: PDE bits 16:13 = 0x5 give address bits 35:32.
    m.set32(cr3 + 4 * 0x301, 0x00C0_0000 | (0x5 << 13) | P | RW | PS)
    gva = (0x301 << 22) | 0x12_3456
    w = guest_walk(m.cache(), GuestMode(2, pse=True), cr3, gva)
    assert w.gpa == 0x5_00C0_0000 | 0x12_3456 and w.page_size == 4 << 20
    # Without CR4.PSE the PS bit is ignored: the PDE points at a page table
    # (here at GPA 0xc0a000, which the guest does not have).
    w = guest_walk(m.cache(), GuestMode(2), cr3, gva)
    assert w.gpa is None and w.stop_level == 1 and "no SPTE maps it" in (w.stop or "")


def test_stops() -> None:
    m = GuestMem()
    m.set64(0x1000, 0x2000 | P | PS)  # PS in a PML4E is reserved
    w = guest_walk(m.cache(), GuestMode(4), 0x1000, 0x1000)
    assert w.gpa is None and w.stop_level == 4 and "reserved" in (w.stop or "")
    w = guest_walk(m.cache(), GuestMode(4), 0x1000, 1 << 39)  # PML4E 1 empty
    assert w.gpa is None and w.stop == "guest PML4E not present" and w.stop_level == 4
    assert w.steps[-1].flags == []
    w = guest_walk(m.cache(), GuestMode(4), 0x9000, 0)  # CR3 page not reachable
    assert w.gpa is None and w.steps == [] and "GPA 0x9000" in (w.stop or "")
    w = guest_walk(m.cache(), GuestMode(0), 0, 0x1234)  # paging off: GVA = GPA
    assert w.gpa == 0x1234 and w.steps == []


def test_each_table_page_is_read_once() -> None:
    m = GuestMem()
    reads = []
    original = m.read

    def counting(address: int, size: int) -> bytes:
        reads.append(address)
        return original(address, size)

    m.read = counting  # type: ignore[method-assign]
    m.set64(0x1000, 0x2000 | P)
    m.set64(0x2000, 0x3000 | P)
    m.set64(0x3000, 0x4000 | P)
    for i in range(8):
        m.set64(0x4000 + 8 * i, (0x10000 + i * 0x1000) | P)
    cache = m.cache()
    for i in range(8):
        assert guest_walk(cache, GuestMode(4), 0x1000, i << 12).gpa == 0x10000 + i * 0x1000
    assert len(reads) == 4
