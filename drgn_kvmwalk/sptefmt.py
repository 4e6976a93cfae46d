# SPDX-License-Identifier: LGPL-2.1-or-later
"""The host's SPTE format, read from the kernel.

Models the SPTE mask variables of arch/x86/kvm/mmu/spte.c
(``shadow_present_mask``, ``shadow_x_mask``, ``shadow_mmio_value``, ...) and
the software bits arch/x86/kvm/mmu/spte.h defines as macros, chosen by which
variables the kernel has: a :class:`~drgn_kvmwalk.spte.SpteFormat` for the
pure decoder of :mod:`drgn_kvmwalk.spte`.

On v7.3 the masks are still these global variables: the ``fmt`` members of
``struct kvm_mmu`` and ``struct kvm_pagewalk`` (``struct kvm_page_format``,
from the series "KVM: apply chainsaw to struct kvm_mmu", commit "KVM: x86/mmu:
pull page format to a new struct", in v7.3; cited by title, its ids were
rebased) are the reserved-bit and permission checks KVM applies to SPTEs and
guest PTEs, not the SPTE format.
"""

from __future__ import annotations

from typing import Any, Dict

from drgn import Object, Program

from .errors import KvmWalkError, MissingDebugInfo
from .kvm import kvm_debug_info_hint
from .spte import (
    FROZEN_SPTE_VALUES,
    MMIO_GEN_LAYOUT_5_6,
    MMIO_GEN_LAYOUT_5_13,
    MMIO_GEN_LAYOUT_7_2,
    PAGE_SIZE,
    REMOVED_SPTE_5_12,
    SPTE_MMIO_MASK_5_8,
    SPTE_MMU_PRESENT_MASK,
    SPTE_TDP_AD_SHIFT_7_2,
    SpteFormat,
)

__all__ = ["spte_format"]


def _var(prog: Program, name: str) -> int:
    return int(prog[name].value_())


def spte_format(kvm: Object) -> SpteFormat:
    """The SPTE format of ``kvm``'s tables, from the kernel's own mask
    variables (read once per program) and the VM's MMIO value.

    >>> fmt = spte_format(find_vm(prog, 4242))
    >>> fmt.ept  # Intel EPT; False for AMD NPT and for shadow paging
    False

    :param kvm: ``struct kvm *`` (since Linux kernel commit 949019b98289
        ("KVM: x86/mmu: Track shadow MMIO value on a per-VM basis") (in v6.10),
        kernels keep a per-VM MMIO value)
    :raises MissingDebugInfo: the kvm.ko variables cannot be found
    """
    prog = kvm.prog_
    key = "drgn_kvmwalk.spte_globals"
    globs = prog.cache.get(key)
    if globs is None:
        globs = _spte_globals(prog)
        prog.cache[key] = globs
    fields = dict(globs)
    mmio_value_global = fields.pop("mmio_value_global")
    try:
        # Since Linux kernel commit 949019b98289 ("KVM: x86/mmu: Track shadow
        # MMIO value on a per-VM basis") (in v6.10), is_mmio_spte() compares
        # with the VM's copy.
        per_vm = kvm.arch.shadow_mmio_value
    except AttributeError:
        mmio_value = mmio_value_global
    else:
        mmio_value = int(per_vm.value_())
    return SpteFormat(mmio_value=mmio_value, **fields)


def _spte_globals(prog: Program) -> Dict[str, Any]:
    try:
        fields: Dict[str, Any] = dict(
            present_mask=_var(prog, "shadow_present_mask"),
            user_mask=_var(prog, "shadow_user_mask"),
            nx_mask=_var(prog, "shadow_nx_mask"),
            accessed_mask=_var(prog, "shadow_accessed_mask"),
            dirty_mask=_var(prog, "shadow_dirty_mask"),
            acc_track_mask=_var(prog, "shadow_acc_track_mask"),
            mmio_access_mask=_var(prog, "shadow_mmio_access_mask"),
            nonpresent_or_rsvd_mask=_var(prog, "shadow_nonpresent_or_rsvd_mask"),
            nonpresent_or_rsvd_lower_gfn_mask=_var(
                prog, "shadow_nonpresent_or_rsvd_lower_gfn_mask"
            ),
            mmio_value_global=_var(prog, "shadow_mmio_value"),
        )
    except KeyError as e:
        raise MissingDebugInfo(
            f"kvm.ko variable {e} not found: " + kvm_debug_info_hint(prog)
        ) from None
    try:
        fields.update(_spte_layout(prog))
    except KeyError as e:
        raise MissingDebugInfo(
            f"kvm.ko variable {e} not found: " + kvm_debug_info_hint(prog)
        ) from None
    # The SPTE format is global: EPT exactly when executable is a bit to set.
    fields["ept"] = fields["x_mask"] != 0
    try:
        # Since Linux kernel commit e54f1ff244ac ("KVM: x86/mmu: Add
        # shadow_me_value and repurpose shadow_me_mask") (in v5.19), the
        # memory-encryption bits OR'ed into SPTEs are shadow_me_value; before,
        # shadow_me_mask was both mask and value.
        fields["me_value"] = _var(prog, "shadow_me_value")
    except KeyError:
        fields["me_value"] = _var(prog, "shadow_me_mask")
    if "mmio_caching" not in fields:
        try:
            fields["mmio_caching"] = bool(_var(prog, "enable_mmio_caching"))
        except KeyError:
            # Without the switch, caching is on exactly when there is a value.
            fields["mmio_caching"] = fields["mmio_value_global"] != 0
    try:
        # SPTE_BASE_ADDR_MASK is physical_mask & PAGE_MASK with
        # CONFIG_DYNAMIC_PHYSICAL_MASK (which x86-64 always selects).
        physical_mask = _var(prog, "physical_mask")
    except KeyError:
        physical_mask = (1 << 52) - 1
    fields["base_addr_mask"] = physical_mask & ~(PAGE_SIZE - 1)
    return fields


