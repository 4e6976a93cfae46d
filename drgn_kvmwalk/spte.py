# SPDX-License-Identifier: LGPL-2.1-or-later
"""Decoding of KVM shadow page table entries (SPTEs), as pure integer functions.

Models arch/x86/kvm/mmu/spte.h and spte.c: the masks KVM sets at module load
(``kvm_mmu_set_ept_masks()`` for Intel EPT, ``kvm_mmu_reset_all_pte_masks()``
for AMD NPT and shadow paging), the software bits KVM keeps in SPTEs, MMIO
SPTEs and the frozen (formerly "removed") sentinel of the TDP MMU.

Nothing here imports drgn.  A :class:`SpteFormat` is built from the target
kernel's own runtime variables by :mod:`drgn_kvmwalk.mmu`, or by hand in tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "ENTRIES_PER_TABLE",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "MmioGenLayout",
    "MMIO_GEN_LAYOUT_5_13",
    "MMIO_GEN_LAYOUT_5_6",
    "MMIO_GEN_LAYOUT_7_2",
    "SpteFormat",
    "SpteInfo",
    "decode_spte",
    "ept_format",
    "level_shift",
    "level_size",
    "spte_index",
    "unpack_table",
    "x86_format",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRIES_PER_TABLE = 512
_TABLE = struct.Struct("<512Q")

# Bits that are the same in every format KVM uses (arch/x86/kvm/mmu.h, spte.h).
PT_PRESENT_MASK = 1 << 0
PT_WRITABLE_MASK = 1 << 1
PT_USER_MASK = 1 << 2
PT_PWT_MASK = 1 << 3
PT_PCD_MASK = 1 << 4
PT_ACCESSED_MASK = 1 << 5
PT_DIRTY_MASK = 1 << 6
PT_PAGE_SIZE_MASK = 1 << 7  # also EPT bit 7
PT_GLOBAL_MASK = 1 << 8
PT64_NX_MASK = 1 << 63

# Intel EPT (arch/x86/include/asm/vmx.h).
VMX_EPT_READABLE_MASK = 1 << 0
VMX_EPT_WRITABLE_MASK = 1 << 1
VMX_EPT_EXECUTABLE_MASK = 1 << 2
VMX_EPT_RWX_MASK = 7
VMX_EPT_MT_EPTE_SHIFT = 3
VMX_EPT_MT_MASK = 7 << VMX_EPT_MT_EPTE_SHIFT
VMX_EPT_IPAT_BIT = 1 << 6
VMX_EPT_ACCESS_BIT = 1 << 8
VMX_EPT_DIRTY_BIT = 1 << 9
VMX_EPT_SUPPRESS_VE_BIT = 1 << 63
VMX_EPT_MISCONFIG_WX_VALUE = VMX_EPT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK

# KVM software bits (spte.h, v5.13 and later).  Since Linux kernel commits
# edea7c4fc215 ("KVM: x86/mmu: Use a dedicated bit to track shadow/MMU-present
# SPTEs") and 8a406c89532c ("KVM: x86/mmu: Rename and document A/D scheme for
# TDP SPTEs") (both in v5.13), bit 11 is SPTE_MMU_PRESENT_MASK and the A/D type
# sits at SPTE_TDP_AD_SHIFT.
SPTE_MMU_PRESENT_MASK = 1 << 11
SPTE_TDP_AD_SHIFT = 52
SHADOW_ACC_TRACK_SAVED_BITS_SHIFT = 54
# Since Linux kernel commit be4e45f360a2 ("KVM: x86/mmu: shuffle high bits of
# SPTEs in preparation for MBEC") (in v7.2, the EPT MBEC series), the A/D type
# is in bits 60-61.
SPTE_TDP_AD_SHIFT_7_2 = 60
SHADOW_NONPRESENT_OR_RSVD_MASK_LEN = 5
# The TDP MMU's "frozen" SPTE, REMOVED_SPTE until Linux kernel commit
# 964cea817196 ("KVM: x86/tdp_mmu: Rename REMOVED_SPTE to FROZEN_SPTE") (in
# v6.11).  Since Linux kernel commit 715f1079eee1 ("KVM: x86/mmu: Use low
# available bits for removed SPTEs") (in v5.13) it is 0x5a0; since Linux kernel
# commit 7f01cab84928 ("KVM: x86/mmu: Allow non-zero value for non-present SPTE
# and removed SPTE") (in v6.10), SHADOW_NONPRESENT_VALUE | 0x5a0.  Neither value
# can be a present SPTE on any kernel that has it (bit 11 is clear), so both
# are recognised.  Since Linux kernel commit 9a67ab74021b ("KVM: x86/mmu: free
# up bit 10 of PTEs in preparation for MBEC") (in v7.2) it lacks bit 10 (EPT's
# user-execute bit there): SHADOW_NONPRESENT_VALUE | 0x1a0, equally never
# present.
FROZEN_SPTE_VALUES: FrozenSet[int] = frozenset({0x5A0, (1 << 63) | 0x5A0, (1 << 63) | 0x1A0})
# Linux kernel commit 08f07c800e9d ("KVM: x86/mmu: Flush TLBs after zap in
# TDP MMU PF handler") (in v5.12) added REMOVED_SPTE = 1 << 59; before, nothing.
# v5.13 changed it to 0x5a0 (above).  That value can be no other SPTE of v5.8
# to v5.12 (it has neither an address nor permissions).
REMOVED_SPTE_5_12: FrozenSet[int] = frozenset({1 << 59})
# v5.8 to v5.12 mark MMIO SPTEs with both bits 52 and 53 (SPTE_MMIO_MASK)
# and is_mmio_spte() tests just those bits: since Linux kernel commit
# e7581caca4c1 ("KVM: x86: simplify is_mmio_spte") (in v5.8), until Linux
# kernel commit 8120337a4c55 ("KVM: x86/mmu: Stop using software available
# bits to denote MMIO SPTEs") (in v5.13).
SPTE_MMIO_MASK_5_8 = 3 << 52

MEMTYPE_NAMES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}


def level_shift(level: int) -> int:
    """Address bit at which a ``level`` table's index starts (SPTE_LEVEL_SHIFT)."""
    return PAGE_SHIFT + 9 * (level - 1)


