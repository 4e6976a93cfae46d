# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the command line shows of VMs and roots, as records: ``--list``'s VM
and vCPU summaries and the roots ``--root`` names.

Front-end tier: built from the kernel helpers of :mod:`drgn_kvmwalk.kvm` and
:mod:`drgn_kvmwalk.mmu`; :mod:`drgn_kvmwalk.render` turns them into text or
JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Sequence

from drgn import FaultError, Object

from .errors import BadKernelValue, NoRoot
from .kvm import Memslot, for_each_memslot, for_each_vcpu, vm_pid, vm_stats_id
from .lists import until_corrupt
from .mmu import (
    for_each_prev_root,
    for_each_vm_root_page,
    is_tdp_enabled,
    is_tdp_mmu_page,
    mmu_info,
    mmu_root,
    root_of_shadow_page,
)
from .sptefmt import spte_format
from .walk import Root

if TYPE_CHECKING:  # --list only: a walk does not pay for importing them
    from .vcpustate import StatValue, VcpuState

__all__ = [
    "LabelledRoot",
    "ROOT_CHOICES",
    "VcpuSummary",
    "VmSummary",
    "select_roots",
    "vm_summary",
]


class VcpuSummary(NamedTuple):
    """One vCPU for --list: its current root, or why it has none, and its
    state (run state, CPU, thread, last exit, registers, counters)."""

    id: int
    root: Optional[Root]
    kind: Optional[str]  # "tdp" or "shadow", as MmuInfo.kind
    tdp_mmu: Optional[bool]
    no_root: Optional[str]  # the reason, when root is None
    state: Optional[VcpuState] = None


class VmSummary(NamedTuple):
    """One VM for --list."""

    pid: int
    stats_id: Optional[str]
    mmu: str  # "ept", "npt" or "shadow"
    tdp_mmu: Optional[bool]  # from the vCPUs' roots; None when no vCPU has one
    vcpus: List[VcpuSummary]
    memslots: List[Memslot]
    address: Optional[int] = None  # struct kvm *
    stat: Optional[Dict[str, StatValue]] = None  # kvm->stat, by KVM's stats names
    broken: Sequence[str] = ()  # corrupt parts (memslot trees) left out, one line each


def vm_summary(kvm: Object) -> VmSummary:
    """What --list shows of ``vm``: MMU kind, vCPUs with their roots, memslots.

    :raises MissingDebugInfo: kvm.ko's debug info is missing
    """
    from .vcpustate import kvm_stat, vcpu_state

    prog = kvm.prog_
    vcpus = []
    for vcpu in for_each_vcpu(kvm):
        vid = int(vcpu.vcpu_id.value_())
        state = vcpu_state(vcpu)
        try:
            info = mmu_info(vcpu)
        except (NoRoot, BadKernelValue) as e:  # --list shows the rest
            vcpus.append(VcpuSummary(vid, None, None, None, str(e), state))
            continue
        vcpus.append(VcpuSummary(vid, info.root, info.kind, info.tdp_mmu, None, state))
    vcpus.sort(key=lambda v: v.id)
    broken: List[str] = []
    memslots: List[Memslot] = []
    try:
        memslots.extend(until_corrupt(for_each_memslot(kvm), broken))
    except BadKernelValue as e:
        broken.append(str(e))
    if is_tdp_enabled(prog):
        mmu = "ept" if spte_format(kvm).ept else "npt"
    else:
        mmu = "shadow"
    # Every vCPU of a VM uses the same MMU; a vCPU running a nested guest may
    # be on guest_mmu (never the TDP MMU), so any vCPU on the TDP MMU decides.
    known = [v.tdp_mmu for v in vcpus if v.tdp_mmu is not None]
    tdp_mmu = any(known) if known else None
    try:
        stat: Optional[Dict[str, StatValue]] = kvm_stat(kvm.stat)
    except (FaultError, LookupError, AttributeError):
        stat = None
    return VmSummary(
        vm_pid(kvm),
        vm_stats_id(kvm),
        mmu,
        tdp_mmu,
        vcpus,
        memslots,
        int(kvm.value_()),
        stat,
        broken,
    )


ROOT_CHOICES = ("current", "prev", "all")


class LabelledRoot(NamedTuple):
    """A root to walk, and which one it is (for --root)."""

    label: str  # "current", "prev[1]", "guest_mmu", "vm root 0x..."
    root: Root
    kind: str  # "tdp" or "shadow": what the root translates
    tdp_mmu: bool


def select_roots(vcpu: Object, which: str) -> List[LabelledRoot]:
    """The roots ``--root`` names for ``vcpu``.

    - ``current``: the vCPU's current root (``vcpu->arch.mmu->root``);
    - ``prev``: the MMU's cache of previous roots (``mmu->prev_roots``);
    - ``all``: those, the nested guest MMU's root (``vcpu->arch.guest_mmu``,
      when L1 runs an L2 guest with nested paging), and every other top-level
      root of the VM (TDP MMU roots, including SMM and invalid ones; legacy
      shadow pages in use as roots), each once.

    :param vcpu: ``struct kvm_vcpu *``
    :raises NoRoot: ``current`` and the vCPU has no valid root
    """
    prog = vcpu.prog_
    info = mmu_info(vcpu)
    tdp = is_tdp_enabled(prog)

    def labelled(label: str, root: Root) -> LabelledRoot:
        return LabelledRoot(
            label,
            root,
            "tdp" if root.direct and tdp else "shadow",
            is_tdp_mmu_page(prog, root.hpa),
        )

    roots: List[LabelledRoot] = []
    if which in ("current", "all"):
        roots.append(LabelledRoot("current", info.root, info.kind, info.tdp_mmu))
    if which in ("prev", "all"):
        roots += [
            labelled(f"prev[{i}]", r) for i, r in for_each_prev_root(info.mmu, info.root.cpu_level)
        ]
    if which == "all":
        try:
            guest_mmu = vcpu.arch.guest_mmu
            if guest_mmu.type_.kind.name == "STRUCT":
                guest_mmu = guest_mmu.address_of_()
            if guest_mmu.value_() != info.mmu.value_():
                roots.append(labelled("guest_mmu", mmu_root(guest_mmu)))
        except (AttributeError, NoRoot):
            pass
        seen = {r.root.hpa for r in roots}
        for sp_hpa, sp in for_each_vm_root_page(vcpu.kvm):
            if sp_hpa in seen or sp.level < 4:
                continue  # PAE roots' pages are reached through pae_root
            seen.add(sp_hpa)
            extra = "".join(
                [
                    f", as {sp.as_id}" if sp.as_id else "",
                    ", invalid" if sp.invalid else "",
                    ", guest mode" if sp.guest_mode else "",
                ]
            )
            roots.append(
                labelled(
                    f"vm root {sp_hpa:#x}{extra}",
                    root_of_shadow_page(sp_hpa, sp, info.root.cpu_level),
                )
            )
    return roots
