# SPDX-License-Identifier: LGPL-2.1-or-later
"""A drgn :class:`~drgn.Program` for a KVM guest, to debug the guest from the
host: its physical memory is the guest's, read through KVM's tables.

- ``through="spte"``: each GPA through the SPTEs of the vCPU's root, as the
  CPU's second dimension translates it (TDP only: a shadow-paging root maps
  GVAs).  A page that no SPTE maps is a fault, even when the memslot has
  memory there: that is what the guest can reach right now.
- ``through="memslot"``: each GPA through its memslot and the VMM's page
  tables (``kvm->mm``), as KVM's page-fault path finds guest memory; every
  mode, and a ``struct kvm *`` is enough.

One physical segment per memslot of address space 0 (read once, when the
Program is made); a GPA in no memslot is drgn's own "could not find
physical memory segment".  A read that cannot be served raises
:class:`drgn.FaultError` at the guest address, saying why; nothing is made
up.  The tables are read once per Program on a dump, and again on every
read on a live host (guest memory and KVM's tables change under it).

Virtual addresses:

- ``linux=True``: drgn's Linux kernel support (its own walk of the guest
  kernel's page tables, from ``swapper_pg_dir``), set up from the guest's
  vmcoreinfo: the text, the GPA of its ELF note (what ``/sys/kernel/vmcoreinfo``
  prints in the guest) or, by default, the note found in guest memory.  Then
  ``load_debug_info()`` with the guest's vmlinux and modules, and the guest
  kernel reads as any drgn kernel target does.
- otherwise, with a vCPU: one virtual segment, the vCPU's address space
  (its CR3, or ``cr3``) through the guest's page tables, read through the
  same GPA translation.
"""

from __future__ import annotations

import struct
from typing import Callable, Iterator, List, Optional, Tuple, Union, cast

from drgn import (
    Architecture,
    FaultError,
    Object,
    Platform,
    PlatformFlags,
    Program,
    ProgramFlags,
    TypeKind,
)

from .errors import KvmWalkError
from .guest import GuestMemslots, NoGuestCr3, vcpu_guest_regs
from .gwalk import GuestAddressError, GuestTableCache, GuestTableError, guest_walk
from .kvm import Memslot
from .mmu import DrgnPhysMem, mmu_info
from .spte import PAGE_SIZE
from .sptefmt import spte_format
from .walk import AddressError, PhysMemError, TableCache, walk_addr

__all__ = ["THROUGH", "GuestPhysical", "find_vmcoreinfo", "guest_program", "program_of"]

THROUGH = ("spte", "memslot")
_VMCOREINFO_NAME = b"VMCOREINFO\0"
_VMCOREINFO_MAX = 1 << 16  # the note is at most a page or two (VMCOREINFO_BYTES)
_SCAN_CHUNK = 1 << 20


class _Unmapped(Exception):
    """A GPA that this translation cannot serve (the message says why)."""


