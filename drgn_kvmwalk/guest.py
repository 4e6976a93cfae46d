# SPDX-License-Identifier: LGPL-2.1-or-later
"""The guest's point of view: a vCPU's paging registers, and GVA -> GPA -> HPA.

Reads the guest's CR0/CR3/CR4/EFER/RIP where KVM keeps them
(``struct kvm_vcpu_arch`` in arch/x86/include/asm/kvm_host.h, AMD's VMCB in
``struct vcpu_svm``, arch/x86/kvm/svm/svm.h), the guest's paging level from
the MMU's ``cpu_role``, and walks the guest's own page tables
(:mod:`drgn_kvmwalk.gwalk`) over host memory:

- under TDP (EPT/NPT) each guest table page's GPA is translated through the
  vCPU's SPTEs, as the CPU's two-dimensional walk does, and so is the final
  GPA;
- under shadow paging, as KVM's own walker reads guest tables
  (``FNAME(walk_addr_generic)``: memslot, then the VMM's user address), through
  the memslot and the VMM's host page tables (``kvm->mm``); the shadow root's
  walk of the same GVA is then compared with the guest's answer.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple, cast

from drgn import FaultError, Object, Program, ProgramFlags, container_of
from drgn.helpers.linux.mm import virt_to_phys

from .errors import KvmWalkError
from .gmem import GuestRead, Translation, read_guest_memory
from .gwalk import (
    GuestMode,
    GuestTableCache,
    GuestTableError,
    GuestWalk,
    guest_mode,
    guest_walk,
    paging_level,
)
from .kvm import Memslot, for_each_memslot
from .mmu import DrgnPhysMem, MmuInfo, is_tdp_enabled, mmu_info, vcpu_mmu
from .spte import PT64_NX_MASK, PT_USER_MASK, PT_WRITABLE_MASK, SpteFormat
from .sptefmt import spte_format
from .walk import PhysMem, PhysMemError, Root, TableCache, Walk, walk_addr

__all__ = [
    "GuestRegs",
    "GuestMemslots",
    "GvaWalk",
    "HostEntry",
    "HostPageTables",
    "MP_STATE_NAMES",
    "NoGuestCr3",
    "VcpuGva",
    "VcpuMemory",
    "read_guest",
    "vcpu_guest_regs",
    "vcpu_gva",
]

# KVM_MP_STATE_* (include/uapi/linux/kvm.h): macros, so not in the DWARF.
MP_STATE_NAMES = {
    0: "RUNNABLE",
    1: "UNINITIALIZED",
    2: "INIT_RECEIVED",
    3: "HALTED",
    4: "SIPI_RECEIVED",
    5: "STOPPED",
    6: "CHECK_STOP",
    7: "OPERATING",
    8: "LOAD",
    9: "AP_RESET_HOLD",
    10: "SUSPENDED",
}

# HF_GUEST_MASK is a macro: 1 << 5 up to v6.2, when struct vcpu_svm has no
# vmcb01 yet (only 5.10-era kernels fall back to it here).
_HF_GUEST_MASK_OLD = 1 << 5


class NoGuestCr3(KvmWalkError):
    """KVM holds no current copy of the guest's CR3 (give it with --cr3)."""


class GuestRegs(NamedTuple):
    """A vCPU's guest registers as KVM last knew them.

    ``cr3`` is None when KVM holds no current copy (Intel with EPT and the
    register not cached since the last exit, SEV-ES); ``sources`` says where
    each value was read; ``notes`` say what a reader should know."""

    cr0: Optional[int]
    cr3: Optional[int]
    cr4: Optional[int]
    efer: Optional[int]
    rip: Optional[int]
    level: Optional[int]  # KVM's cpu_role.base.level (root_level on 5.10)
    pdptes: Optional[Tuple[int, ...]]  # KVM's PDPTR cache when it is current
    vendor: str  # "svm", "vmx" or "unknown"
    nested: bool  # the vCPU runs a nested guest (L2): these are L1's
    sources: Dict[str, str]
    notes: List[str]

    def mode(self) -> GuestMode:
        """The paging mode the guest walk uses: KVM's level, CR4 and EFER's
        bits."""
        level = self.level
        if level is None:
            level = paging_level(self.cr0 or 0, self.cr4 or 0, self.efer or 0)
        return guest_mode(level, self.cr4 or 0, self.efer or 0)


