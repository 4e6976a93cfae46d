# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where the guest's registers are read from (drgn_kvmwalk.guest), on
made-up vCPU layouts: Intel's register-cache rules (CR3 and RIP only when
regs_avail says KVM cached them since the last exit), shadow paging, the
register names and bitmap of the newest kernels, and AMD without kvm_amd's
debug info."""

from __future__ import annotations

import io
from typing import List, Tuple

import pytest
from drgn import Object

from drgn_kvmwalk.cli import main
from drgn_kvmwalk.guest import NoGuestCr3, VcpuGva, vcpu_guest_regs
from drgn_kvmwalk.kvm import find_vcpu, find_vm

from .fake_kernel import FakeKernel, kvm_host

CR0 = 0x8005_0033  # PG WP NE ET MP PE
CR4 = 0x20  # PAE
EFER = 0x500  # LMA LME
GUEST_CR3 = 0x0012_3000
RIP = 0x1008
CR3_BIT, PDPTR_BIT, RIP_BIT = 19, 17, 16


def host(
    vendor: str,
    tdp: bool,
    avail: int,
    newest: bool = False,
    dirty: int = 0,
) -> FakeKernel:
    """One VM, one vCPU running a 4-level guest (cpu_role level 4)."""
    regs = [("cr0", "ulong"), ("cr3", "ulong"), ("cr4", "ulong"), ("efer", "u64")]
    regs += [("regs", "ulong[17]"), ("hflags", "u32")]
    if newest:  # "KVM: x86: Reg cleanups / prep work for APX"
        regs += [("rip", "ulong"), ("regs_avail", "ulong[1]"), ("regs_dirty", "ulong[1]")]
        regs += [("pdptrs", "u64[4]")]  # "KVM: apply chainsaw to struct kvm_mmu"
    else:
        regs += [("regs_avail", "u32"), ("regs_dirty", "u32")]
    k = kvm_host(
        [("root", "root_info"), ("root_role", "role"), ("cpu_role", "cpu_role")],
        {"cpu_role.base.level": 4, "root.hpa": 0x5000, "root_role.level": 4},
        vcpu_arch_fields=[("mmu", "mmu *"), ("root_mmu", "mmu"), *regs],
    )
    p = k.prog
    arch = vcpu_of(k).arch
    for name, value in (("cr0", CR0), ("cr3", GUEST_CR3), ("cr4", CR4), ("efer", EFER)):
        k.write(int(arch.member_(name).address_), "<Q", value)
    if newest:
        k.write(int(arch.rip.address_), "<Q", RIP)
        k.write(int(arch.regs_avail.address_), "<Q", avail)
        k.write(int(arch.regs_dirty.address_), "<Q", dirty)
    else:
        k.write(int(arch.regs[RIP_BIT].address_), "<Q", RIP)
        k.write(int(arch.regs_avail.address_), "<I", avail)
        k.write(int(arch.regs_dirty.address_), "<I", dirty)
    # enum kvm_reg's enumerators, under each kernel's names.
    prefix = "VCPU_REG_" if newest else "VCPU_EXREG_"
    for name, value in (("CR3", CR3_BIT), ("PDPTR", PDPTR_BIT)):
        k.objects[prefix + name] = Object(p, k.int, value=value)
    k.objects["VCPU_REG_RIP" if newest else "VCPU_REGS_RIP"] = Object(p, k.int, value=RIP_BIT)
    # kvm_x86_ops.name says the vendor; tdp_enabled whether EPT/NPT is on.
    char = p.int_type("char", 1, True)
    ops = k.struct("kvm_x86_ops", [("name", p.pointer_type(char))])
    name_at = k.alloc(p.array_type(char, 16))
    name = b"kvm_intel\0" if vendor == "vmx" else b"kvm_amd\0"
    k.write(name_at, f"{len(name)}s", name)
    ops_at = k.alloc(ops)
    k.write(ops_at, "<Q", name_at)
    k.variable("kvm_x86_ops", ops, ops_at)
    k.write(int(k.objects["tdp_enabled"].address_), "<B", int(tdp))
    return k


def vcpu_of(k: FakeKernel) -> Object:
    return find_vcpu(find_vm(k.prog, 4242), 0)


def run(k: FakeKernel, argv: List[str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(k.prog, argv, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("newest", [False, True])
def test_vmx_ept_cr3_cached_since_the_exit(newest: bool) -> None:
    k = host("vmx", tdp=True, avail=1 << CR3_BIT | 1 << RIP_BIT, newest=newest)
    regs = vcpu_guest_regs(vcpu_of(k))
    assert regs.vendor == "vmx"
    assert (regs.cr0, regs.cr3, regs.cr4, regs.efer) == (CR0, GUEST_CR3, CR4, EFER)
    assert regs.rip == RIP and regs.level == 4 and regs.notes == []
    assert regs.sources["cr3"] == "vcpu->arch.cr3"
    assert regs.pdptes is None  # not available


@pytest.mark.parametrize("newest", [False, True])
def test_vmx_ept_cr3_not_cached(newest: bool) -> None:
    k = host("vmx", tdp=True, avail=0, newest=newest)
    regs = vcpu_guest_regs(vcpu_of(k))
    assert regs.cr3 is None and regs.rip is None
    assert "--cr3" in regs.notes[0] and f"{GUEST_CR3:#x}" in regs.notes[0]
    with pytest.raises(NoGuestCr3):
        VcpuGva(vcpu_of(k))
    rc, out, err = run(k, ["--vm", "4242", "--vcpu", "0", "--gva", "0x1000"])
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and "--cr3" in err


def test_vmx_shadow_paging_cr3_is_always_kvms() -> None:
    # Without EPT, CR3 loads exit: KVM's copy is the guest's CR3.
    k = host("vmx", tdp=False, avail=0)
    regs = vcpu_guest_regs(vcpu_of(k))
    assert regs.cr3 == GUEST_CR3 and regs.notes == []


def test_svm_without_kvm_amd_debug_info() -> None:
    k = host("svm", tdp=True, avail=1 << CR3_BIT | 1 << RIP_BIT)
    regs = vcpu_guest_regs(vcpu_of(k))
    assert regs.vendor == "svm" and regs.cr3 == GUEST_CR3 and regs.rip == RIP
    assert "kvm_amd.ko" in regs.notes[0]


@pytest.mark.parametrize("available", [False, True])
def test_pdptes_from_kvms_cache_only_when_available(available: bool) -> None:
    bits = 1 << CR3_BIT | (1 << PDPTR_BIT if available else 0)
    k = host("vmx", tdp=True, avail=bits, newest=True)
    arch = vcpu_of(k).arch
    for i in range(4):
        k.write(int(arch.pdptrs[i].address_), "<Q", 0x1000 * (i + 1) | 1)
    regs = vcpu_guest_regs(vcpu_of(k))
    assert regs.pdptes == ((0x1001, 0x2001, 0x3001, 0x4001) if available else None)


def test_cpu_level_disagreeing_with_registers_is_noted() -> None:
    k = host("vmx", tdp=True, avail=1 << CR3_BIT)
    vcpu = vcpu_of(k)
    k.write(int(vcpu.arch.efer.address_), "<Q", 0)  # EFER.LMA clear: PAE, not 4-level
    regs = vcpu_guest_regs(vcpu)
    assert regs.level == 4 and any("paging level 4" in n for n in regs.notes)
    assert regs.mode().level == 4