class GuestPhysical:
    """Guest physical memory of one VM, through one vCPU's SPTEs or through
    the memslots.

    :param obj: ``struct kvm_vcpu *``, or ``struct kvm *`` with ``memslot``
    :param through: ``"spte"`` or ``"memslot"``
    :raises ValueError: ``through`` unknown, or ``spte`` without a TDP root
    :raises NoRoot: ``spte`` and the vCPU's MMU has no valid root
    """

    def __init__(self, obj: Object, through: str = "spte") -> None:
        if through not in THROUGH:
            raise ValueError(f"through must be one of {', '.join(THROUGH)}, not {through!r}")
        self.through = through
        self.host = obj.prog_
        t = obj.type_
        kind = t.type.tag if t.kind == TypeKind.POINTER else None
        self.vcpu: Optional[Object] = obj if kind == "kvm_vcpu" else None
        self.kvm = obj.kvm if self.vcpu is not None else obj
        self.live = bool(self.host.flags & ProgramFlags.IS_LIVE)
        self.mem = DrgnPhysMem(self.host)
        if through == "spte":
            if self.vcpu is None:
                raise ValueError(
                    "through='spte' needs a vCPU (its root); a VM is enough for 'memslot'"
                )
            self.info = mmu_info(self.vcpu)
            if not self.info.root.direct:
                raise ValueError(
                    "the vCPU's root is a shadow-paging root: it maps guest virtual "
                    "addresses, not GPAs; read guest physical memory through='memslot'"
                )
            self.fmt = spte_format(self.kvm)
        # The memslots are read once: the segments are made from them.
        self.memslots = GuestMemslots(self.kvm, self.mem)
        self.slots: List[Memslot] = list(self.memslots.slots)
        self._sptes = TableCache(self.mem)

    def _fresh(self) -> None:
        """Forget the table pages read of KVM's and the host's tables, and
        take the vCPU's root as it is now (a live host).

        :raises NoRoot: the vCPU has no valid root now
        """
        self._sptes = TableCache(self.mem)
        self.memslots.forget()
        if self.through == "spte" and self.vcpu is not None:
            self.info = mmu_info(self.vcpu)

    def refresh(self, address: int) -> None:
        """:meth:`_fresh` on a live host, before a read at ``address``.

        :raises FaultError: the vCPU has no valid root now
        """
        if self.live:
            try:
                self._fresh()
            except KvmWalkError as e:
                raise FaultError(f"{e}", address) from None

    def hpa(self, gpa: int) -> Tuple[int, int]:
        """(HPA of ``gpa``, bytes from it that are contiguous in host memory).

        :raises _Unmapped: with the reason
        """
        if self.through == "spte":
            try:
                w = walk_addr(self._sptes, self.fmt, self.info.root, gpa)
            except (AddressError, PhysMemError) as e:
                raise _Unmapped(f"GPA {gpa:#x}: {e}") from None
            if w.hpa is None:
                raise _Unmapped(f"GPA {gpa:#x}: no SPTE maps it ({w.stop} at level {w.stop_level})")
            hpa, size = int(w.hpa), int(w.page_size or PAGE_SIZE)
            end = 1 << 64
        else:
            got, host_size, reason = self.memslots.host_gpa(gpa)
            if got is None:
                raise _Unmapped(str(reason))
            hpa, size = got, int(host_size or PAGE_SIZE)
            slot = self.memslots.memslot(gpa)
            end = (slot.base_gfn + slot.npages) << 12 if slot is not None else gpa + 1
        # To the end of the host page (the leaf), and not past the memslot.
        return hpa, min(size - (hpa & (size - 1)), end - gpa)

    def table_hpa(self, gpa: int) -> int:
        """The HPA of a guest page-table page (for :class:`GuestTableCache`)."""
        try:
            return self.hpa(gpa)[0]
        except _Unmapped as e:
            raise GuestTableError(gpa, str(e)) from None

    def read(self, gpa: int, count: int) -> bytes:
        """``count`` bytes of guest physical memory from ``gpa``.

        :raises FaultError: at the first guest address that cannot be read
        """
        out = []
        addr, end = gpa, gpa + count
        while addr < end:
            try:
                hpa, run = self.hpa(addr)
            except _Unmapped as e:
                raise FaultError(str(e), addr) from None
            n = min(run, end - addr)
            try:
                out.append(self.mem.read(hpa, n))
            except PhysMemError:
                why = "cannot be read" if self.live else "is not in the dump"
                raise FaultError(
                    f"GPA {addr:#x}: its host page (HPA {hpa:#x}) {why}", addr
                ) from None
            addr += n
        return b"".join(out)

    def segment_reader(self) -> Callable[[int, int, int, bool], bytes]:
        """The ``read_fn`` of a physical segment."""

        def read_fn(address: int, count: int, offset: int, physical: bool) -> bytes:
            self.refresh(address)
            return self.read(address, count)

        return read_fn


