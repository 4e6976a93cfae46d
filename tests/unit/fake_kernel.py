# SPDX-License-Identifier: LGPL-2.1-or-later
"""A synthetic KVM host for tests: a drgn Program whose types, variables and
memory are made here, so that a kernel layout no real kernel has can be made
on purpose.

Only what the helpers read is modelled: ``vm_list``, ``struct kvm`` with the
v5.16-style ``vcpus[]`` array, ``struct kvm_vcpu`` with ``arch.mmu``, and a
``struct kvm_mmu`` whose members the test chooses.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Tuple, Union

import drgn
from drgn import Object, Program, Type, TypeMember

BASE = 0xFFFF_8880_0000_0000  # where the synthetic kernel's objects live
SIZE = 1 << 16

Field = Tuple[str, Union[Type, Tuple[Type, int]]]  # (name, type) or (name, (type, bits))


# What drgn needs to take a program for a Linux kernel (drgn's kernel
# commands are enabled only for those); nothing is read through it here.
VMCOREINFO = (
    b"OSRELEASE=7.3-amd64\nPAGESIZE=4096\nKERNELOFFSET=0\n"
    b"SYMBOL(swapper_pg_dir)=ffffffff82000000\nNUMBER(phys_base)=0\n"
)


def kernel_program(live: bool = False) -> Program:
    """An empty drgn Program that is a Linux kernel (a running one, with
    ``live``): no types, no memory."""
    prog = Program(drgn.host_platform)
    prog.set_linux_kernel_custom(VMCOREINFO, live)
    return prog


class FakeKernel:
    """Types, variables and memory of a synthetic kernel."""

    def __init__(self, live: bool = False) -> None:
        self.prog = kernel_program(live)
        self.mem = bytearray(SIZE)
        self.next = BASE
        self.types: Dict[str, Type] = {}
        self.objects: Dict[str, Object] = {}
        p = self.prog
        self.u8 = p.int_type("u8", 1, False)
        self.u32 = p.int_type("u32", 4, False)
        self.int = p.int_type("int", 4, True)
        self.u64 = p.int_type("u64", 8, False)
        self.bool = p.bool_type("_Bool", 1)
        p.add_memory_segment(BASE, SIZE, self._read)
        p.register_type_finder("fake", self._find_type, enable_index=0)
        p.register_object_finder("fake", self._find_object, enable_index=0)

    def _read(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        return bytes(self.mem[offset : offset + count])

    def _find_type(
        self, prog: Program, kinds: "drgn.TypeKindSet", name: str, filename: Optional[str]
    ) -> Optional[Type]:
        for kind in kinds:
            t = self.types.get(f"{kind.name.lower()} {name}")
            if t is not None:
                return t
        return None

    def _find_object(
        self, prog: Program, name: str, flags: object, filename: Optional[str]
    ) -> Optional[Object]:
        return self.objects.get(name)

    def struct(self, tag: str, fields: Sequence[Field], kind: str = "struct") -> Type:
        """A struct (or union) laid out in order, 8-byte aligned members;
        ``(type, bits)`` makes consecutive bit fields of one 32-bit word."""
        members: List[TypeMember] = []
        offset = 0  # in bits
        bit = 0  # next free bit inside the current bit-field word, -1: none
        for name, t in fields:
            if isinstance(t, tuple):
                ftype, bits = t
                members.append(
                    TypeMember(Object(self.prog, ftype, bit_field_size=bits), name, offset + bit)
                )
                bit += bits
                continue
            if bit:
                offset += 32
                bit = 0
            size = drgn.sizeof(t)
            align = 8 if t.kind == drgn.TypeKind.ARRAY else min(8, max(1, size))
            offset = -(-offset // (align * 8)) * align * 8
            members.append(TypeMember(t, name, offset))
            if kind == "struct":
                offset += size * 8
        if bit:
            offset += 32
        size = (
            -(-offset // 64) * 8
            if kind == "struct"
            else max(drgn.sizeof(m.type) if m.bit_field_size is None else 4 for m in members)
        )
        make = self.prog.struct_type if kind == "struct" else self.prog.union_type
        t = make(tag, size, members)
        self.types[f"{kind} {tag}"] = t
        return t

    def alloc(self, t: Type) -> int:
        address = self.next
        self.next += -(-drgn.sizeof(t) // 64) * 64
        assert self.next <= BASE + SIZE
        return address

    def write(self, address: int, fmt: str, *values: int) -> None:
        off = address - BASE
        self.mem[off : off + struct.calcsize(fmt)] = struct.pack(fmt, *values)

    def member_address(self, t: Type, address: int, path: str) -> int:
        return int(Object(self.prog, t, address=address).subobject_(path).address_)

    def variable(self, name: str, t: Type, address: int) -> None:
        self.objects[name] = Object(self.prog, t, address=address)


def kvm_host(
    mmu_fields: Sequence[Field],
    values: Dict[str, int],
    pids: Sequence[int] = (4242,),
    vcpu_arch_fields: Optional[Sequence[Field]] = None,
    live: bool = False,
) -> FakeKernel:
    """A host with one VM per pid in ``pids``, each with one vCPU (id 0) whose
    MMU is a ``struct kvm_mmu`` of ``mmu_fields``; ``values`` sets its members
    by path (``"root.hpa"``, ``"w->cpu_role.base.level"``).  ``vcpu_arch_fields``
    replaces ``struct kvm_vcpu_arch`` (``mmu`` points at ``root_mmu``, when
    there are both).  The VMs have no memslots (``memslots[]`` all NULL, the
    v5.16 layout).  With ``live``, the program is a running kernel's."""
    k = FakeKernel(live)
    p = k.prog
    # list_head points at itself: its members are made lazily.
    list_head = p.struct_type(
        "list_head",
        16,
        [
            TypeMember(lambda: p.pointer_type(list_head), "next", 0),
            TypeMember(lambda: p.pointer_type(list_head), "prev", 64),
        ],
    )
    k.types["struct list_head"] = list_head
    atomic = k.struct("atomic_t", [("counter", k.int)])
    role = k.struct(
        "kvm_mmu_page_role",
        [
            ("level", (k.u32, 4)),
            ("has_4_byte_gpte", (k.u32, 1)),
            ("quadrant", (k.u32, 2)),
            ("direct", (k.u32, 1)),
        ],
        kind="union",
    )
    root_info = k.struct("kvm_mmu_root_info", [("pgd", k.u64), ("hpa", k.u64)])
    cpu_role = k.struct("kvm_cpu_role", [("base", role), ("ext", k.u32)])
    walk = k.struct("kvm_pagewalk", [("cpu_role", cpu_role)])
    known = {
        "u64": k.u64,
        "u8": k.u8,
        "bool": k.bool,
        "root_info": root_info,
        "role": role,
        "cpu_role": cpu_role,
        "pagewalk *": p.pointer_type(walk),
        "u64 *": p.pointer_type(k.u64),
        "u32": k.u32,
        "ulong": p.int_type("unsigned long", 8, False),
    }
    known["ulong[17]"] = p.array_type(known["ulong"], 17)  # regs[]
    known["ulong[1]"] = p.array_type(known["ulong"], 1)  # a bitmap
    known["u64[4]"] = p.array_type(k.u64, 4)  # pdptrs[]
    mmu = k.struct(
        "kvm_mmu", [(name, known[t] if isinstance(t, str) else t) for name, t in mmu_fields]
    )
    mmu_ptr = p.pointer_type(mmu)
    known["mmu *"], known["mmu"] = mmu_ptr, mmu
    vcpu_arch = k.struct(
        "kvm_vcpu_arch",
        [
            (name, known[t] if isinstance(t, str) else t)
            for name, t in vcpu_arch_fields or [("mmu", "mmu *"), ("root_mmu", "mmu")]
        ],
    )
    vcpu = k.struct("kvm_vcpu", [("vcpu_id", k.int), ("arch", vcpu_arch)])
    vcpu_ptr = p.pointer_type(vcpu)
    memslots = k.struct("kvm_memslots", [("used_slots", k.int)])
    kvm = k.struct(
        "kvm",
        [
            ("vm_list", list_head),
            ("userspace_pid", k.int),
            ("online_vcpus", atomic),
            ("vcpus", p.array_type(vcpu_ptr, 4)),
            ("memslots", p.array_type(p.pointer_type(memslots), 2)),
        ],
    )
    head = k.alloc(list_head)
    links = []
    for pid in pids:
        kvm_at, vcpu_at = k.alloc(kvm), k.alloc(vcpu)
        walk_at = k.alloc(walk)
        links.append(k.member_address(kvm, kvm_at, "vm_list"))
        k.write(k.member_address(kvm, kvm_at, "userspace_pid"), "<i", pid)
        k.write(k.member_address(kvm, kvm_at, "online_vcpus"), "<i", 1)
        k.write(k.member_address(kvm, kvm_at, "vcpus[0]"), "<Q", vcpu_at)
        if vcpu_arch.has_member("root_mmu"):
            mmu_at = k.member_address(vcpu, vcpu_at, "arch.root_mmu")
            k.write(k.member_address(vcpu, vcpu_at, "arch.mmu"), "<Q", mmu_at)
        else:
            mmu_at = k.alloc(mmu)
        if mmu.has_member("w"):
            k.write(k.member_address(mmu, mmu_at, "w"), "<Q", walk_at)
        for path, value in values.items():
            if path.startswith("w->"):
                t, base, sub = walk, walk_at, path[len("w->") :]
            else:
                t, base, sub = mmu, mmu_at, path
            obj = Object(p, t, address=base).subobject_(sub)
            if obj.bit_field_size_ is not None:
                off = int(obj.address_) - BASE
                k.mem[off] |= value << (obj.bit_offset_ or 0)
            else:
                k.write(int(obj.address_), {1: "<B", 4: "<I", 8: "<Q"}[drgn.sizeof(obj)], value)
    # vm_list: head <-> each VM's kvm->vm_list, in order.
    ring = [head, *links]
    for i, at in enumerate(ring):
        k.write(at, "<QQ", ring[(i + 1) % len(ring)], ring[i - 1])
    k.variable("vm_list", list_head, head)
    tdp_enabled = k.alloc(k.bool)
    k.variable("tdp_enabled", k.bool, tdp_enabled)  # false: shadow paging
    # struct page array where x86-64 keeps it; none of it is in memory, so
    # no table page has a struct kvm_mmu_page.
    page = k.struct("page", [("flags", k.u64), ("private", k.u64)])
    k.struct("kvm_mmu_page", [("spt", p.pointer_type(k.u64))])
    vmemmap = k.alloc(p.pointer_type(page))
    k.write(vmemmap, "<Q", 0xFFFF_EA00_0000_0000)
    k.variable("vmemmap", p.pointer_type(page), vmemmap)
    return k