def _int(obj: Object) -> int:
    return int(obj.value_())


def _constant(prog: Program, *names: str) -> Optional[int]:
    """The value of the first enumerator of ``names`` the program knows."""
    for name in names:
        try:
            return int(prog.constant(name).value_())
        except (KeyError, LookupError):
            continue
    return None


def _reg_bits(arch: Object, name: str) -> int:
    """``arch.regs_avail`` / ``regs_dirty`` as one integer: a u32 up to v7.1,
    then a bitmap (``DECLARE_BITMAP(regs_avail, NR_VCPU_TOTAL_REGS)``, series
    "KVM: x86: Reg cleanups / prep work for APX"), whose first word holds
    every register bit."""
    obj = arch.member_(name)
    if obj.type_.unqualified().kind.name == "ARRAY":
        obj = obj[0]
    return _int(obj)


def _reg_bit(prog: Program, reg: str) -> Optional[int]:
    """The bit of ``enum kvm_reg`` for ``reg`` (CR3, PDPTR, RIP): since the
    same series, ``VCPU_EXREG_*`` is ``VCPU_REG_*`` and ``VCPU_REGS_RIP``
    ``VCPU_REG_RIP``; the values did not change."""
    if reg == "RIP":
        return _constant(prog, "VCPU_REG_RIP", "VCPU_REGS_RIP")
    return _constant(prog, f"VCPU_REG_{reg}", f"VCPU_EXREG_{reg}")


def _vendor(prog: Program) -> str:
    """Which vendor module runs the vCPUs, once per program: the name in
    ``kvm_x86_ops`` ("kvm_amd", "kvm_intel") on kernels whose ops have one,
    else the function behind its ``vcpu_run`` or ``run`` hook (svm_vcpu_run,
    vmx_vcpu_run)."""
    key = "drgn_kvmwalk.vendor"
    got = prog.cache.get(key)
    if got is not None:
        return cast(str, got)
    vendor = "unknown"
    try:
        ops = prog["kvm_x86_ops"]
    except KeyError:
        ops = None
    if ops is not None:
        name = ""
        try:
            name = ops.name.string_().decode()
        except (AttributeError, FaultError, ValueError):
            # The hook was "run" before it was "vcpu_run".
            for hook in ("vcpu_run", "run"):
                try:
                    name = prog.symbol(_int(ops.member_(hook))).name
                    break
                except (LookupError, FaultError):
                    continue
        if "amd" in name or name.startswith("svm"):
            vendor = "svm"
        elif "intel" in name or name.startswith("vmx"):
            vendor = "vmx"
    prog.cache[key] = vendor
    return vendor


def _cpu_level(mmu: Object) -> Optional[int]:
    """The guest's paging level KVM's MMU holds (``cpu_role.base.level``;
    the probe is :mod:`drgn_kvmwalk.mmu`'s)."""
    from .mmu import _mmu_layout, _read_path

    try:
        return _read_path(mmu, _mmu_layout(mmu).cpu_level)
    except FaultError:
        return None


def _pdptes(vcpu: Object, avail: int) -> Optional[Tuple[int, ...]]:
    """KVM's cached PAE PDPTEs, when ``regs_avail`` says they are current.
    Since the series "KVM: apply chainsaw to struct kvm_mmu" (v7.3) they are
    ``vcpu->arch.pdptrs``; before, ``vcpu->arch.walk_mmu->pdptrs``."""
    bit = _reg_bit(vcpu.prog_, "PDPTR")
    if bit is None or not avail >> bit & 1:
        return None
    arch = vcpu.arch
    try:
        pdptrs = arch.pdptrs
    except AttributeError:
        pdptrs = arch.walk_mmu.pdptrs
    return tuple(_int(pdptrs[i]) for i in range(4))


def _svm(vcpu: Object) -> Optional[Object]:
    """``struct vcpu_svm *`` of the vCPU (its first member is the vCPU), or
    None without kvm_amd.ko's debug info."""
    try:
        return container_of(vcpu, "struct vcpu_svm", "vcpu")
    except LookupError:
        return None