class _GuestVirtual:
    """One address space of the guest (a vCPU's CR3) through the guest's
    page tables, over :class:`GuestPhysical`."""

    def __init__(self, phys: GuestPhysical, cr3: Optional[int]) -> None:
        assert phys.vcpu is not None
        regs = vcpu_guest_regs(phys.vcpu)
        if cr3 is None and regs.cr3 is None:
            raise NoGuestCr3(
                "KVM holds no current CR3 for this vCPU ("
                + "; ".join(regs.notes)
                + "); give one with cr3="
            )
        self.phys = phys
        self.mode = regs.mode()
        self.cr3 = cast(int, regs.cr3 if cr3 is None else cr3)
        self.pdptes = regs.pdptes if cr3 is None else None
        self._fresh()

    def _fresh(self) -> None:
        self.tables = GuestTableCache(self.phys.table_hpa, self.phys.mem)

    def read_fn(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        if self.phys.live:
            self.phys.refresh(address)
            self._fresh()
        out = []
        addr, end = address, address + count
        while addr < end:
            try:
                g = guest_walk(self.tables, self.mode, self.cr3, addr, self.pdptes)
            except (GuestAddressError, GuestTableError) as e:
                raise FaultError(f"GVA {addr:#x}: {e}", addr) from None
            if g.gpa is None:
                raise FaultError(f"GVA {addr:#x}: not mapped by the guest: {g.stop}", addr)
            n = min(PAGE_SIZE - (addr & (PAGE_SIZE - 1)), end - addr)
            try:
                out.append(self.phys.read(g.gpa, n))
            except FaultError as e:
                raise FaultError(f"GVA {addr:#x}: {e.message}", addr) from None
            addr += n
        return b"".join(out)


def _note_text(desc: bytes) -> Optional[bytes]:
    text = desc.split(b"\0", 1)[0]
    return text if text.startswith(b"OSRELEASE=") else None


def _note_at(phys: GuestPhysical, gpa: int) -> Optional[bytes]:
    """The vmcoreinfo text of the ELF note at ``gpa``, or None when there is
    no VMCOREINFO note there.

    :raises FaultError: it cannot be read
    """
    header = phys.read(gpa, 24)
    namesz, descsz, ntype = struct.unpack_from("<III", header)
    if namesz != len(_VMCOREINFO_NAME) or ntype != 0 or not 0 < descsz <= _VMCOREINFO_MAX:
        return None
    if header[12:23] != _VMCOREINFO_NAME:
        return None
    return _note_text(phys.read(gpa + 24, descsz))


def _readable_chunks(phys: GuestPhysical) -> Iterator[Tuple[int, bytes]]:
    """(GPA, bytes) of what can be read of each memslot, in chunks."""
    for slot in phys.slots:
        start, end = slot.base_gfn << 12, (slot.base_gfn + slot.npages) << 12
        addr = start
        while addr < end:
            n = min(_SCAN_CHUNK, end - addr)
            try:
                yield addr, phys.read(addr, n)
                addr += n
            except FaultError as e:  # read up to the fault, skip its page
                fault = int(e.address)
                if fault > addr:
                    yield addr, phys.read(addr, fault - addr)
                addr = (fault & ~(PAGE_SIZE - 1)) + PAGE_SIZE


def find_vmcoreinfo(phys: GuestPhysical, gpa: Optional[int] = None) -> bytes:
    """The guest kernel's vmcoreinfo: its ELF note at ``gpa`` (as the guest's
    ``/sys/kernel/vmcoreinfo`` gives it), or the first such note in guest
    memory (a Linux kernel with CONFIG_CRASH_CORE keeps it in
    ``vmcoreinfo_note``, a page that ``crash_save_vmcoreinfo_init()``
    allocates where ``vmcoreinfo_note`` is a pointer).  The scan reads the
    whole of each memslot that can be read (a GiB takes seconds).

    :raises LookupError: there is none (or not at ``gpa``)
    """
    if gpa is not None:
        try:
            text = _note_at(phys, gpa)
        except FaultError as e:
            raise LookupError(f"no vmcoreinfo note at GPA {gpa:#x}: {e}") from None
        if text is None:
            raise LookupError(f"no vmcoreinfo note at GPA {gpa:#x}")
        return text
    prev_end, tail = -1, b""
    for base, data in _readable_chunks(phys):
        if base == prev_end:  # a name across two chunks
            base, data = base - len(tail), tail + data
        i = data.find(_VMCOREINFO_NAME)
        while i >= 0:
            try:
                text = _note_at(phys, base + i - 12)
            except FaultError:
                text = None
            if text is not None:
                return text
            i = data.find(_VMCOREINFO_NAME, i + 1)
        prev_end, tail = base + len(data), data[-(len(_VMCOREINFO_NAME) - 1) :]
    raise LookupError(
        "no vmcoreinfo note in the guest's memory (not a Linux guest, a kernel "
        "without CONFIG_CRASH_CORE, or its page is not readable this way); "
        "give vmcoreinfo= (the text, or the GPA /sys/kernel/vmcoreinfo prints in the guest)"
    )


def guest_program(
    obj: Object,
    through: str = "spte",
    *,
    linux: bool = False,
    vmcoreinfo: Union[None, int, str, bytes] = None,
    cr3: Optional[int] = None,
    virtual: Optional[bool] = None,
) -> Program:
    """A drgn Program whose memory is the guest's (see the module's text).

    >>> gprog = guest_program(find_vcpu(find_vm(prog, 4242), 0))
    >>> gprog.read(0x40123000, 8, True)          # guest physical
    b'\\x01\\x00\\x00\\x00WMVK'
    >>> lprog = guest_program(vm, "memslot", linux=True)
    >>> lprog.load_debug_info(["vmlinux-guest"])
    >>> lprog["init_uts_ns"].name.release

    :param obj: ``struct kvm_vcpu *``; ``struct kvm *`` with ``memslot``
    :param through: ``"spte"`` (the vCPU's TDP root) or ``"memslot"``
    :param linux: a Linux guest: drgn's kernel support from its vmcoreinfo
    :param vmcoreinfo: with ``linux``: the vmcoreinfo text, or the GPA of its
        note; by default the note is looked for in guest memory
    :param cr3: without ``linux``: the address space of the virtual segment
        (by default the vCPU's CR3)
    :param virtual: without ``linux``: add the virtual segment (by default
        when ``obj`` is a vCPU)
    :raises ValueError: ``through`` cannot be used here
    :raises LookupError: ``linux`` and no vmcoreinfo was found
    :raises NoGuestCr3: a virtual segment, and KVM holds no current CR3
    :raises NoRoot: ``spte`` and the vCPU has no valid root
    """
    phys = GuestPhysical(obj, through)
    gva: Optional[_GuestVirtual] = None
    if virtual is None:
        virtual = phys.vcpu is not None
    if not linux and virtual:
        if phys.vcpu is None:
            raise ValueError("a virtual segment needs a vCPU (its CR3); pass virtual=False")
        gva = _GuestVirtual(phys, cr3)
    return program_of(phys, linux, vmcoreinfo, gva.read_fn if gva is not None else None)


def program_of(
    phys: GuestPhysical,
    linux: bool = False,
    vmcoreinfo: Union[None, int, str, bytes] = None,
    virtual_read: Optional[Callable[[int, int, int, bool], bytes]] = None,
) -> Program:
    """The Program over ``phys`` (see :func:`guest_program`): a physical
    segment per memslot, then drgn's Linux kernel support or the virtual
    segment ``virtual_read`` serves."""
    gprog = Program(
        Platform(Architecture.X86_64, PlatformFlags.IS_64_BIT | PlatformFlags.IS_LITTLE_ENDIAN)
    )
    read_fn = phys.segment_reader()
    for slot in phys.slots:
        gprog.add_memory_segment(slot.base_gfn << 12, slot.npages << 12, read_fn, True)
    if linux:
        if isinstance(vmcoreinfo, (str, bytes)):
            text = vmcoreinfo.encode() if isinstance(vmcoreinfo, str) else vmcoreinfo
        else:
            text = find_vmcoreinfo(phys, vmcoreinfo)
        if not text.endswith(b"\n"):
            text += b"\n"
        gprog.set_linux_kernel_custom(text, phys.live)
    elif virtual_read is not None:
        for half in (0, 1 << 63):  # the whole 64-bit space, in two
            gprog.add_memory_segment(half, 1 << 63, virtual_read, False)
    return gprog