def _present_bit_layout(prog: Program, **fields: Any) -> Dict[str, Any]:
    """What every layout since v5.13 shares: bit 11 means "present", and the
    writable bits and the MMIO mask are variables (Linux kernel commits
    edea7c4fc215 ("KVM: x86/mmu: Use a dedicated bit to track
    shadow/MMU-present SPTEs"), 5fc3424f8b85 ("KVM: x86/mmu: Make Host-writable
    and MMU-writable bit locations dynamic") and 8120337a4c55 ("KVM: x86/mmu:
    Stop using software available bits to denote MMIO SPTEs") (all in v5.13))."""
    return dict(
        host_writable_mask=_var(prog, "shadow_host_writable_mask"),
        mmu_writable_mask=_var(prog, "shadow_mmu_writable_mask"),
        mmio_mask=_var(prog, "shadow_mmio_mask"),
        mmu_present_mask=SPTE_MMU_PRESENT_MASK,
        frozen_values=FROZEN_SPTE_VALUES,
        **fields,
    )


def _spte_layout(prog: Program) -> Dict[str, Any]:
    """The SPTE software bits that are macros, not variables: chosen by which
    variables the kernel has."""
    if "shadow_xs_mask" in prog:
        # Since Linux kernel commits be4e45f360a2 ("KVM: x86/mmu: shuffle high
        # bits of SPTEs in preparation for MBEC"), 9a67ab74021b ("KVM: x86/mmu:
        # free up bit 10 of PTEs in preparation for MBEC") and 2e111d932d1d
        # ("KVM: x86/mmu: split XS/XU bits for EPT") (all in v7.2, the EPT MBEC
        # series), shadow_x_mask is split into shadow_xs_mask/shadow_xu_mask,
        # the A/D type is in bits 60-61 and bit 10 is freed (MMIO generation
        # in bits 3-9 and 52-62).  Values read from Debian's linux-source-7.2
        # (7.2.13), arch/x86/kvm/mmu/spte.h.
        return _present_bit_layout(
            prog,
            x_mask=_var(prog, "shadow_xs_mask"),
            xu_mask=_var(prog, "shadow_xu_mask"),
            mmio_gen=MMIO_GEN_LAYOUT_7_2,
            tdp_ad_shift=SPTE_TDP_AD_SHIFT_7_2,
        )
    x_mask = _var(prog, "shadow_x_mask")
    if "shadow_host_writable_mask" in prog:
        # Since Linux kernel commits 5fc3424f8b85 ("KVM: x86/mmu: Make
        # Host-writable and MMU-writable bit locations dynamic") and
        # edea7c4fc215 ("KVM: x86/mmu: Use a dedicated bit to track
        # shadow/MMU-present SPTEs") (both in v5.13), the writable bits are
        # variables and bit 11 means "present"; since Linux kernel commits
        # 8120337a4c55 ("KVM: x86/mmu: Stop using software available bits to
        # denote MMIO SPTEs") and b0de568018a6 ("KVM: x86/mmu: Use MMIO SPTE
        # bits 53 and 52 for the MMIO generation") (both in v5.13),
        # shadow_mmio_mask is a variable again and the MMIO generation sits in
        # bits 3-10 and 52-62.
        return _present_bit_layout(prog, x_mask=x_mask, mmio_gen=MMIO_GEN_LAYOUT_5_13)
    if "shadow_mmio_mask" in prog:
        # Before Linux kernel commit e7581caca4c1 ("KVM: x86: simplify
        # is_mmio_spte") (in v5.8), shadow_mmio_mask was a variable.
        raise KvmWalkError(
            "this kernel's SPTE layout (before v5.8: shadow_mmio_mask without "
            "shadow_host_writable_mask) is not supported yet"
        )
    # v5.8 to v5.12: no shadow_mmio_mask variable; is_mmio_spte() tests bits
    # 52-53 (SPTE_MMIO_MASK) (Linux kernel commit e7581caca4c1 ("KVM: x86:
    # simplify is_mmio_spte") (in v5.8)), host-/MMU-writable are bits 10/11 in
    # every format, "present" is any non-zero SPTE that is not MMIO (nor the
    # REMOVED_SPTE of Linux kernel commit 08f07c800e9d ("KVM: x86/mmu: Flush
    # TLBs after zap in TDP MMU PF handler") (in v5.12)), and the MMIO
    # generation sits in bits 3-11 and 54-62 (Linux kernel commit 56871d444bc4
    # ("KVM: x86: fix overlap between SPTE_MMIO_MASK and generation") (in
    # v5.6)).
    return dict(
        x_mask=x_mask,
        host_writable_mask=1 << 10,
        mmu_writable_mask=1 << 11,
        mmio_mask=SPTE_MMIO_MASK_5_8,
        mmio_value_global=SPTE_MMIO_MASK_5_8,
        mmio_caching=True,
        mmu_present_mask=0,
        mmio_gen=MMIO_GEN_LAYOUT_5_6,
        frozen_values=REMOVED_SPTE_5_12,
    )