def vcpu_guest_regs(vcpu: Object) -> GuestRegs:
    """The guest's paging registers and RIP, from where KVM keeps the current
    values.

    - CR0, CR4 and EFER: ``vcpu->arch``, KVM's guest-visible copies. Their
      paging bits (CR0.PG, CR4.PAE/PSE/LA57, EFER) are never guest-owned, so
      these are exact; the VMCB's hold what the CPU runs with, which under
      shadow paging KVM changes (``svm_set_cr0()`` forces PG and WP,
      ``svm_set_cr4()`` PAE).
    - CR3 on AMD with NPT: the VMCB save area, saved by the CPU at the last
      #VMEXIT. ``vcpu->arch.cr3`` is copied from it in ``svm_handle_exit()``,
      which exits taken on the fastpath to userspace skip (since v6.12), so
      it can lag; it wins only when ``regs_dirty`` says KVM_SET_SREGS wrote
      it after the exit. While a nested guest runs, L1's registers are in
      ``vmcb01``.
    - CR3 under shadow paging: ``vcpu->arch.cr3``: CR3 loads exit, and the
      VMCB/VMCS holds KVM's shadow root.
    - CR3 on Intel with EPT: ``vcpu->arch.cr3`` only when ``regs_avail`` has
      its bit (KVM cached it from the VMCS since the last exit); otherwise
      KVM does not know it, and neither does this (give ``--cr3``).
    - RIP: ``vcpu->arch`` (``regs[VCPU_REGS_RIP]``, or ``rip`` since the
      series "KVM: x86: Reg cleanups / prep work for APX"), when available.

    :param vcpu: ``struct kvm_vcpu *``
    """
    prog = vcpu.prog_
    arch = vcpu.arch
    notes: List[str] = []
    sources: Dict[str, str] = {}
    avail = _reg_bits(arch, "regs_avail")
    dirty = _reg_bits(arch, "regs_dirty")
    cr0, cr4, efer = _int(arch.cr0), _int(arch.cr4), _int(arch.efer)
    sources.update(cr0="vcpu->arch.cr0", cr4="vcpu->arch.cr4", efer="vcpu->arch.efer")
    rip_bit = _reg_bit(prog, "RIP")
    rip: Optional[int] = None
    if rip_bit is None or avail >> rip_bit & 1:
        try:
            rip = _int(arch.rip)
            sources["rip"] = "vcpu->arch.rip"
        except AttributeError:
            rip = _int(arch.regs[16 if rip_bit is None else rip_bit])
            sources["rip"] = "vcpu->arch.regs[VCPU_REGS_RIP]"
    mmu = vcpu_mmu(vcpu)
    level = _cpu_level(mmu)
    tdp = is_tdp_enabled(prog)
    vendor = _vendor(prog)
    cr3_bit = _reg_bit(prog, "CR3")
    arch_cr3 = _int(arch.cr3)
    cr3: Optional[int] = arch_cr3
    sources["cr3"] = "vcpu->arch.cr3"
    nested = False
    protected = False
    try:
        # SEV-ES and later (v5.11): the guest's state is encrypted.
        protected = bool(arch.guest_state_protected)
    except AttributeError:
        pass
    if protected:
        cr3 = None
        notes.append("the guest's state is protected (SEV-ES/SNP/TDX): KVM cannot see its CR3")
    elif vendor == "svm":
        svm = _svm(vcpu)
        if svm is None:
            if tdp:
                notes.append(
                    "CR3 is KVM's copy (vcpu->arch.cr3): without kvm_amd.ko's debug info "
                    "the VMCB, which can be newer, cannot be read (load kvm_amd.ko with -s)"
                )
        else:
            try:
                # Since Linux kernel commit 4995a3685f1b ("KVM: SVM: Use a
                # separate vmcb for the nested L2 guest") (in v5.13), L1's VMCB
                # is vmcb01 and svm->vmcb the current one.
                vmcb01 = svm.vmcb01.ptr
                nested = _int(svm.vmcb) != _int(vmcb01)
            except AttributeError:
                nested = bool(_int(arch.hflags) & _HF_GUEST_MASK_OLD)
                vmcb01 = svm.nested.hsave if nested else svm.vmcb
            if nested:
                save = vmcb01.save
                cr0, cr3, cr4, efer = (
                    _int(save.cr0),
                    _int(save.cr3),
                    _int(save.cr4),
                    _int(save.efer),
                )
                rip = _int(save.rip)
                for reg in ("cr0", "cr3", "cr4", "efer", "rip"):
                    sources[reg] = f"L1's VMCB save area ({reg})"
                notes.append("the vCPU runs a nested guest (L2): these are L1's registers")
            elif tdp and not (cr3_bit is not None and dirty >> cr3_bit & 1):
                cr3 = _int(vmcb01.save.cr3)
                sources["cr3"] = "VMCB save area (save.cr3)"
                if cr3 != arch_cr3:
                    notes.append(
                        f"vcpu->arch.cr3 {arch_cr3:#x} lags the VMCB's {cr3:#x} "
                        "(an exit handled on the fastpath)"
                    )
    elif vendor == "vmx" and tdp:
        if cr3_bit is None or not avail >> cr3_bit & 1:
            cr3 = None
            notes.append(
                f"KVM has not read CR3 from the VMCS since the vCPU's last exit "
                f"(regs_avail bit {cr3_bit} clear); its last copy {arch_cr3:#x} may be "
                "stale: give the guest's CR3 with --cr3"
            )
    elif vendor == "unknown" and tdp:
        notes.append("vendor module unknown: CR3 is KVM's copy (vcpu->arch.cr3)")
    arch_level = paging_level(cr0, cr4, efer)
    if level is not None and level != arch_level:
        notes.append(
            f"KVM's MMU says paging level {level}, CR0/CR4/EFER say {arch_level}: "
            "the walk uses KVM's"
        )
    return GuestRegs(
        cr0, cr3, cr4, efer, rip, level, _pdptes(vcpu, avail), vendor, nested, sources, notes
    )


