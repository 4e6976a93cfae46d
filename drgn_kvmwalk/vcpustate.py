# SPDX-License-Identifier: LGPL-2.1-or-later
"""What ``--list`` shows of a vCPU beyond its root: its run state, where it
last ran, its thread, its last exit to userspace, the guest's registers, and
KVM's own counters (``vcpu->stat``, ``kvm->stat``).

Read from ``struct kvm_vcpu`` (include/linux/kvm_host.h): ``arch.mp_state``,
``cpu`` (the CPU of the last ``vcpu_load()``), ``pid`` (the thread that last
ran ``KVM_RUN``, a ``struct pid *``), ``run->exit_reason`` (the ``kvm_run``
page the VMM maps), and :func:`drgn_kvmwalk.guest.vcpu_guest_regs`.  A value
that cannot be read is None, never guessed.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Union

from drgn import FaultError, Object, TypeKind
from drgn.helpers.linux.pid import pid_task

from .errors import KvmWalkError
from .guest import MP_STATE_NAMES, GuestRegs, vcpu_guest_regs

__all__ = [
    "EXIT_REASON_NAMES",
    "VcpuState",
    "kvm_stat",
    "vcpu_state",
]

# KVM_EXIT_* (include/uapi/linux/kvm.h): macros, so not in the DWARF.  Only
# the numbers every kernel since 5.10 agrees on; a newer one has no name here.
EXIT_REASON_NAMES = {
    i: name
    for i, name in enumerate(
        "UNKNOWN EXCEPTION IO HYPERCALL DEBUG HLT MMIO IRQ_WINDOW_OPEN SHUTDOWN "
        "FAIL_ENTRY INTR SET_TPR TPR_ACCESS S390_SIEIC S390_RESET DCR NMI "
        "INTERNAL_ERROR OSI PAPR_HCALL S390_UCONTROL WATCHDOG S390_TSCH EPR "
        "SYSTEM_EVENT S390_STSI IOAPIC_EOI HYPERV ARM_NISV X86_RDMSR X86_WRMSR "
        "DIRTY_RING_FULL AP_RESET_HOLD X86_BUS_LOCK XEN RISCV_SBI RISCV_CSR NOTIFY "
        "LOONGARCH_IOCSR MEMORY_FAULT".split()
    )
}

StatValue = Union[int, List[int]]


class VcpuState(NamedTuple):
    """One vCPU's state for --list (None where it cannot be read)."""

    address: int  # struct kvm_vcpu *
    mp_state: Optional[str]  # KVM_MP_STATE_* name ("unknown (N)" for others)
    cpu: Optional[int]  # the CPU it last ran on (-1: never loaded)
    thread_pid: Optional[int]  # the thread that last ran KVM_RUN
    thread_comm: Optional[str]  # None when that thread has exited
    exit_reason: Optional[int]  # vcpu->run->exit_reason
    exit_reason_name: Optional[str]
    regs: Optional[GuestRegs]
    stat: Dict[str, StatValue]


def _bare(t: Any) -> Any:
    while t.kind == TypeKind.TYPEDEF:
        t = t.type
    return t


def _member_names(t: Any) -> List[str]:
    """The names of a structure's members, those of anonymous structures
    and unions in it included (drgn's member_() finds them by name)."""
    names: List[str] = []
    for m in _bare(t).members:
        if m.name is None:
            names += _member_names(m.type)
        else:
            names.append(m.name)
    return names


def _stat_members(obj: Object, out: Dict[str, StatValue]) -> None:
    """Flatten a KVM stats structure as KVM's binary stats name them: nested
    structures (``generic``) and anonymous unions without a prefix, an
    ``atomic64_t`` as its counter, arrays (histograms, ``pages[]``) as lists."""
    for name in _member_names(obj.type_):
        _stat_value(name, obj.member_(name), out)


def _scalar(value: Object) -> Optional[int]:
    """An integer counter, or an ``atomic64_t``/``atomic_t``'s; else None."""
    t = _bare(value.type_)
    if t.kind in (TypeKind.INT, TypeKind.BOOL, TypeKind.ENUM):
        return int(value)
    if t.kind == TypeKind.STRUCT and [m.name for m in t.members] == ["counter"]:
        return int(value.counter)
    return None


def _stat_value(name: str, value: Object, out: Dict[str, StatValue]) -> None:
    t = _bare(value.type_)
    if t.kind == TypeKind.ARRAY:
        items = [_scalar(value[i]) for i in range(t.length or 0)]
        out[name] = [v for v in items if v is not None]
        return
    n = _scalar(value)
    if n is not None:
        out[name] = n
    elif t.kind in (TypeKind.STRUCT, TypeKind.UNION):
        _stat_members(value, out)


def kvm_stat(stat: Object) -> Dict[str, StatValue]:
    """``kvm->stat`` or ``vcpu->stat`` as a dict, by KVM's stats names.

    :raises FaultError: it cannot be read
    """
    out: Dict[str, StatValue] = {}
    _stat_members(stat.read_(), out)
    return out


def _read(fn: Any) -> Any:
    try:
        return fn()
    except (FaultError, LookupError, AttributeError, ValueError):
        return None


def vcpu_state(vcpu: Object) -> VcpuState:
    """What --list shows of ``vcpu`` (``struct kvm_vcpu *``)."""
    mp = _read(lambda: int(vcpu.arch.mp_state))
    pid_obj = _read(lambda: vcpu.pid.read_())
    thread_pid = thread_comm = None
    if pid_obj is not None and pid_obj.value_():
        thread_pid = _read(lambda: int(pid_obj.numbers[0].nr))
        task = _read(lambda: pid_task(pid_obj, 0))  # PIDTYPE_PID
        if task is not None and task.value_():
            thread_comm = _read(lambda: task.comm.string_().decode(errors="replace"))
    exit_reason = _read(lambda: int(vcpu.run.exit_reason))
    try:
        regs: Optional[GuestRegs] = vcpu_guest_regs(vcpu)
    except (KvmWalkError, FaultError, LookupError):
        regs = None
    try:
        stat = kvm_stat(vcpu.stat)
    except (FaultError, LookupError, AttributeError):
        stat = {}
    return VcpuState(
        int(vcpu.value_()),
        None if mp is None else MP_STATE_NAMES.get(mp, f"unknown ({mp})"),
        _read(lambda: int(vcpu.cpu)),
        thread_pid,
        thread_comm,
        exit_reason,
        None if exit_reason is None else EXIT_REASON_NAMES.get(exit_reason),
        regs,
        stat,
    )
