# SPDX-License-Identifier: LGPL-2.1-or-later
"""Faults made on purpose in a copy of a real ELF dump, for --verify to find.

    python3 vm-test/fault_dumps.py --core COPY.elf -s vmlinux -s kvm.ko \\
        --truth truth.json --addr-kind gpa|gva --out faults.json

The copy is changed in place, one fault at a time, and put back after each
(the bytes it held are written again); ``--verify --json`` of the workload's
VM runs on each state, in this one drgn process, which reads the file anew
on every read.  The faults, located with drgn in the dump itself, at the leaf
SPTE of the workload's first tagged page (vCPU 0's walk):

- ``pfn``: the leaf SPTE pointed at the host page of another tagged page;
- ``readonly_host``: the VMM's host PTE of that page made read-only (its
  writable bit cleared) under the writable SPTE;
- ``no_memslot``: the page's memslot shrunk (``npages``) to end just before
  the page's GFN, so that its leaf and those after it lie in no memslot;
- ``backpointer``: ``page->private`` of the leaf's table page cleared, so
  that no struct kvm_mmu_page points back at it.

Then the copy as it was, which must again verify clean.  What each fault
must be found as is the check's (harness/checks/verify.py); this records
what was changed and what --verify said.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Any, Dict, List, NamedTuple, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from check_views import whole_table  # noqa: E402
from drgn import Object, Program, offsetof  # noqa: E402
from drgn.helpers.linux.mm import follow_phys, pfn_to_page  # noqa: E402
from harness.records import truth_hpa  # noqa: E402

from drgn_kvmwalk import find_vcpu, find_vm  # noqa: E402
from drgn_kvmwalk.console import load_kvm_debug_info, open_core  # noqa: E402
from drgn_kvmwalk.guest import HostPageTables  # noqa: E402
from drgn_kvmwalk.kvm import for_each_memslot  # noqa: E402
from drgn_kvmwalk.mmu import vcpu_walk  # noqa: E402


class ElfFile:
    """Physical addresses of an ELF core (its PT_LOAD segments) as file offsets."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loads: List[Tuple[int, int, int]] = []  # (paddr, filesz, offset)
        with open(path, "rb") as f:
            head = f.read(64)
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, p_paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize
            )
            if p_type == 1:
                self.loads.append((p_paddr, p_filesz, p_offset))

    def offset(self, pa: int) -> int:
        for paddr, size, off in self.loads:
            if paddr <= pa < paddr + size:
                return off + (pa - paddr)
        raise ValueError(f"physical address {pa:#x} is not in the dump")

    def read_u64(self, pa: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset(pa))
            return int(struct.unpack("<Q", f.read(8))[0])

    def write_u64(self, pa: int, value: int) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack("<Q", value), self.offset(pa))
        finally:
            os.close(fd)


def verify(prog: Program, pid: int) -> Dict[str, Any]:
    run: Dict[str, Any] = whole_table(prog, ["--verify", "--vm", str(pid), "--json"])
    return run


def copy_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of a script that changes a copy of a cell's ELF dump."""
    ap.add_argument("--core", required=True, help="a copy of the ELF dump, changed in place")
    ap.add_argument("-s", "--symbols", action="append", default=[])
    ap.add_argument("--truth", required=True)
    ap.add_argument("--addr-kind", choices=["gpa", "gva"], required=True)
    ap.add_argument("--out", required=True)


class Copy(NamedTuple):
    """The copy opened: by drgn, as a file, and the workload's VM and first vCPU."""

    prog: Program
    elf: ElfFile
    truth: Dict[str, Any]
    kvm: Object
    vcpu: Object


def open_copy(args: argparse.Namespace) -> Copy:
    with open(args.truth) as f:
        truth = json.load(f)
    prog = open_core(args.core)
    load_kvm_debug_info(prog, args.symbols)
    kvm = find_vm(prog, truth["pid"])
    return Copy(prog, ElfFile(args.core), truth, kvm, find_vcpu(kvm, truth["vcpus"][0]))


def write_result(out: str, results: Dict[str, Any]) -> None:
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f)
    os.rename(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    copy_args(ap)
    args = ap.parse_args()
    prog, elf, truth, kvm, vcpu = open_copy(args)
    pages = truth["pages"]
    page = pages[0]
    walk = vcpu_walk(vcpu, page[args.addr_kind])
    leaf = walk.steps[-1]
    table = leaf.sptep & ~0xFFF
    other = next(
        (truth_hpa(truth, "gpa", p["gpa"]) for p in pages[1:] if p["pfn"] != page["pfn"]), None
    )
    gfn = page["gpa"] >> 12
    slot = next(
        s
        for s in for_each_memslot(kvm)
        if s.as_id == 0 and s.base_gfn <= gfn < s.base_gfn + s.npages
    )
    assert slot.address is not None
    npages_va = slot.address + offsetof(prog.type("struct kvm_memory_slot"), "npages")
    private_va = int(pfn_to_page(prog, table >> 12).private.address_)
    hva = slot.hva + ((gfn - slot.base_gfn) << 12)
    base_mask = ((1 << 52) - 1) & ~0xFFF
    faults: List[Tuple[str, int, int, Dict[str, Any]]] = []  # name, pa, new value, expected
    if other is not None:
        faults.append(
            (
                "pfn",
                leaf.sptep,
                (leaf.spte & ~base_mask) | (other & base_mask & ~((walk.page_size or 4096) - 1)),
                {"problem": "pfn_mismatch", "sptep": leaf.sptep},
            )
        )
    host_entry = HostPageTables(prog, kvm.mm).entry(hva)
    pte_pa, pte = host_entry.pa, host_entry.value
    if leaf.spte & 2:
        faults.append(
            (
                "readonly_host",
                pte_pa,
                pte & ~2,
                {"problem": "writable_over_readonly", "sptep": leaf.sptep},
            )
        )
    npages_pa = int(follow_phys(prog["init_mm"].address_of_(), npages_va))
    faults.append(
        (
            "no_memslot",
            npages_pa,
            gfn - slot.base_gfn,
            {"problem": "no_memslot", "sptep": leaf.sptep},
        )
    )
    private_pa = int(follow_phys(prog["init_mm"].address_of_(), private_va))
    faults.append(("backpointer", private_pa, 0, {"problem": "table_backpointer", "hpa": table}))
    results: Dict[str, Any] = {"before": verify(prog, truth["pid"]), "faults": {}}
    for name, pa, value, expected in faults:
        old = elf.read_u64(pa)
        elf.write_u64(pa, value)
        try:
            got = verify(prog, truth["pid"])
        finally:
            elf.write_u64(pa, old)
        results["faults"][name] = {
            "pa": pa,
            "old": old,
            "new": value,
            "expected": expected,
            "verify": got,
        }
    results["after"] = verify(prog, truth["pid"])
    results["made"] = [name for name, *_ in faults]
    results["not_made"] = {
        **({} if other is not None else {"pfn": "no other tagged host page"}),
        **({} if leaf.spte & 2 else {"readonly_host": f"SPTE {leaf.spte:#x} is not writable"}),
    }
    write_result(args.out, results)


if __name__ == "__main__":
    main()
