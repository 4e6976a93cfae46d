# SPDX-License-Identifier: LGPL-2.1-or-later
"""The guest's own page-table walk (GVA -> GPA), as pure integer code.

Models the x86 paging formats as the Intel SDM (vol. 3, ch. 4) and the AMD
APM (vol. 2, ch. 5) define them and as KVM's own guest walker implements
them: ``FNAME(walk_addr_generic)`` in arch/x86/kvm/mmu/paging_tmpl.h,
compiled for 8-byte entries (PAE, 4- and 5-level paging) and for 4-byte
entries (32-bit paging, with PSE and PSE-36).

- the paging level is KVM's ``cpu_role.base.level``: 0 paging off, 2 32-bit,
  3 PAE, 4 and 5 (the level :func:`paging_level` derives from CR0/CR4/EFER);
- CR3 locates the top table: bits 51:12 for 4/5 levels (KVM drops the other
  bits since commit a130066f7400 ("KVM: x86/mmu: Drop non-PA bits when
  getting GFN for guest's PGD"), v6.8), bits 31:5 for the 32-byte aligned
  PAE PDPT, bits 31:12 for 32-bit paging;
- PAE walks start from the four PDPTEs: KVM's PDPTR cache when it is
  current, else memory at CR3 (what KVM's ``load_pdptrs()`` reads);
- PS ends the walk at the PDE (2 MiB, or 4 MiB for 32-bit paging with
  CR4.PSE, whose PDE bits 16:13 give address bits 35:32: KVM models PSE-36,
  ``pse36_gfn_delta()``) and at the PDPTE of 4/5-level paging (1 GiB);
  PS in a PML4E or PML5E is reserved.

Nothing here imports drgn: guest table pages come from a
:class:`GuestTables` that the drgn side builds (through KVM's SPTEs under
TDP, through the memslots and the VMM's host page tables under shadow paging,
see :mod:`drgn_kvmwalk.guest`).
"""

from __future__ import annotations

import functools
import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .spte import (
    PAGE_SIZE,
    PT64_NX_MASK,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_GLOBAL_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PCD_MASK,
    PT_PRESENT_MASK,
    PT_PWT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
)
from .walk import PhysMem, PhysMemError

__all__ = [
    "GUEST_LEVEL_NAMES",
    "GuestAddressError",
    "GuestMode",
    "GuestRights",
    "GuestStep",
    "GuestTableCache",
    "GuestTableError",
    "GuestWalk",
    "guest_mode",
    "guest_walk",
    "paging_level",
]

GUEST_LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}

X86_CR0_PG = 1 << 31
X86_CR0_WP = 1 << 16
X86_CR4_PSE = 1 << 4
X86_CR4_PAE = 1 << 5
X86_CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
EFER_NX = 1 << 11

_P, _RW, _US = PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK
_PWT, _PCD, _A, _D = PT_PWT_MASK, PT_PCD_MASK, PT_ACCESSED_MASK, PT_DIRTY_MASK
_PS, _G, _NX = PT_PAGE_SIZE_MASK, PT_GLOBAL_MASK, PT64_NX_MASK
_ADDR_51_12 = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
_ADDR_31_12 = 0xFFFFF000
_PAE_CR3 = 0xFFFFFFE0
_U64 = struct.Struct("<512Q")
_U32 = struct.Struct("<1024I")


class GuestAddressError(ValueError):
    """The GVA is outside what the guest's paging mode translates."""


class GuestTableError(Exception):
    """A guest page-table page could not be reached or read: ``gpa`` is the
    table's guest physical address, ``reason`` why (no SPTE for it, no
    memslot, not in the dump, ...)."""

    def __init__(self, gpa: int, reason: str) -> None:
        super().__init__(f"guest table at GPA {gpa:#x}: {reason}")
        self.gpa = gpa
        self.reason = reason


class GuestMode(NamedTuple):
    """The guest's paging mode: ``level`` as KVM's ``cpu_role.base.level``
    (0 paging off, 2 32-bit, 3 PAE, 4, 5); ``pse`` CR4.PSE (4 MiB pages of
    32-bit paging); ``nx`` EFER.NXE (bit 63 is NX in 8-byte entries)."""

    level: int
    pse: bool = False
    nx: bool = False

    @property
    def name(self) -> str:
        return {0: "paging off", 2: "32-bit paging", 3: "PAE paging"}.get(
            self.level, f"{self.level}-level paging"
        )

    @property
    def entry_size(self) -> int:
        return 4 if self.level == 2 else 8


def paging_level(cr0: int, cr4: int, efer: int) -> int:
    """The paging level the CPU uses for these registers, as KVM's
    ``kvm_calc_cpu_role()`` encodes it (arch/x86/kvm/mmu/mmu.c)."""
    if not cr0 & X86_CR0_PG:
        return 0
    if efer & EFER_LMA:
        return 5 if cr4 & X86_CR4_LA57 else 4
    return 3 if cr4 & X86_CR4_PAE else 2