# -- The VMM's host page tables (kvm->mm), for shadow paging -----------------


class HostUnmapped(Exception):
    """A host virtual address the VMM's page tables do not map."""


class HostPageTables:
    """The x86-64 page tables of a host ``struct mm_struct``, read one table
    page at a time (4 or 5 levels, as the host kernel runs).

    :param prog: the host kernel
    :param mm: ``struct mm_struct *`` (the VMM's: ``kvm->mm``)
    """

    def __init__(self, prog: Program, mm: Object, mem: Optional[PhysMem] = None) -> None:
        self.prog = prog
        self.pgd = int(virt_to_phys(prog, mm.pgd))
        self.tables = TableCache(mem or DrgnPhysMem(prog))
        self.levels = host_paging_levels(prog)
        self.addr_mask = _host_addr_mask(prog)

    def entry(self, hva: int, lowest: int = 1) -> "HostEntry":
        """The entry that ends the walk of ``hva``: a huge page's (level 2
        or 3), the PTE (level 1), or with ``lowest=2`` the PMD entry of a
        page table (level 2, no PS bit), with whether every level so far
        allows writes.

        :raises HostUnmapped: not mapped (not present, PROT_NONE, swapped)
        :raises PhysMemError: a table page cannot be read
        """
        table = self.pgd
        writable = True
        for level in range(self.levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            index = (hva >> shift) & 511
            value = self.tables.table(table)[index]
            if not value & 1:
                what = (
                    "PROT_NONE (NUMA hinting)" if value & (1 << 8) and level == 1 else "not present"
                )
                raise HostUnmapped(f"host page table entry at level {level} {what}")
            writable = writable and bool(value & 2)
            if level == lowest or (level in (2, 3) and value & (1 << 7)):
                return HostEntry(table + 8 * index, value, level, writable)
            table = value & self.addr_mask
        raise AssertionError("unreachable")

    def translate(self, hva: int) -> Tuple[int, int]:
        """(HPA, page size) of ``hva``.

        :raises HostUnmapped: not mapped (not present, PROT_NONE, swapped)
        :raises PhysMemError: a table page cannot be read
        """
        e = self.entry(hva)
        size = 1 << (12 + 9 * (e.level - 1))
        return (e.value & self.addr_mask & ~(size - 1)) | (hva & (size - 1)), size


class HostEntry(NamedTuple):
    """One entry of the VMM's page tables, as :meth:`HostPageTables.entry`
    finds it."""

    pa: int  # where the entry is (host physical)
    value: int
    level: int
    writable: bool  # every level up to it has the R/W bit


class GuestMemslots:
    """A VM's guest physical memory as its memslots (address space 0) and the
    VMM's page tables (``kvm->mm``) map it: what KVM's page-fault path and its
    guest-table walker find, without the SPTEs.  The memslots are read once.

    :param kvm: ``struct kvm *``
    """

    def __init__(self, kvm: Object, mem: Optional[PhysMem] = None) -> None:
        self.kvm = kvm
        self.mem = mem
        self._slots: Optional[List[Memslot]] = None
        self._host: Optional[HostPageTables] = None

    @property
    def slots(self) -> List[Memslot]:
        """The memslots of address space 0, by GFN."""
        if self._slots is None:
            self._slots = sorted(
                (s for s in for_each_memslot(self.kvm) if s.as_id == 0),
                key=lambda s: s.base_gfn,
            )
        return self._slots

    def forget(self) -> None:
        """Read the VMM's page tables afresh from now on (a live host)."""
        if self._host is not None:
            self._host.tables = TableCache(self._host.tables.mem)

    def memslot(self, gpa: int) -> Optional[Memslot]:
        """The memslot of address space 0 holding ``gpa``."""
        gfn = gpa >> 12
        for slot in self.slots:
            if slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                return slot
        return None

    def host_gpa(self, gpa: int) -> Tuple[Optional[int], Optional[int], Optional[str]]:
        """(HPA, host page size, None), or (None, None, why not): ``gpa``
        through its memslot and the VMM's page tables, as KVM's walker and
        its page-fault path find guest memory."""
        slot = self.memslot(gpa)
        if slot is None:
            return None, None, f"GPA {gpa:#x} is in no memslot"
        if slot.flags & (1 << 2):  # KVM_MEM_GUEST_MEMFD (v6.8)
            return None, None, f"GPA {gpa:#x} is in a guest_memfd memslot (no host mapping)"
        hva = slot.hva + (gpa - (slot.base_gfn << 12))
        if self._host is None:
            self._host = HostPageTables(self.kvm.prog_, self.kvm.mm, self.mem)
        try:
            hpa, size = self._host.translate(hva)
        except HostUnmapped as e:
            return None, None, f"the VMM's HVA {hva:#x} (GPA {gpa:#x}): {e}"
        except (PhysMemError, FaultError) as e:
            return None, None, f"the VMM's page tables for HVA {hva:#x} cannot be read: {e}"
        return hpa, size, None


def _host_addr_mask(prog: Program) -> int:
    """PTE_PFN_MASK: ``physical_mask`` (no SME C-bit) without the page offset."""
    try:
        mask = _int(prog["physical_mask"])
    except KeyError:
        mask = (1 << 52) - 1
    return mask & ~0xFFF


def host_paging_levels(prog: Program) -> int:
    """4 or 5: the host's paging levels, once per program.  The kernel's
    ``__pgtable_l5_enabled`` (CONFIG_X86_5LEVEL) says it where it exists;
    otherwise the level is the one under which ``init_mm``'s tables map a
    known kernel address where drgn says it is."""
    key = "drgn_kvmwalk.host_paging_levels"
    got = prog.cache.get(key)
    if got is not None:
        return cast(int, got)
    levels = None
    for name in ("__pgtable_l5_enabled", "pgtable_l5_enabled"):
        try:
            levels = 5 if _int(prog[name]) else 4
            break
        except (KeyError, FaultError):
            continue
    if levels is None:
        levels = _probe_levels(prog)
    prog.cache[key] = levels
    return levels


def _probe_levels(prog: Program) -> int:
    init_mm = prog["init_mm"]
    address = int(init_mm.address_of_().value_())
    want = int(virt_to_phys(prog, address))
    tables = TableCache(DrgnPhysMem(prog))
    pgd = int(virt_to_phys(prog, init_mm.pgd))
    mask = _host_addr_mask(prog)
    for levels in (5, 4):
        table = pgd
        try:
            for level in range(levels, 0, -1):
                shift = 12 + 9 * (level - 1)
                entry = tables.table(table)[(address >> shift) & 511]
                if not entry & 1:
                    break
                if level == 1 or entry & (1 << 7):
                    size = 1 << shift
                    if (entry & mask & ~(size - 1)) | (address & (size - 1)) == want:
                        return levels
                    break
                table = entry & mask
        except (PhysMemError, FaultError):  # a wrong guess reads garbage
            continue
    return 4


# -- GVA -> GPA -> HPA --------------------------------------------------------


class GvaWalk(NamedTuple):
    """One GVA seen from the guest and from KVM.

    - ``guest``: the guest's own walk (each table's GPA and HPA);
    - ``spte``: under TDP the SPTE walk of the final GPA; under shadow paging
      the shadow root's walk of the GVA itself (None when nothing to walk);
    - ``hpa``/``page_size``: where the GVA lands in host memory and over how
      much (the smaller of the guest's page and the SPTE's, or the host
      page's); ``hpa_source`` "spte" (TDP) or "memslot" (shadow paging,
      through the memslot and the VMM's page tables);
    - ``stop``/``stop_level``/``stop_in``: why and where it ended unmapped
      ("guest", "spte", "host");
    - ``mismatch``: under shadow paging, what the shadow SPTE says that the
      guest's tables do not (None when they agree or cannot be compared).
    """

    addr: int
    cr3: int
    guest: GuestWalk
    spte: Optional[Walk]
    hpa: Optional[int]
    page_size: Optional[int]
    hpa_source: Optional[str]
    stop: Optional[str]
    stop_level: Optional[int]
    stop_in: Optional[str]
    mismatch: Optional[str]


class VcpuGva:
    """What the walks of many GVAs of one vCPU share: its registers, root,
    SPTE format and the table pages already read (each at most once).

    :param vcpu: ``struct kvm_vcpu *``
    :param cr3: the guest CR3 to walk from, instead of the vCPU's own
    :raises NoGuestCr3: no CR3 was given and KVM has no current one
    :raises NoRoot: the vCPU's MMU has no valid root
    """

    def __init__(self, vcpu: Object, cr3: Optional[int] = None) -> None:
        self.vcpu = vcpu
        self.prog = vcpu.prog_
        self.regs = vcpu_guest_regs(vcpu)
        if cr3 is None and self.regs.cr3 is None:
            raise NoGuestCr3(
                "KVM holds no current CR3 for this vCPU ("
                + "; ".join(self.regs.notes)
                + "); give one with --cr3"
            )
        self.cr3 = cast(int, self.regs.cr3 if cr3 is None else cr3)
        self.cr3_given = cr3 is not None
        self.mode = self.regs.mode()
        self.info: MmuInfo = mmu_info(vcpu)
        self.root: Root = self.info.root
        self.fmt: SpteFormat = spte_format(vcpu.kvm)
        mem = DrgnPhysMem(self.prog)
        self.sptes = TableCache(mem)
        self.tdp = self.info.kind == "tdp"
        self.memslots = GuestMemslots(vcpu.kvm, mem)
        self.tables = GuestTableCache(self._translate_table, mem)
        # PDPTEs: KVM's cache when current (only if the CR3 is the vCPU's).
        self.pdptes = None if self.cr3_given else self.regs.pdptes

    # Guest-physical -> host-physical, for guest table pages.
    def _translate_table(self, gpa: int) -> int:
        if self.tdp:
            w = walk_addr(self.sptes, self.fmt, self.root, gpa)
            if w.hpa is None:
                raise GuestTableError(
                    gpa,
                    f"no SPTE maps it ({w.stop} at level {w.stop_level}): "
                    "the CPU would take a nested page fault",
                )
            return w.hpa
        hpa, _, reason = self.host_gpa(gpa)
        if hpa is None:
            raise GuestTableError(gpa, cast(str, reason))
        return hpa

    def memslot(self, gpa: int) -> Optional[Memslot]:
        """The memslot of address space 0 holding ``gpa``."""
        return self.memslots.memslot(gpa)

    def host_gpa(self, gpa: int) -> Tuple[Optional[int], Optional[int], Optional[str]]:
        """``gpa`` through its memslot and the VMM's page tables (see
        :meth:`GuestMemslots.host_gpa`)."""
        return self.memslots.host_gpa(gpa)

    def walk(self, gva: int) -> GvaWalk:
        """GVA -> GPA (the guest's tables) -> HPA (the SPTEs, or the memslot
        and host page tables), and under shadow paging the shadow root's walk.

        :raises GuestAddressError: the guest's mode cannot translate ``gva``
        """
        g = guest_walk(self.tables, self.mode, self.cr3, gva, self.pdptes)
        if self.tdp:
            return self._tdp(gva, g)
        return self._shadow(gva, g)

    def _tdp(self, gva: int, g: GuestWalk) -> GvaWalk:
        if g.gpa is None:
            return GvaWalk(
                gva, self.cr3, g, None, None, None, None, g.stop, g.stop_level, "guest", None
            )
        w = walk_addr(self.sptes, self.fmt, self.root, g.gpa)
        if w.hpa is None:
            return GvaWalk(
                gva, self.cr3, g, w, None, None, None, w.stop, w.stop_level, "spte", None
            )
        size = min(cast(int, w.page_size), g.page_size or cast(int, w.page_size))
        return GvaWalk(gva, self.cr3, g, w, w.hpa, size, "spte", None, None, None, None)

    def _shadow(self, gva: int, g: GuestWalk) -> GvaWalk:
        shadow: Optional[Walk] = None
        if not self.cr3_given:  # the shadow root shadows the vCPU's own CR3
            try:
                shadow = walk_addr(self.sptes, self.fmt, self.root, gva)
            except ValueError:
                shadow = None
        if g.gpa is None:
            mismatch = None
            if shadow is not None and shadow.hpa is not None:
                mismatch = (
                    f"the shadow SPTE maps the GVA to HPA {shadow.hpa:#x}, "
                    f"but the guest's tables do not map it ({g.stop})"
                )
            return GvaWalk(
                gva, self.cr3, g, shadow, None, None, None, g.stop, g.stop_level, "guest", mismatch
            )
        hpa, host_size, reason = self.host_gpa(g.gpa)
        if hpa is None:
            return GvaWalk(gva, self.cr3, g, shadow, None, None, None, reason, None, "host", None)
        size = min(cast(int, host_size), g.page_size or cast(int, host_size))
        return GvaWalk(
            gva,
            self.cr3,
            g,
            shadow,
            hpa,
            size,
            "memslot",
            None,
            None,
            None,
            _mismatch(g, shadow, hpa),
        )


def _mismatch(g: GuestWalk, shadow: Optional[Walk], hpa: int) -> Optional[str]:
    """What the shadow SPTE gives that the guest's entries do not: another
    page, or more rights (write, user, execute)."""
    if shadow is None or shadow.hpa is None:
        return None
    problems = []
    if shadow.hpa != hpa:
        problems.append(
            f"the shadow SPTE maps HPA {shadow.hpa:#x}, "
            f"the guest's PTE and the memslot give {hpa:#x}"
        )
    # The effective rights of a shadow path: W and U of every level, NX of
    # any (the pae_root's entries have neither).
    sptes = [s.spte for s in shadow.steps if not s.pae_root]
    rights = g.rights
    if rights is not None:
        more = []
        if all(spte & PT_WRITABLE_MASK for spte in sptes) and not rights.write:
            more.append("write")
        if all(spte & PT_USER_MASK for spte in sptes) and not rights.user:
            more.append("user")
        if not any(spte & PT64_NX_MASK for spte in sptes) and not rights.execute:
            more.append("execute")
        if more:
            problems.append(
                "the shadow SPTE allows " + ", ".join(more) + " that the guest's entries do not"
            )
    return "; ".join(problems) or None


def vcpu_gva(vcpu: Object, gva: int, cr3: Optional[int] = None) -> GvaWalk:
    """Walk one guest virtual address of the vCPU: the guest's tables, then
    KVM's.

    >>> w = vcpu_gva(find_vcpu(find_vm(prog, 4242), 0), 0x7F0000001000)
    >>> hex(w.guest.gpa), hex(w.hpa)
    ('0x40123000', '0x52f0000')

    :param vcpu: ``struct kvm_vcpu *``
    :param gva: the guest virtual address
    :param cr3: walk this guest CR3 (another address space of the guest)
        instead of the vCPU's
    :raises NoGuestCr3: KVM holds no current CR3 and none was given
    :raises NoRoot: the vCPU has no valid root
    :raises GuestAddressError: the guest's mode cannot translate ``gva``
    """
    return VcpuGva(vcpu, cr3).walk(gva)


class VcpuMemory:
    """Guest memory of one vCPU, read through the walks ``--addr`` and
    ``--gva`` do.

    - ``gva=False``: the address is what the vCPU's root translates, a GPA
      under TDP (through the SPTEs), a GVA under shadow paging (through the
      shadow root's SPTEs, that is what KVM lets the CPU reach);
    - ``gva=True``: a GVA through the guest's own page tables (from its CR3,
      or ``cr3``) and then KVM's, as :class:`VcpuGva` walks it.

    :param vcpu: ``struct kvm_vcpu *``
    :raises NoGuestCr3: ``gva`` without ``cr3``, and KVM holds no current CR3
    :raises NoRoot: the vCPU's MMU has no valid root
    """

    def __init__(self, vcpu: Object, gva: bool = False, cr3: Optional[int] = None) -> None:
        self.prog = vcpu.prog_
        self.gva: Optional[VcpuGva] = VcpuGva(vcpu, cr3) if gva else None
        if self.gva is not None:  # its registers, root, format and SPTE pages
            self.info, self.fmt, self.sptes = self.gva.info, self.gva.fmt, self.gva.sptes
        else:
            self.info, self.fmt = mmu_info(vcpu), spte_format(vcpu.kvm)
            self.sptes = TableCache(DrgnPhysMem(self.prog))
        self.mem: PhysMem = self.sptes.mem
        self.space = "GVA" if gva or not self.info.root.direct else "GPA"
        live = bool(self.prog.flags & ProgramFlags.IS_LIVE)
        self.unreadable = (
            "cannot be read"
            if live
            else "is not in the dump (a filtered dump drops the guest's memory)"
        )

    def translate(self, addr: int) -> Translation:
        """Where ``addr`` lands (for :func:`~drgn_kvmwalk.gmem.read_guest_memory`).

        :raises AddressError, GuestAddressError: it cannot be translated
        """
        if self.gva is not None:
            w = self.gva.walk(addr)
            gpa = w.guest.gpa
            if w.hpa is not None:
                return Translation(gpa, w.hpa, None)
            if w.stop_in == "guest":
                return Translation(None, None, f"not mapped by the guest: {w.stop}")
            if w.stop_in == "spte":
                return Translation(
                    gpa, None, f"GPA {gpa:#x}: no SPTE maps it: {w.stop} at level {w.stop_level}"
                )
            return Translation(gpa, None, w.stop)
        root = self.info.root
        s = walk_addr(self.sptes, self.fmt, root, addr)
        gpa = addr if root.direct else None
        if s.hpa is not None:
            return Translation(gpa, s.hpa, None)
        return Translation(gpa, None, f"no SPTE maps it: {s.stop} at level {s.stop_level}")

    def read(self, addr: int, length: int) -> GuestRead:
        """``length`` bytes from ``addr``, page by page.

        >>> r = VcpuMemory(vcpu, gva=True).read(0x7EFFFFFFFFF8, 16)
        >>> r.data, [(hex(p.addr), p.hpa, p.data, p.error) for p in r.pieces]
        (None, [('0x7efffffffff8', None, None, 'not mapped by the guest: guest PML4E not present'),
                ('0x7f0000000000', 5422747648, b'\\x01\\x00\\x00\\x00WMVK', None)])

        :raises AddressError, GuestAddressError: ``addr`` cannot be translated
        :raises ValueError: ``length`` not in 1..MAX_READ
        """
        return read_guest_memory(
            self.translate, self.mem, addr, length, self.space, self.unreadable
        )


def read_guest(
    vcpu: Object, addr: int, length: int, gva: bool = False, cr3: Optional[int] = None
) -> GuestRead:
    """``length`` bytes of the vCPU's guest memory from ``addr`` (see
    :class:`VcpuMemory`; for many reads, keep one of those: it reads each
    table page once)."""
    return VcpuMemory(vcpu, gva, cr3).read(addr, length)
