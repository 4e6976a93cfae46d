# SPDX-License-Identifier: LGPL-2.1-or-later
"""VMs, vCPUs and memslots of a KVM host: ``struct kvm *`` and ``struct
kvm_vcpu *`` objects, and memslots as records.

Reads ``struct kvm`` and ``struct kvm_vcpu`` (include/linux/kvm_host.h) and
the global ``vm_list`` of virt/kvm/kvm_main.c.  Needs the debug info of
kvm.ko (or of vmlinux when KVM is built in).
"""

from __future__ import annotations

import re
from typing import Iterator, List, NamedTuple, Optional, Tuple

from drgn import Object, Program, TypeKind, cast
from drgn.helpers.linux.module import find_module
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.xarray import xa_for_each

from .errors import BadKernelValue, MissingDebugInfo, NoKvm, NoSuchVcpu, NoSuchVm
from .lists import list_entries, rbtree_entries

__all__ = [
    "Memslot",
    "find_vcpu",
    "find_vm",
    "for_each_memslot",
    "for_each_vcpu",
    "for_each_vm",
    "kvm_debug_info_hint",
    "vm_pid",
    "vm_stats_id",
]


class Memslot(NamedTuple):
    as_id: int
    id: int
    base_gfn: int
    npages: int
    hva: int  # userspace_addr
    flags: int
    address: Optional[int] = None  # struct kvm_memory_slot *


def kvm_debug_info_hint(prog: Program) -> str:
    """Which file to load with ``-s`` for kvm.ko, and which package has it."""
    try:
        release = prog["UTS_RELEASE"].string_().decode()
    except (KeyError, LookupError):
        release = "$(uname -r)"
    return (
        f"load it with -s /usr/lib/debug/lib/modules/{release}/kernel/arch/x86/kvm/kvm.ko "
        f"(Debian: linux-image-{release}-dbg; Ubuntu: linux-image-{release}-dbgsym; "
        "Fedora/RHEL: kernel-debuginfo)"
    )


def _vm_list(prog: Program) -> Object:
    try:
        return prog["vm_list"]
    except KeyError:
        pass
    # No kvm.ko debug info: find out whether the module is there at all.
    try:
        loaded = bool(find_module(prog, "kvm"))
    except (KeyError, LookupError) as e:
        raise MissingDebugInfo(f"no debug info for vmlinux ({e})") from None
    if not loaded:
        raise NoKvm("the kvm module is not loaded: this host runs no KVM VMs")
    raise MissingDebugInfo(
        "kvm.ko is loaded but its debug info is not: " + kvm_debug_info_hint(prog)
    )


def vm_pid(kvm: Object) -> int:
    """The pid of the process that created the VM.

    :param kvm: ``struct kvm *``
    """
    # kvm->userspace_pid is set by kvm_uevent_notify_change() and can stay 0
    # when its allocation failed; stats_id ("kvm-<pid>", since v5.14) and the
    # owner of kvm->mm are the fall-backs.
    pid = kvm.userspace_pid.value_()
    if pid:
        return int(pid)
    m = re.match(r"kvm-(\d+)", vm_stats_id(kvm) or "")
    if m:
        return int(m.group(1))
    mm = kvm.mm.value_()
    for task in for_each_task(kvm.prog_):
        if task.mm.value_() == mm and task.pid == task.tgid:
            return int(task.tgid)
    return 0


def vm_stats_id(kvm: Object) -> Optional[str]:
    """``kvm->stats_id`` ("kvm-<pid>"), or None on kernels without it.

    :param kvm: ``struct kvm *``
    """
    try:
        # kvm->stats_id came with KVM's binary statistics in v5.14 (absent in
        # v5.12, present in v5.14-rc5); older kernels have nothing to show.
        stats_id = kvm.stats_id
    except AttributeError:
        return None
    return stats_id.string_().decode(errors="replace") or None


def for_each_vm(prog: Program) -> Iterator[Object]:
    """All VMs on ``vm_list``, as ``struct kvm *``.

    >>> for kvm in for_each_vm(prog):
    ...     print(vm_pid(kvm), kvm.online_vcpus.counter.value_())
    4242 2

    :raises NoKvm: kvm is not loaded
    :raises MissingDebugInfo: kvm.ko is loaded without debug info
    """
    head = _vm_list(prog)
    return list_entries(head.address_of_(), "struct kvm", "vm_list", "vm_list")