def guest_mode(level: int, cr4: int, efer: int) -> GuestMode:
    """The :class:`GuestMode` of ``level`` with CR4 and EFER's paging bits."""
    if level not in (0, 2, 3, 4, 5):
        raise ValueError(f"guest paging level {level} is none of 0, 2, 3, 4, 5")
    return GuestMode(level, bool(cr4 & X86_CR4_PSE), bool(efer & EFER_NX))


class GuestRights(NamedTuple):
    """What the guest's entries together allow (the AND of R/W and U/S over
    the levels, the OR of NX): a shadow SPTE may not give more."""

    write: bool
    user: bool
    execute: bool


class GuestStep(NamedTuple):
    """One guest page-table entry on the path: its table, where, what it says.
    (A NamedTuple: a walk makes one per level, and they are made fast.)"""

    level: int
    index: int  # type: ignore[assignment]  # the entry's index (hides tuple.index)
    table_gpa: int
    table_hpa: Optional[int]  # None for PAE PDPTEs from KVM's PDPTR cache
    gpa: int  # the entry's GPA
    hpa: Optional[int]  # the entry's HPA
    pte: int
    present: bool
    leaf: bool
    flags: List[str]
    source: str = "memory"  # "memory", or "pdptr cache" for KVM's cached PDPTEs


class GuestWalk(NamedTuple):
    """The guest's translation of one GVA.

    ``gpa`` and ``page_size`` (the guest page's size) are set when a leaf maps
    it; otherwise ``stop`` says why the walk ended and ``stop_level`` where.
    ``rights`` is what the entries allow, for a mapped GVA."""

    addr: int
    cr3: int
    mode: GuestMode
    steps: List[GuestStep]
    gpa: Optional[int]
    page_size: Optional[int]
    stop: Optional[str]
    stop_level: Optional[int]
    rights: Optional[GuestRights]


class GuestTableCache:
    """Guest table pages by GPA, each translated and read at most once.

    :param translate: the HPA of a guest-physical page (its address, 4 KiB
        aligned); raises :class:`GuestTableError` when it has none
    :param mem: host physical memory
    """

    def __init__(self, translate: Callable[[int], int], mem: PhysMem) -> None:
        self.translate = translate
        self.mem = mem
        self._pages: Dict[Tuple[int, int], Tuple[int, Tuple[int, ...]]] = {}

    def table(self, gpa: int, entry_size: int) -> Tuple[int, Tuple[int, ...]]:
        """(HPA, entries) of the guest table page holding ``gpa``.

        :raises GuestTableError: it cannot be reached or read
        """
        page = gpa & ~(PAGE_SIZE - 1)
        key = (page, entry_size)
        got = self._pages.get(key)
        if got is None:
            hpa = self.translate(page)
            try:
                data = self.mem.read(hpa, PAGE_SIZE)
            except PhysMemError:
                raise GuestTableError(
                    page, f"its page at HPA {hpa:#x} cannot be read (not in this dump?)"
                ) from None
            got = (hpa, (_U32 if entry_size == 4 else _U64).unpack(data))
            self._pages[key] = got
        return got


def _index(mode: GuestMode, gva: int, level: int) -> int:
    if mode.level == 2:
        return (gva >> (12 + 10 * (level - 1))) & 1023
    if mode.level == 3 and level == 3:
        return (gva >> 30) & 3
    return (gva >> (12 + 9 * (level - 1))) & 511


def _level_size(mode: GuestMode, level: int) -> int:
    if mode.level == 2:
        return 1 << (12 + 10 * (level - 1))
    return 1 << (12 + 9 * (level - 1))


def check_gva(mode: GuestMode, gva: int) -> None:
    """Raise :class:`GuestAddressError` unless the mode translates ``gva``:
    32-bit addresses for 32-bit and PAE paging (and with paging off),
    canonical 48- or 57-bit ones for 4- and 5-level paging."""
    if gva < 0 or gva >= 1 << 64:
        raise GuestAddressError(f"GVA {gva:#x} is not a 64-bit address")
    if mode.level in (0, 2, 3):
        if gva >> 32:
            raise GuestAddressError(
                f"GVA {gva:#x} is beyond what {mode.name} translates (32-bit addresses)"
            )
        return
    bits = 48 if mode.level == 4 else 57
    top = gva >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):
        raise GuestAddressError(
            f"GVA {gva:#x} is not canonical for {mode.name} (bits {bits - 1}-63 must all be equal)"
        )


def _flags(mode: GuestMode, level: int, pte: int, leaf: bool, pdpte: bool) -> List[str]:
    # Only the low 13 bits and NX name flags: a table holds few distinct
    # combinations, so each is spelt once (a new list each time: callers own it).
    return list(_flag_names(mode, level, pte & _FLAG_BITS, leaf, pdpte))


_FLAG_BITS = 0x1FFF | _NX