def level_size(level: int) -> int:
    """Bytes mapped by one entry of a ``level`` table (4K, 2M, 1G, 512G, 256T)."""
    return 1 << level_shift(level)


def spte_index(addr: int, level: int) -> int:
    """KVM's SPTE_INDEX(addr, level)."""
    return (addr >> level_shift(level)) & (ENTRIES_PER_TABLE - 1)


def unpack_table(data: bytes) -> Tuple[int, ...]:
    """All 512 SPTEs of one 4 KiB table page (read in one piece)."""
    return _TABLE.unpack(data)


class MmioGenLayout(NamedTuple):
    """Where the memslot generation lives in an MMIO SPTE (MMIO_SPTE_GEN_*)."""

    low_start: int
    low_end: int
    high_start: int
    high_end: int

    def generation(self, spte: int) -> int:
        low_bits = self.low_end - self.low_start + 1
        low = (spte >> self.low_start) & ((1 << low_bits) - 1)
        high = (spte >> self.high_start) & ((1 << (self.high_end - self.high_start + 1)) - 1)
        return low | (high << low_bits)


# v5.6 to v5.12 (mmu.c, then spte.h): bits 3..11 and 54..62, since Linux
# kernel commit 56871d444bc4 ("KVM: x86: fix overlap between SPTE_MMIO_MASK
# and generation") (in v5.6).
MMIO_GEN_LAYOUT_5_6 = MmioGenLayout(3, 11, 54, 62)
# spte.h since Linux kernel commits b0de568018a6 ("KVM: x86/mmu: Use MMIO SPTE
# bits 53 and 52 for the MMIO generation") and edea7c4fc215 ("KVM: x86/mmu: Use
# a dedicated bit to track shadow/MMU-present SPTEs") (both in v5.13; the
# latter left bit 11 out): bits 3..10 and 52..62.
MMIO_GEN_LAYOUT_5_13 = MmioGenLayout(3, 10, 52, 62)
# spte.h since Linux kernel commit 9a67ab74021b ("KVM: x86/mmu: free up bit 10
# of PTEs in preparation for MBEC") (in v7.2): bits 3..9 and 52..62.
MMIO_GEN_LAYOUT_7_2 = MmioGenLayout(3, 9, 52, 62)


