# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn_kvmwalk.gprog over made-up guest memory: the physical segments, the
faults that say why, the vmcoreinfo note found in guest memory, and drgn's
own Linux kernel support walking a made-up guest kernel's page tables
through them.  (The VM tests read real guests through real KVM tables.)"""

import struct

import pytest
from drgn import FaultError, ProgramFlags

from drgn_kvmwalk.gprog import GuestPhysical, _Unmapped, find_vmcoreinfo, program_of
from drgn_kvmwalk.kvm import Memslot
from drgn_kvmwalk.walk import PhysMemError

MIB = 1 << 20
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000


class BytesMem:
    def __init__(self, data: bytearray) -> None:
        self.data = data

    def read(self, address: int, size: int) -> bytes:
        if address + size > len(self.data):
            raise PhysMemError(address)
        return bytes(self.data[address : address + size])


class MadeUpGuest(GuestPhysical):
    """Guest memory 0..4 MiB in two memslots (0-2 MiB, 4-6 MiB), GPA = HPA
    + 64 MiB (so a wrong translation reads other bytes), ``holes`` pages
    unmapped."""

    def __init__(self, holes=()) -> None:
        self.through, self.live = "memslot", False
        self.data = bytearray(70 * MIB)
        self.mem = BytesMem(self.data)
        self.slots = [Memslot(0, 0, 0, 512, 0, 0), Memslot(0, 1, 1024, 512, 0, 0)]
        self.holes = set(holes)

    def _fresh(self) -> None:
        pass

    def hpa(self, gpa: int):
        if gpa >> 12 in self.holes:
            raise _Unmapped(f"GPA {gpa:#x}: no SPTE maps it")
        return gpa + 64 * MIB, 4096 - (gpa & 0xFFF)

    def put(self, gpa: int, data: bytes) -> None:
        self.data[gpa + 64 * MIB : gpa + 64 * MIB + len(data)] = data


def note(text: bytes) -> bytes:
    return struct.pack("<III", 11, len(text), 0) + b"VMCOREINFO\0\0" + text


def vmcoreinfo(swapper_gpa: int) -> bytes:
    return (
        b"OSRELEASE=made-up\nPAGESIZE=4096\n"
        + f"SYMBOL(swapper_pg_dir)={START_KERNEL_MAP + swapper_gpa:x}\n".encode()
        + b"NUMBER(phys_base)=0\nKERNELOFFSET=0\nNUMBER(pgtable_l5_enabled)=0\n"
    )


def test_physical_reads_cross_pages_and_fault_where_unmapped():
    g = MadeUpGuest(holes={3})
    g.put(0x1FF8, b"ABCDEFGHIJKLMNOP")
    prog = program_of(g)
    assert prog.read(0x1FF8, 16, True) == b"ABCDEFGHIJKLMNOP"
    with pytest.raises(FaultError) as e:
        prog.read(0x2FFC, 8, True)
    assert e.value.address == 0x3000 and "no SPTE maps it" in e.value.message
    with pytest.raises(FaultError) as e:  # between the memslots: drgn's own fault
        prog.read(0x200000, 8, True)
    assert e.value.address == 0x200000
    g.put(0x400000, b"slot one")
    assert prog.read(0x400000, 8, True) == b"slot one"
    with pytest.raises(FaultError):  # no virtual segment was asked for
        prog.read(0x1000, 8)


def test_a_host_page_missing_from_the_dump_is_a_fault():
    g = MadeUpGuest()
    g.data = g.data[: 64 * MIB + 0x5000]
    g.mem = BytesMem(g.data)
    with pytest.raises(FaultError) as e:
        program_of(g).read(0x4FF0, 32, True)
    assert e.value.address == 0x5000 and "is not in the dump" in e.value.message


@pytest.mark.parametrize("head", [0x123000, MIB - 16, 4 * MIB + 0x8000])
def test_vmcoreinfo_is_found_in_guest_memory(head):
    g = MadeUpGuest(holes={0x10, 0x11})
    text = vmcoreinfo(0x40000)
    g.put(0x5000, b"not a note: VMCOREINFO\0 in a string")  # a decoy, no header
    g.put(head, note(text))
    assert find_vmcoreinfo(g) == text
    assert find_vmcoreinfo(g, head) == text
    with pytest.raises(LookupError):
        find_vmcoreinfo(g, head + 4096)


def test_no_vmcoreinfo_is_said():
    with pytest.raises(LookupError, match="no vmcoreinfo note"):
        find_vmcoreinfo(MadeUpGuest())


def test_linux_kernel_addresses_through_the_guest_kernels_tables():
    """drgn walks the guest kernel's page tables from swapper_pg_dir, each
    table read through the guest's physical segments."""
    g = MadeUpGuest()
    pgd, pud, pmd, pt = 0x41000, 0x42000, 0x43000, 0x44000
    kva4k, kva2m = 0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8120_0000

    def entry(table, va, shift, value):
        g.put(table + 8 * ((va >> shift) & 511), struct.pack("<Q", value))

    entry(pgd, kva4k, 39, pud | 3)
    entry(pud, kva4k, 30, pmd | 3)
    entry(pmd, kva4k, 21, pt | 3)
    entry(pt, kva4k, 12, 0x7000 | 3)
    entry(pmd, kva2m, 21, 0x400000 | 0x83)  # 2M page: GPA 4 MiB
    g.put(0x7000, b"4K  tag!")
    g.put(0x400000 + 0x1234, b"2M  tag!")
    g.put(0x20000, note(vmcoreinfo(pgd)))
    prog = program_of(g, linux=True)
    assert prog.flags & ProgramFlags.IS_LINUX_KERNEL
    assert prog.read(kva4k, 8) == b"4K  tag!"
    assert prog.read(kva2m + 0x1234, 8) == b"2M  tag!"
    with pytest.raises(FaultError):
        prog.read(kva4k + 0x1000, 8)  # no PTE
    # The text given instead, without its final newline.
    prog = program_of(g, linux=True, vmcoreinfo=vmcoreinfo(pgd).decode().rstrip("\n"))
    assert prog.read(kva4k, 8) == b"4K  tag!"


def test_a_live_host_is_read_afresh_each_time():
    """On a live host KVM's and the host's tables change under the reader:
    each read starts from fresh table caches (and the vCPU's root now)."""
    g = MadeUpGuest()
    g.live = True
    calls = []
    g._fresh = lambda: calls.append(1)
    g.put(0x1000, b"live one")
    prog = program_of(g)
    assert prog.read(0x1000, 8, True) == b"live one"
    assert prog.read(0x1000, 8, True) == b"live one"
    assert len(calls) == 2