def find_vm(prog: Program, pid: Optional[int]) -> Object:
    """The VM (``struct kvm *``) created by ``pid``, or the only VM when
    ``pid`` is None.

    >>> kvm = find_vm(prog, 4242)

    :raises NoKvm: kvm is not loaded, or no VM exists
    :raises NoSuchVm: with the list of VMs, when none or several match
    """
    vms = [(kvm, vm_pid(kvm)) for kvm in for_each_vm(prog)]
    if not vms:
        raise NoKvm("kvm is loaded but no VM exists")
    if pid is None:
        if len(vms) == 1:
            return vms[0][0]
        choices = _describe_vms(vms)
        raise NoSuchVm(
            f"{len(vms)} VMs exist; choose one by the pid of the process that created it: "
            + choices,
            choices=choices,
            count=len(vms),
        )
    matches = [kvm for kvm, vm_pid_ in vms if vm_pid_ == pid]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NoSuchVm(f"process {pid} has no VM; VMs: " + _describe_vms(vms))
    raise NoSuchVm(
        f"process {pid} has {len(matches)} VMs (struct kvm at "
        + ", ".join(hex(kvm.value_()) for kvm in matches)
        + "); this tool cannot tell them apart yet"
    )


def _describe_vms(vms: List[Tuple[Object, int]]) -> str:
    return ", ".join(f"pid {pid} ({_count_vcpus(kvm)} vCPUs)" for kvm, pid in vms)


def _count_vcpus(kvm: Object) -> int:
    return int(kvm.online_vcpus.counter.value_())


def for_each_vcpu(kvm: Object) -> Iterator[Object]:
    """The VM's online vCPUs (``kvm_for_each_vcpu``), as ``struct kvm_vcpu *``.

    :param kvm: ``struct kvm *``
    """
    online = _count_vcpus(kvm)
    try:
        # Since Linux kernel commit c5b077549136 ("KVM: Convert the kvm->vcpus
        # array to a xarray") (in v5.17), vCPUs are in kvm->vcpu_array.
        array = kvm.vcpu_array
    except AttributeError:
        for i in range(online):
            yield kvm.vcpus[i]
        return
    for index, entry in xa_for_each(array.address_of_()):
        if index < online:
            yield cast("struct kvm_vcpu *", entry)


def find_vcpu(kvm: Object, vcpu_id: int) -> Object:
    """The vCPU whose ``vcpu_id`` is ``vcpu_id``.

    :param kvm: ``struct kvm *``
    :raises NoSuchVcpu: with the list of vCPU ids
    """
    ids = []
    for vcpu in for_each_vcpu(kvm):
        vid = int(vcpu.vcpu_id.value_())
        if vid == vcpu_id:
            return vcpu
        ids.append(vid)
    have = ", ".join(map(str, sorted(ids))) or "none"
    raise NoSuchVcpu(f"the VM has no vCPU {vcpu_id}; its vCPUs: {have}")


def for_each_memslot(kvm: Object) -> Iterator[Memslot]:
    """Memslots of every address space, ordered by (as_id, base_gfn).

    :param kvm: ``struct kvm *``
    """
    for as_id in range(kvm.memslots.type_.length or 0):
        slots = kvm.memslots[as_id]
        if not slots:
            continue
        try:
            # Since Linux kernel commit a54d806688fe ("KVM: Keep memslots in
            # tree-based structures instead of array-based ones") (in v5.17),
            # slots live in trees indexed by the active node.
            node_idx = slots.node_idx.value_()
        except AttributeError:
            used = slots.used_slots.value_()
            # memslots[] is a flexible array in 5.10; id_to_index[] has
            # KVM_MEM_SLOTS_NUM entries.
            room = slots.memslots.type_.length or slots.id_to_index.type_.length
            if not 0 <= used <= room:
                raise BadKernelValue(
                    f"kvm->memslots[{as_id}]->used_slots", used, f"0-{room} (KVM_MEM_SLOTS_NUM)"
                ) from None
            found = [slots.memslots[i] for i in range(used)]
            found.sort(key=lambda s: s.base_gfn.value_())
            for slot in found:
                yield _memslot(as_id, slot)
            continue
        for slot in rbtree_entries(
            slots.gfn_tree.address_of_(),
            "struct kvm_memory_slot",
            f"gfn_node[{node_idx}]",
            f"kvm->memslots[{as_id}]->gfn_tree",
        ):
            yield _memslot(as_id, slot)


def _memslot(as_id: int, slot: Object) -> Memslot:
    # A pointer from the trees (v5.17+), an array element before.
    address = slot.value_() if slot.type_.kind == TypeKind.POINTER else slot.address_
    return Memslot(
        as_id,
        int(slot.id),
        int(slot.base_gfn),
        int(slot.npages),
        int(slot.userspace_addr),
        int(slot.flags),
        address,
    )
