# SPDX-License-Identifier: LGPL-2.1-or-later
"""A tiny builder of synthetic KVM page tables in fake host physical memory."""

from __future__ import annotations

import struct
from typing import Dict

from drgn_kvmwalk.spte import PAGE_SIZE, SPTE_MMU_PRESENT_MASK, level_shift
from drgn_kvmwalk.walk import PhysMemError

MMU_PRESENT = SPTE_MMU_PRESENT_MASK


class FakeMem:
    """Sparse host physical memory: pages that were never written fault."""

    def __init__(self) -> None:
        self.pages: Dict[int, bytearray] = {}
        self.next_free = 0x100000
        self.reads = 0

    def alloc(self, fill: int = 0) -> int:
        hpa = self.next_free
        self.next_free += PAGE_SIZE
        self.pages[hpa] = bytearray(struct.pack("<Q", fill) * 512)
        return hpa

    def set(self, hpa: int, value: int) -> None:
        page = self.pages[hpa & ~(PAGE_SIZE - 1)]
        off = hpa & (PAGE_SIZE - 1)
        page[off : off + 8] = struct.pack("<Q", value)

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        page = self.pages.get(address & ~(PAGE_SIZE - 1))
        if page is None or (address & (PAGE_SIZE - 1)) + size > PAGE_SIZE:
            raise PhysMemError(address)
        off = address & (PAGE_SIZE - 1)
        return bytes(page[off : off + size])


class Tables:
    """Builds a tree under one root; ``table_bits``/``leaf_bits`` are OR'ed in."""

    def __init__(
        self, mem: FakeMem, root_level: int, table_bits: int, leaf_bits: int, fill: int = 0
    ) -> None:
        self.mem = mem
        self.level = root_level
        self.table_bits = table_bits
        self.leaf_bits = leaf_bits
        self.fill = fill
        self.root = mem.alloc(fill)

    def _index(self, addr: int, level: int) -> int:
        return (addr >> level_shift(level)) & 511

    def table_for(self, addr: int, level: int) -> int:
        """The table page at ``level`` on the path of ``addr``, creating the path."""
        table = self.root
        for lvl in range(self.level, level, -1):
            sptep = table + 8 * self._index(addr, lvl)
            spte = struct.unpack("<Q", self.mem.read(sptep, 8))[0]
            if not spte & MMU_PRESENT:
                child = self.mem.alloc(self.fill)
                self.mem.set(sptep, child | self.table_bits)
                table = child
            else:
                table = spte & ((1 << 52) - 1) & ~0xFFF
        return table

    def map(self, addr: int, hpa: int, level: int = 1, extra: int = 0) -> int:
        """Map ``addr`` to ``hpa`` with a leaf at ``level``; returns the sptep."""
        table = self.table_for(addr, level)
        sptep = table + 8 * self._index(addr, level)
        spte = hpa | self.leaf_bits | extra | ((1 << 7) if level > 1 else 0)
        self.mem.set(sptep, spte)
        return sptep

    def put(self, addr: int, level: int, spte: int) -> int:
        """Store a raw SPTE on the path of ``addr`` at ``level``."""
        table = self.table_for(addr, level)
        sptep = table + 8 * self._index(addr, level)
        self.mem.set(sptep, spte)
        return sptep
