# SPDX-License-Identifier: LGPL-2.1-or-later
"""--read's core (drgn_kvmwalk.gmem): a guest range cut at 4 KiB guest pages,
each translated and read on its own, holes kept with their reason, and the
xxd-like rendering."""

from __future__ import annotations

from typing import Dict, Optional

import pytest

from drgn_kvmwalk.gmem import MAX_READ, Translation, hexdump_lines, read_guest_memory
from drgn_kvmwalk.gwalk import GuestAddressError
from drgn_kvmwalk.walk import PhysMemError

PAGE = 4096


class Mem:
    """Host memory: a few 4 KiB pages, each byte (page number + offset) & 0xFF."""

    def __init__(self, pages: Dict[int, bytes]) -> None:
        self.pages = pages
        self.reads = []

    def read(self, address: int, size: int) -> bytes:
        self.reads.append((address, size))
        base = address & ~(PAGE - 1)
        assert (address + size - 1) & ~(PAGE - 1) == base, "a read crosses a host page"
        if base not in self.pages:
            raise PhysMemError(address)
        off = address - base
        return self.pages[base][off : off + size]


def page(n: int) -> bytes:
    return bytes((n + i) & 0xFF for i in range(PAGE))


def translator(table: Dict[int, Optional[int]], limit: Optional[int] = None):
    """Guest page -> host page (None: not mapped); past ``limit`` a
    GuestAddressError, as for a GVA beyond the guest's mode."""

    def translate(addr: int) -> Translation:
        if limit is not None and addr >= limit:
            raise GuestAddressError(f"GVA {addr:#x} is beyond 32 bits")
        hpage = table.get(addr & ~(PAGE - 1))
        if hpage is None:
            return Translation(None, None, "not mapped by the guest: PTE not present")
        return Translation(addr + 0x100000, hpage | (addr & (PAGE - 1)), None)

    return translate


def test_across_pages_with_a_hole_and_a_page_not_in_the_dump() -> None:
    g = 0x40000000
    table = {g: 0xA000, g + PAGE: None, g + 2 * PAGE: 0xC000, g + 3 * PAGE: 0xD000}
    mem = Mem({0xA000: page(1), 0xC000: page(3)})  # 0xD000 is not in the dump
    r = read_guest_memory(translator(table), mem, g + PAGE - 4, 2 * PAGE + 8, "GVA", "gone")
    assert [(p.addr, p.length, p.hpa, p.error) for p in r.pieces] == [
        (g + PAGE - 4, 4, 0xAFFC, None),
        (g + PAGE, PAGE, None, "not mapped by the guest: PTE not present"),
        (g + 2 * PAGE, PAGE, 0xC000, None),
        (g + 3 * PAGE, 4, 0xD000, "HPA 0xd000 gone"),
    ]
    assert r.pieces[0].data == page(1)[-4:] and r.pieces[2].data == page(3)
    assert r.pieces[0].gpa == g + PAGE - 4 + 0x100000
    assert r.data is None and r.missing == PAGE + 4


def test_contiguous_pages_merge_and_give_all_bytes() -> None:
    table = {0: 0x5000, PAGE: 0x6000, 2 * PAGE: 0x8000}
    mem = Mem({0x5000: page(5), 0x6000: page(6), 0x8000: page(8)})
    r = read_guest_memory(translator(table), mem, 16, 3 * PAGE - 32, "GPA")
    assert [(p.addr, p.length, p.hpa) for p in r.pieces] == [
        (16, 2 * PAGE - 16, 0x5010),
        (2 * PAGE, PAGE - 16, 0x8000),
    ]
    assert r.data == page(5)[16:] + page(6) + page(8)[:-16]
    assert r.missing == 0
    # Each host read stays in one page.
    assert all((a & 0xFFF) + n <= PAGE for a, n in mem.reads)


def test_first_address_error_is_raised_later_ones_are_pieces() -> None:
    table = {0xFFFFF000: 0x5000}
    mem = Mem({0x5000: page(0)})
    with pytest.raises(GuestAddressError):
        read_guest_memory(translator(table, limit=1 << 32), mem, 1 << 32, 8, "GVA")
    r = read_guest_memory(translator(table, limit=1 << 32), mem, 0xFFFFFFF8, 16, "GVA")
    assert r.pieces[0].data == page(0)[-8:]
    assert r.pieces[1].data is None and "beyond 32 bits" in (r.pieces[1].error or "")


@pytest.mark.parametrize("length", [0, MAX_READ + 1])
def test_length_bounds(length: int) -> None:
    with pytest.raises(ValueError):
        read_guest_memory(translator({}), Mem({}), 0, length, "GPA")


def test_hexdump_is_xxd_like_on_aligned_lines() -> None:
    table = {0x1000: 0x5000, 0x2000: None}
    data = bytes(range(0x41, 0x41 + 26)) * 200
    mem = Mem({0x5000: data[:PAGE]})
    r = read_guest_memory(translator(table), mem, 0x1FF3, 20, "GPA")
    lines = hexdump_lines(r)
    assert lines[0] == "# GPA 0x1ff3-0x1fff: HPA 0x5ff3"
    # 0xff3 % 26 = 1: the bytes from 'B'; the line starts at the aligned 0x1ff0,
    # its first three bytes blank.
    assert lines[1] == "00001ff0:        42 4344 4546 4748 494a 4b4c 4d4e     BCDEFGHIJKLMN"
    assert lines[2] == "# GPA 0x2000-0x2006: not mapped by the guest: PTE not present"
    assert len(lines) == 3
