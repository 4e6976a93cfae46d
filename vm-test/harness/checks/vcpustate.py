# SPDX-License-Identifier: LGPL-2.1-or-later
"""--list's vCPU state and counters against what the VMM itself saw.

Each vCPU's thread of the workload (pinned to one CPU, named
``l2vmm-vcpuN``) recorded, once the guest halted and before anything else
touched the vCPU: KVM_RUN's exit reason, KVM_GET_SREGS (CR0, CR3, CR4,
EFER), KVM_GET_REGS (RIP), KVM_GET_MP_STATE, its thread id and CPU, and
KVM_GET_STATS_FD of the vCPU and of the VM (Linux 5.14 and newer)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..records import ListVm, Problem, Truth

VCPU_STATE = "vcpu_state"

# From include/uapi/linux/kvm.h, for the states and exits the workload has.
MP_STATES = {0: "RUNNABLE", 3: "HALTED"}
EXIT_HLT = 5
# Counters KVM moves without the guest running: page aging of the VMM's
# memory flushes TLBs (kvm_mmu_notifier_clear_flush_young).  They may only grow.
GROWING_VM_STATS = {"remote_tlb_flush", "remote_tlb_flush_requests"}
KERNEL_HALF = 0xFF00_0000_0000_0000  # the kernel half, 4- or 5-level paging
KVM_MEM_FLAGS = ((1, "dirty-log"), (2, "readonly"), (4, "guest-memfd"))  # KVM_MEM_*


def _stat_problems(
    what: str, got: Optional[Dict[str, Any]], want: Dict[str, Any], growing: Any = ()
) -> List[str]:
    if got is None:
        return [f"{what}: none, KVM_GET_STATS_FD gives {len(want)} counters"]
    msgs = []
    for name, value in want.items():
        if name not in got:
            msgs.append(f"{what}: no {name} (KVM_GET_STATS_FD has it: {value})")
        elif name in growing:
            if got[name] < value:
                msgs.append(f"{what}.{name} {got[name]} below the VMM's {value}")
        elif got[name] != value:
            msgs.append(f"{what}.{name} {got[name]}, KVM_GET_STATS_FD said {value}")
    return msgs


def check_vcpu_state(view: str, where: str, vm: ListVm, truth: Truth) -> List[Problem]:
    """One workload's VM in --list: each vCPU's state and counters, the VM's
    counters, and the kernel addresses it names."""
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, VCPU_STATE, f"{where} --list: {message}"))

    if "vcpu_state" not in truth:
        problem("the workload recorded no vCPU state (an older build/l2vmm?)")
        return problems
    listed = {c["id"]: c for c in vm["vcpus"]}
    for s in truth["vcpu_state"]:
        c = listed.get(s["id"])
        if c is None:
            problem(f"no vCPU {s['id']}")
            continue
        at = f"vCPU {s['id']}"
        want = {
            "mp_state": MP_STATES.get(s["mp_state"], f"unknown ({s['mp_state']})"),
            "cpu": s["cpu"],
            "thread": {"pid": s["tid"], "comm": s["comm"]},
            "exit_reason": s["exit_reason"],
            "cr0": s["cr0"],
            "cr3": s["cr3"],
            "cr4": s["cr4"],
            "efer": s["efer"],
            "rip": s["rip"],
        }
        for key, value in want.items():
            if c.get(key) != value:
                problem(f"{at} {key} {c.get(key)!r}, the VMM saw {value!r}")
        if s["exit_reason"] == EXIT_HLT and c.get("exit_reason_name") != "HLT":
            problem(f"{at} exit_reason_name {c.get('exit_reason_name')!r} for KVM_EXIT_HLT")
        if s["stats"] is not None:
            for m in _stat_problems(f"{at} stat", c.get("stat"), s["stats"]):
                problem(m)
        if not (c.get("address") or 0) >= KERNEL_HALF:
            problem(f"{at} address {c.get('address')}: not a kernel address")
    vm_stats = truth.get("vm_stats")
    if vm_stats is not None:
        for m in _stat_problems("stat", vm.get("stat"), vm_stats, GROWING_VM_STATS):
            problem(m)
    addresses = [vm.get("address")] + [m.get("address") for m in vm["memslots"]]
    if not all((a or 0) >= KERNEL_HALF for a in addresses) or len(set(addresses)) != len(addresses):
        problem(f"struct kvm and memslot addresses {addresses}")
    for slot in vm["memslots"]:
        names = [n for bit, n in KVM_MEM_FLAGS if slot["flags"] & bit]
        if slot.get("flag_names") != names:
            problem(
                f"memslot {slot['id']} flag_names {slot.get('flag_names')}, flags {slot['flags']}"
            )
    return problems