@functools.lru_cache(maxsize=4096)
def _flag_names(mode: GuestMode, level: int, pte: int, leaf: bool, pdpte: bool) -> Tuple[str, ...]:
    if not pte & _P:
        return ()
    if pdpte:  # PAE PDPTEs have P, PWT and PCD only
        names = [("P", _P), ("PWT", _PWT), ("PCD", _PCD)]
    else:
        names = [("P", _P), ("W", _RW), ("U", _US), ("PWT", _PWT), ("PCD", _PCD), ("A", _A)]
        if leaf:
            names.append(("D", _D))
            if level > 1:
                names += [("PS", _PS), ("G", _G), ("PAT", 1 << 12)]
            else:
                names += [("PAT", _PS), ("G", _G)]
        elif pte & _PS:
            names.append(("PS", _PS))  # 32-bit paging without CR4.PSE ignores it
    flags = [name for name, bit in names if pte & bit]
    if mode.entry_size == 8 and pte & _NX:
        flags.append("NX" if mode.nx else "bit63(reserved: EFER.NXE=0)")
    return tuple(flags)


def _table_base(mode: GuestMode, pte: int) -> int:
    return pte & (_ADDR_31_12 if mode.level == 2 else _ADDR_51_12)


def _leaf_gpa(mode: GuestMode, pte: int, level: int, gva: int) -> int:
    size = _level_size(mode, level)
    offset = gva & (size - 1)
    if mode.level == 2:
        if level == 1:
            return (pte & _ADDR_31_12) | offset
        # 4 MiB page: PDE bits 31:22, and bits 16:13 as address bits 35:32
        # (KVM's pse36_gfn_delta(); is_cpuid_PSE36() is always true there).
        return (pte & 0xFFC00000) | (((pte >> 13) & 0xF) << 32) | offset
    return (pte & _ADDR_51_12 & ~(size - 1)) | offset


def guest_walk(
    tables: GuestTableCache,
    mode: GuestMode,
    cr3: int,
    gva: int,
    pdptes: Optional[Sequence[int]] = None,
) -> GuestWalk:
    """Walk ``gva`` through the guest's page tables from ``cr3``.

    :param tables: where guest table pages are read
    :param mode: the guest's paging mode
    :param cr3: the guest's CR3
    :param gva: the guest virtual address
    :param pdptes: for PAE paging, KVM's cached PDPTEs when they are current;
        otherwise the four are read from memory at CR3
    :raises GuestAddressError: the mode cannot translate ``gva``
    """
    check_gva(mode, gva)
    steps: List[GuestStep] = []

    def stopped(reason: str, level: int) -> GuestWalk:
        return GuestWalk(gva, cr3, mode, steps, None, None, reason, level, None)

    if mode.level == 0:
        return GuestWalk(
            gva, cr3, mode, steps, gva, None, None, None, GuestRights(True, True, True)
        )
    level = mode.level
    width = mode.entry_size
    if level == 3:
        table_gpa = cr3 & _PAE_CR3
    elif level == 2:
        table_gpa = cr3 & _ADDR_31_12
    else:
        table_gpa = cr3 & _ADDR_51_12
    write = user = True
    execute = True
    while True:
        index = _index(mode, gva, level)
        entry_gpa = table_gpa + width * index
        pdpte = mode.level == 3 and level == 3
        if pdpte and pdptes is not None:
            pte, table_hpa, entry_hpa, source = pdptes[index], None, None, "pdptr cache"
        else:
            try:
                table_hpa, entries = tables.table(entry_gpa, width)
            except GuestTableError as e:
                return stopped(str(e), level)
            # A PAE PDPT is 32 bytes somewhere in its page: the entries are
            # read from the page at their own offset.
            pte = entries[(entry_gpa & (PAGE_SIZE - 1)) // width]
            entry_hpa, source = table_hpa + (entry_gpa & (PAGE_SIZE - 1)), "memory"
            table_hpa += table_gpa & (PAGE_SIZE - 1)
        present = bool(pte & _P)
        leaf = present and (
            level == 1
            or (
                bool(pte & _PS)
                and (level == 2 and (mode.level != 2 or mode.pse) or level == 3 and mode.level >= 4)
            )
        )
        steps.append(
            GuestStep(
                level,
                index,
                table_gpa,
                table_hpa,
                entry_gpa,
                entry_hpa,
                pte,
                present,
                leaf,
                _flags(mode, level, pte, leaf, pdpte),
                source,
            )
        )
        name = GUEST_LEVEL_NAMES[level]
        if not present:
            return stopped(f"guest {name} not present", level)
        if pte & _PS and (level >= 4 or pdpte):
            return stopped(f"reserved bit 7 (PS) set in a guest {name}: the CPU faults", level)
        if not pdpte:
            write = write and bool(pte & _RW)
            user = user and bool(pte & _US)
            if mode.nx and pte & _NX:
                execute = False
        if leaf:
            size = _level_size(mode, level)
            return GuestWalk(
                gva,
                cr3,
                mode,
                steps,
                _leaf_gpa(mode, pte, level, gva),
                size,
                None,
                None,
                GuestRights(write, user, execute),
            )
        table_gpa = _table_base(mode, pte)
        level -= 1