@dataclass(frozen=True)
class SpteFormat:
    """How the target kernel lays out SPTEs.

    The masks are the values of the kernel's own ``shadow_*_mask`` variables;
    ``base_addr_mask`` is SPTE_BASE_ADDR_MASK (``physical_mask`` with the page
    offset cleared).  ``mmio_value`` is what ``is_mmio_spte()`` compares
    against: the global ``shadow_mmio_value``, or the VM's own copy on kernels
    that keep one.
    """

    ept: bool
    base_addr_mask: int
    present_mask: int
    user_mask: int
    x_mask: int
    nx_mask: int
    accessed_mask: int
    dirty_mask: int
    host_writable_mask: int
    mmu_writable_mask: int
    acc_track_mask: int
    me_value: int
    mmio_mask: int
    mmio_value: int
    mmio_caching: bool
    mmio_access_mask: int
    nonpresent_or_rsvd_mask: int
    nonpresent_or_rsvd_lower_gfn_mask: int
    mmu_present_mask: int = SPTE_MMU_PRESENT_MASK
    tdp_ad_shift: int = SPTE_TDP_AD_SHIFT
    # EPT user-execute (MBEC): shadow_xu_mask, since Linux kernel commit
    # 2e111d932d1d ("KVM: x86/mmu: split XS/XU bits for EPT") (in v7.2).
    xu_mask: int = 0
    mmio_gen: MmioGenLayout = MMIO_GEN_LAYOUT_5_13
    frozen_values: FrozenSet[int] = field(default=FROZEN_SPTE_VALUES)

    @property
    def name(self) -> str:
        return "ept" if self.ept else "x86"

    # The predicates mirror spte.h; each takes one SPTE.

    def is_mmio(self, spte: int) -> bool:
        """is_mmio_spte()."""
        return (
            self.mmio_caching
            and self.mmio_value != 0
            and (spte & self.mmio_mask) == self.mmio_value
        )

    def is_frozen(self, spte: int) -> bool:
        """is_frozen_spte() / is_removed_spte()."""
        return spte in self.frozen_values

    def is_present(self, spte: int) -> bool:
        """is_shadow_present_pte(): KVM's software MMU-present bit since Linux
        kernel commit edea7c4fc215 ("KVM: x86/mmu: Use a dedicated bit to track
        shadow/MMU-present SPTEs") (in v5.13); before, any non-zero SPTE that is
        neither MMIO nor removed (``mmu_present_mask`` 0 selects that rule)."""
        if self.mmu_present_mask:
            return bool(spte & self.mmu_present_mask)
        return spte != 0 and not self.is_mmio(spte) and not self.is_frozen(spte)

    def pfn(self, spte: int) -> int:
        """spte_to_pfn()."""
        return (spte & self.base_addr_mask) >> PAGE_SHIFT

    def mmio_gfn(self, spte: int) -> int:
        """get_mmio_spte_gfn(): the GFN is split around the L1TF mitigation bits."""
        gpa = spte & self.nonpresent_or_rsvd_lower_gfn_mask
        gpa |= (spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN) & self.nonpresent_or_rsvd_mask
        return gpa >> PAGE_SHIFT


def is_last_spte(spte: int, level: int) -> bool:
    """is_last_spte(): a 4K entry, or a large page at a higher level."""
    return level == 1 or bool(spte & PT_PAGE_SIZE_MASK)


class SpteInfo(NamedTuple):
    """One SPTE, decoded.  ``flags`` is a list of short names (see :func:`decode_spte`)."""

    spte: int
    level: int
    present: bool
    leaf: bool
    kind: str  # "table", "leaf", "mmio", "frozen", "none"
    hpa: Optional[int]  # table or page base address, when present
    flags: List[str]
    mmio_gfn: Optional[int] = None
    mmio_gen: Optional[int] = None


def _hw_flags(fmt: SpteFormat, spte: int, leaf: bool) -> List[str]:
    flags: List[str] = []
    if fmt.ept:
        for bit, name in (
            (VMX_EPT_READABLE_MASK, "R"),
            (VMX_EPT_WRITABLE_MASK, "W"),
            (VMX_EPT_EXECUTABLE_MASK, "X"),
            (fmt.xu_mask, "XU"),
        ):
            if bit and spte & bit:
                flags.append(name)
        if leaf:
            mt = (spte & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
            flags.append("MT=" + MEMTYPE_NAMES.get(mt, str(mt)))
            if spte & VMX_EPT_IPAT_BIT:
                flags.append("IPAT")
        if spte & PT_PAGE_SIZE_MASK:
            flags.append("PS")
        if spte & VMX_EPT_ACCESS_BIT:
            flags.append("A")
        if spte & VMX_EPT_DIRTY_BIT:
            flags.append("D")
        if spte & VMX_EPT_SUPPRESS_VE_BIT:
            flags.append("SVE")
    else:
        for bit, name in (
            (PT_PRESENT_MASK, "P"),
            (PT_WRITABLE_MASK, "W"),
            (PT_USER_MASK, "U"),
            (PT_PWT_MASK, "PWT"),
            (PT_PCD_MASK, "PCD"),
            (PT_ACCESSED_MASK, "A"),
            (PT_DIRTY_MASK, "D"),
            (PT_PAGE_SIZE_MASK, "PS"),
        ):
            if spte & bit:
                flags.append(name)
        if spte & PT_GLOBAL_MASK and leaf:
            flags.append("G")
        if spte & PT64_NX_MASK:
            flags.append("NX")
    return flags


def _sw_flags(fmt: SpteFormat, spte: int) -> List[str]:
    flags: List[str] = []
    if fmt.mmu_present_mask and spte & fmt.mmu_present_mask:
        flags.append("mmu-present")
    if fmt.host_writable_mask and spte & fmt.host_writable_mask:
        flags.append("host-writable")
    if fmt.mmu_writable_mask and spte & fmt.mmu_writable_mask:
        flags.append("mmu-writable")
    ad = (spte >> fmt.tdp_ad_shift) & 3
    if ad == 1:  # SPTE_TDP_AD_DISABLED
        flags.append("ad-disabled")
        # Access tracking without A/D bits clears RWX and saves R/X above bit 54
        # (mark_spte_for_access_track()).
        if fmt.acc_track_mask and not spte & fmt.acc_track_mask:
            flags.append("access-tracked")
    elif ad == 2:  # SPTE_TDP_AD_WRPROT_ONLY
        flags.append("ad-wrprot-only")
    if fmt.me_value and spte & fmt.me_value == fmt.me_value:
        flags.append("encrypted")
    return flags


def decode_spte(fmt: SpteFormat, spte: int, level: int) -> SpteInfo:
    """Decode one SPTE found in a ``level`` table.

    Hardware bits are named as the CPU manual does: x86 format ``P W U PWT PCD A
    D PS G NX``, EPT format ``R W X MT=<type> IPAT PS A D SVE``.  KVM's software
    bits: ``mmu-present``, ``host-writable``, ``mmu-writable``, ``ad-disabled``,
    ``ad-wrprot-only``, ``access-tracked``, ``encrypted``.

    >>> decode_spte(fmt, 0x8000000123456867, 1).flags   # doctest: +SKIP
    ['P', 'W', 'U', 'A', 'D', 'NX', 'mmu-present', ...]
    """
    # KVM's walks decide by is_shadow_present_pte() alone (__shadow_walk_next(),
    # tdp_iter): a present SPTE is followed or is a leaf even if its bits also
    # match the MMIO or frozen pattern (KVM makes no such SPTE; a corrupt one
    # can be).  Since v5.13 that is the MMU-present bit; before, "present"
    # already excluded MMIO and REMOVED_SPTE.
    if fmt.mmu_present_mask and fmt.is_present(spte):
        return _present(fmt, spte, level)
    if fmt.is_frozen(spte):
        return SpteInfo(spte, level, False, False, "frozen", None, ["frozen"])
    if fmt.is_mmio(spte):
        flags = ["mmio"]
        if fmt.ept:
            flags += [
                n
                for b, n in ((VMX_EPT_WRITABLE_MASK, "W"), (VMX_EPT_EXECUTABLE_MASK, "X"))
                if spte & b
            ]
        return SpteInfo(
            spte,
            level,
            False,
            False,
            "mmio",
            None,
            flags,
            mmio_gfn=fmt.mmio_gfn(spte),
            mmio_gen=fmt.mmio_gen.generation(spte),
        )
    if not fmt.is_present(spte):
        flags = []
        if fmt.ept and spte & VMX_EPT_SUPPRESS_VE_BIT:
            flags.append("SVE")
        return SpteInfo(spte, level, False, False, "none", None, flags)
    return _present(fmt, spte, level)


def _present(fmt: SpteFormat, spte: int, level: int) -> SpteInfo:
    leaf = is_last_spte(spte, level)
    hpa = spte & fmt.base_addr_mask
    if leaf:
        hpa &= ~(level_size(level) - 1)
    flags = _hw_flags(fmt, spte, leaf) + _sw_flags(fmt, spte)
    return SpteInfo(spte, level, True, leaf, "leaf" if leaf else "table", hpa, flags)


def x86_format(
    *,
    phys_bits: int = 52,
    l1tf: bool = False,
    me_value: int = 0,
    mmio_value: Optional[int] = None,
) -> SpteFormat:
    """The x86 (AMD NPT / shadow paging) format as kvm_mmu_reset_all_pte_masks()
    sets it up on a 64-bit host with ``phys_bits`` of physical address.  For
    tests and for targets without kvm.ko debug info; the walk itself takes the
    masks from the kernel."""
    base = ((1 << phys_bits) - 1) & ~(PAGE_SIZE - 1) & ~me_value
    rsvd_len, low_mask = _l1tf_masks(phys_bits, l1tf)
    if mmio_value is None:
        mmio_value = ((1 << 51) | PT_PRESENT_MASK) if phys_bits < 52 else 0
    return SpteFormat(
        ept=False,
        base_addr_mask=base,
        present_mask=PT_PRESENT_MASK,
        user_mask=PT_USER_MASK,
        x_mask=0,
        nx_mask=PT64_NX_MASK,
        accessed_mask=PT_ACCESSED_MASK,
        dirty_mask=PT_DIRTY_MASK,
        host_writable_mask=1 << 9,
        mmu_writable_mask=1 << 10,
        acc_track_mask=0,
        me_value=me_value,
        mmio_mask=mmio_value,
        mmio_value=mmio_value,
        mmio_caching=mmio_value != 0,
        mmio_access_mask=PT_WRITABLE_MASK | PT_USER_MASK,
        nonpresent_or_rsvd_mask=rsvd_len,
        nonpresent_or_rsvd_lower_gfn_mask=low_mask,
    )


def ept_format(
    *,
    phys_bits: int = 46,
    l1tf: bool = False,
    ad_bits: bool = True,
    exec_only: bool = True,
    suppress_ve: bool = False,
) -> SpteFormat:
    """The EPT format as kvm_mmu_set_ept_masks() sets it up (``suppress_ve``:
    since Linux kernel commit 7fa5e2929198 ("KVM: x86/mmu: Add Suppress VE bit
    to EPT shadow_mmio_mask/shadow_present_mask") (in v6.10), bit 63 is in
    ``shadow_present_mask``)."""
    base = ((1 << phys_bits) - 1) & ~(PAGE_SIZE - 1)
    rsvd_len, low_mask = _l1tf_masks(phys_bits, l1tf)
    present = (0 if exec_only else VMX_EPT_READABLE_MASK) | (
        VMX_EPT_SUPPRESS_VE_BIT if suppress_ve else 0
    )
    mmio_mask = VMX_EPT_RWX_MASK | (VMX_EPT_SUPPRESS_VE_BIT if suppress_ve else 0)
    return SpteFormat(
        ept=True,
        base_addr_mask=base,
        present_mask=present,
        user_mask=VMX_EPT_READABLE_MASK,
        x_mask=VMX_EPT_EXECUTABLE_MASK,
        nx_mask=0,
        accessed_mask=VMX_EPT_ACCESS_BIT if ad_bits else 0,
        dirty_mask=VMX_EPT_DIRTY_BIT if ad_bits else 0,
        host_writable_mask=1 << 57,
        mmu_writable_mask=1 << 58,
        acc_track_mask=VMX_EPT_RWX_MASK,
        me_value=0,
        mmio_mask=mmio_mask,
        mmio_value=VMX_EPT_MISCONFIG_WX_VALUE,
        mmio_caching=True,
        mmio_access_mask=0,
        nonpresent_or_rsvd_mask=rsvd_len,
        nonpresent_or_rsvd_lower_gfn_mask=low_mask,
    )


def _l1tf_masks(phys_bits: int, l1tf: bool) -> Tuple[int, int]:
    """kvm_mmu_reset_all_pte_masks(): shadow_nonpresent_or_rsvd_mask and
    shadow_nonpresent_or_rsvd_lower_gfn_mask for a CPU with ``phys_bits`` of
    physical address (taken as its cache bits too) and, or not, the L1TF bug."""
    low_phys_bits = phys_bits
    rsvd = 0
    if l1tf:
        low_phys_bits = phys_bits - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
        rsvd = ((1 << phys_bits) - 1) & ~((1 << low_phys_bits) - 1)
    return rsvd, ((1 << low_phys_bits) - 1) & ~(PAGE_SIZE - 1)


def describe_flags(flags: Sequence[str]) -> str:
    return " ".join(flags) if flags else "-"
