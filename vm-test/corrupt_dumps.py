# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel state corrupted on purpose in a copy of a real ELF dump: what the
tool must survive and name.

    python3 vm-test/corrupt_dumps.py --core COPY.elf -s vmlinux -s kvm.ko \\
        --truth truth.json --out corrupt.json

Like vm-test/fault_dumps.py (and on the same copy, after it), one change at
a time, put back after each; each state gets the actions it concerns, run
in this one drgn process (whole_table: exit status, stderr, JSON records).
The changes, located with drgn in the dump itself, all about the workload's
VM and its first vCPU's current root:

- ``mmu_root_level``: the vCPU MMU's root level (``root_role.level``, or
  ``shadow_root_level`` on 5.10) made 15;
- ``sp_role_level``: ``role.level`` of the root's struct kvm_mmu_page made 15;
- ``vm_list_loop``: the VM's ``kvm->vm_list.next`` pointed at itself;
- ``memslot_loop``: the leftmost node of address space 0's memslot tree
  linked back to the tree's top (``rb_left``), or on 5.10 ``used_slots``
  made larger than the memslot array;
- ``mmu_list_loop``: the first page on ``kvm->arch.tdp_mmu_roots`` (TDP MMU)
  or ``active_mmu_pages`` (legacy MMU) linked to itself (``link.next``);
- ``table_repeat``: the root's entry on the path of the first tagged page
  copied into 4 empty entries of the root (a TDP table linked 5 times; under
  shadow paging one shadow page with 5 parents, which is legitimate);
- ``top_leaf``: that entry with the page-size bit set, copied into entry
  300 of the root (a leaf at level 4 or 5, in the upper half of the table:
  canonical GVAs under shadow paging).

Then ``--flips`` random bit flips (``--seed``), one at a time: in entries
of the root's table pages, with the reference walk of vm-test/fuzz.py of
the flipped tables (read from the file, not through drgn) beside --dump;
and in kernel fields that steer the walk (the root's role word and
``link.next``, ``kvm->vm_list.next``).

The states are judged in harness/checks/corrupt.py; this records what was
changed and what the tool said, and the facts located to judge it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzz  # noqa: E402
from check_views import whole_table  # noqa: E402
from drgn import Object, Program, sizeof  # noqa: E402
from drgn.helpers.linux.mm import follow_phys  # noqa: E402
from fault_dumps import ElfFile, copy_args, open_copy, write_result  # noqa: E402

from drgn_kvmwalk.mmu import (  # noqa: E402
    _mmu_layout,
    for_each_active_mmu_page,
    for_each_tdp_mmu_root,
    mmu_info,
    to_shadow_page,
    vcpu_walk,
)
from drgn_kvmwalk.sptefmt import spte_format  # noqa: E402
from drgn_kvmwalk.walk import PhysMemError, Root  # noqa: E402

PS = 1 << 7
REPEATS = 4
TOP_LEAF_INDEX = 300

# One change: (physical address of a u64, its new value), several when needed.
Change = List[Tuple[int, int]]


def phys(prog: Program, va: int) -> int:
    return int(follow_phys(prog["init_mm"].address_of_(), va))


def bits_change(prog: Program, elf: ElfFile, obj: Object, value: int) -> Change:
    """The u64 holding a (bit-)field of ``obj`` with the field made ``value``."""
    va = int(obj.address_)
    bit = (va & 7) * 8 + (obj.bit_offset_ or 0)
    width = obj.bit_field_size_ or 8 * sizeof(obj)
    word = va & ~7
    assert bit + width <= 64, (bit, width)
    pa = phys(prog, word)
    old = elf.read_u64(pa)
    mask = ((1 << width) - 1) << bit
    return [(pa, (old & ~mask) | (value << bit))]


def _path_obj(mmu: Object, path: Tuple[str, ...]) -> Object:
    obj = mmu[0]
    for name in path:
        obj = obj.member_(name)
    return obj


def runs(prog: Program, argv: Dict[str, List[str]]) -> Dict[str, Any]:
    return {name: slim(whole_table_safe(prog, a)) for name, a in argv.items()}


def slim(run: Dict[str, Any]) -> Dict[str, Any]:
    """--dump's records as [addr, sptep, level], --addr's as [addr, sptep
    of the last step, hpa]: what the checks compare, a fraction of the size."""
    recs = run["records"]
    if "--dump" in run["argv"]:
        run["records"] = None
        run["leaves"] = [[r["addr"], r["sptep"], r["level"]] for r in recs]
    elif "--addr" in run["argv"]:
        run["records"] = None
        run["walks"] = [[r["addr"], r["steps"][-1]["sptep"], r["hpa"]] for r in recs]
        run["argv"] = run["argv"][:8]  # not every address again
    return run


def whole_table_safe(prog: Program, argv: List[str]) -> Dict[str, Any]:
    """whole_table, with stdout that is not JSON Lines recorded, not raised."""
    try:
        return dict(whole_table(prog, argv), argv=argv)
    except json.JSONDecodeError as e:
        return {"argv": argv, "rc": None, "stderr": f"stdout is not JSON Lines: {e}", "records": []}


class ElfMem:
    """Host physical memory read from the ELF file itself, not through
    drgn: what the reference walk of vm-test/fuzz.py reads."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.fd = os.open(elf.path, os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes:
        try:
            off = self.elf.offset(address)
            self.elf.offset(address + size - 1)
        except ValueError:
            raise PhysMemError(address) from None
        return os.pread(self.fd, size, off)


def _table_pages(elf: ElfFile, fmt: Any, root: Root) -> List[Tuple[int, int]]:
    """(HPA, level) of the table pages under the root (the reference's walk)."""
    found: List[Tuple[int, int]] = []
    mem = ElfMem(elf)

    def walk(table: int, level: int) -> None:
        found.append((table, level))
        if level == 1 or len(found) > 4096:
            return
        try:
            data = mem.read(table, 4096)
        except PhysMemError:
            return
        for spte in struct.unpack("<512Q", data):
            if fuzz.present(fmt, spte) and not fuzz.last(spte, level):
                walk(spte & fmt.base_addr_mask, level - 1)

    if fuzz.start_level(root) == 3:
        return found  # PAE roots: the pae_root page is no table page of KVM's
    walk(root.hpa & fmt.base_addr_mask, root.level)
    return found


def flips(
    prog: Program,
    elf: ElfFile,
    kvm: Object,
    root: Root,
    facts: Dict[str, Any],
    vm: List[str],
    vc: List[str],
    seed: int,
    count: int,
) -> List[Dict[str, Any]]:
    """``count`` random bit flips, one at a time, each put back after: in
    the entries of the root's table pages (then --dump must give exactly the
    leaves of the reference walk of the flipped tables) and in the kernel
    fields that steer the walk (the root's struct kvm_mmu_page role word,
    the vCPU MMU's root level and root HPA, the VM's list links)."""
    rng = random.Random(seed)
    fmt = spte_format(kvm)
    pages = _table_pages(elf, fmt, root)
    fields: List[Tuple[str, int]] = []  # (what, physical address of a u64)
    sp = to_shadow_page(prog, root.hpa)
    if sp is not None:
        fields.append(
            ("role word of the root's kvm_mmu_page", phys(prog, int(sp.sp.role.address_) & ~7))
        )
        fields.append(
            ("link.next of the root's kvm_mmu_page", phys(prog, int(sp.sp.link.next.address_)))
        )
    fields.append(("kvm->vm_list.next", phys(prog, int(kvm.vm_list.next.address_))))
    done: List[Dict[str, Any]] = []
    for _ in range(count):
        if pages and rng.random() < 0.75:
            table, level = rng.choice(pages)
            pa = table + 8 * rng.randrange(512)
            what = f"level-{level} table page {table:#x}"
        else:
            what, pa = rng.choice(fields)
        bit = rng.randrange(64)
        old = elf.read_u64(pa)
        elf.write_u64(pa, old ^ (1 << bit))
        try:
            got = runs(
                prog,
                {
                    "dump": [*vc, "--dump", "--json", "--max-tables", "100000"],
                    "stats": [*vm, "--stats", "--json"],
                    "verify": [*vm, "--verify", "--json"],
                },
            )
            ref = None
            if what.startswith("level-"):
                leaves, skips = fuzz.ref_leaves(ElfMem(elf), fmt, root, 100_000)
                ref = {"leaves": [list(x) for x in leaves], "skipped": [list(x) for x in skips]}
        finally:
            elf.write_u64(pa, old)
        done.append({"what": what, "pa": pa, "bit": bit, "old": old, "runs": got, "reference": ref})
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    copy_args(ap)
    ap.add_argument("--seed", type=int, default=1, help="of the bit flips (default 1)")
    ap.add_argument("--flips", type=int, default=24, help="random bit flips (default 24)")
    args = ap.parse_args()
    prog, elf, truth, kvm, vcpu = open_copy(args)
    pid = truth["pid"]
    vcpu_id = truth["vcpus"][0]
    info = mmu_info(vcpu)
    root = info.root
    addr = truth["pages"][0][args.addr_kind]
    vm, vc = ["--vm", str(pid)], ["--vm", str(pid), "--vcpu", str(vcpu_id)]
    facts: Dict[str, Any] = {
        "pid": pid,
        "vcpu": vcpu_id,
        "addr": addr,
        "root_hpa": root.hpa,
        "root_level": root.level,
        "direct": root.direct,
        "tdp_mmu": info.tdp_mmu,
    }
    changes: Dict[str, Change] = {}
    not_made: Dict[str, str] = {}

    # The vCPU MMU's root level.
    level_obj = _path_obj(info.mmu, _mmu_layout(info.mmu).root_level)
    changes["mmu_root_level"] = bits_change(prog, elf, level_obj, 15)
    # role.level of the root's struct kvm_mmu_page.
    sp = to_shadow_page(prog, root.hpa)
    if sp is None:
        not_made["sp_role_level"] = "the root has no struct kvm_mmu_page"
    else:
        changes["sp_role_level"] = bits_change(prog, elf, sp.sp.role.level, 15)
        facts["root_sp"] = sp.address
    # The VM's vm_list link pointed at itself.
    link = int(kvm.vm_list.address_)
    changes["vm_list_loop"] = [(phys(prog, link), link)]
    facts["vm_list_link"] = link
    # The first page of the MMU's list linked to itself.
    name = "tdp_mmu_roots" if info.tdp_mmu else "active_mmu_pages"
    pages = for_each_tdp_mmu_root(kvm) if info.tdp_mmu else for_each_active_mmu_page(kvm)
    first = next(iter(pages), None)
    facts["mmu_list"] = name
    if first is None:
        not_made["mmu_list_loop"] = f"kvm->arch.{name} is empty"
    else:
        first_link = int(first.link.address_)
        changes["mmu_list_loop"] = [(phys(prog, first_link), first_link)]
        facts["mmu_list_entry"] = first_link
    # The memslots of address space 0: a tree node linked back to the root
    # (v5.17+), or more used slots than the array holds (before).
    slots = kvm.memslots[0]
    try:
        slots.node_idx.read_()
    except AttributeError:
        used = slots.used_slots
        room = slots.memslots.type_.length or slots.id_to_index.type_.length
        changes["memslot_loop"] = bits_change(prog, elf, used, room + 1000)
        facts["memslot_what"] = "kvm->memslots[0]->used_slots"
    else:
        top_node = slots.gfn_tree.rb_node.read_()
        node = top_node
        while node.rb_left.value_():
            node = node.rb_left.read_()
        at = int(node.rb_left.address_)
        changes["memslot_loop"] = [(phys(prog, at), top_node.value_())]
        facts["memslot_what"] = "kvm->memslots[0]->gfn_tree"
    # The root's entry on the path of the first tagged page.
    walk = vcpu_walk(vcpu, addr)
    top = next(s for s in walk.steps if not s.pae_root)
    facts["top"] = {"level": top.level, "index": top.index, "table": top.table, "spte": top.spte}
    table = [elf.read_u64(top.table + 8 * i) for i in range(512)]
    present = {i for i, e in enumerate(table) if e & 1}
    # Empty: 0, or SHADOW_NONPRESENT_VALUE (bit 63, since v6.10).
    free = [i for i in range(512) if table[i] in (0, 1 << 63) and i != TOP_LEAF_INDEX]
    if top.level < 4:
        not_made["table_repeat"] = not_made["top_leaf"] = (
            f"the walk starts at level {top.level} (a PAE root): no top table of KVM's"
        )
    else:
        # Where the page of the first tag is: the same half of the table, so
        # that the copies translate addresses of the same kind.
        same_half = [i for i in free if (i >= 256) == (top.index >= 256)]
        slots = same_half[:REPEATS]
        if len(slots) < REPEATS:
            not_made["table_repeat"] = f"only {len(slots)} empty entries in the root"
        else:
            changes["table_repeat"] = [(top.table + 8 * i, top.spte) for i in slots]
            facts["repeat_indexes"] = slots
        if table[TOP_LEAF_INDEX] not in (0, 1 << 63):
            not_made["top_leaf"] = f"entry {TOP_LEAF_INDEX} of the root is in use"
        else:
            changes["top_leaf"] = [(top.table + 8 * TOP_LEAF_INDEX, top.spte | PS)]
            facts["top_leaf_sptep"] = top.table + 8 * TOP_LEAF_INDEX
    facts["root_present_entries"] = len(present)

    actions = {
        "mmu_root_level": {
            "addr": [*vc, "--addr", hex(addr), "--json"],
            "list": ["--list", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
        "sp_role_level": {
            "stats": [*vm, "--stats", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
        "vm_list_loop": {"list": ["--list", "--json"], "stats": ["--stats", "--json"]},
        "memslot_loop": {
            "list": [*vm, "--list", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
        "mmu_list_loop": {
            "stats": [*vm, "--stats", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
        "table_repeat": {
            "dump": [*vc, "--dump", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
        "top_leaf": {
            "dump": [*vc, "--dump", "--json"],
            "stats": [*vm, "--stats", "--json"],
            "verify": [*vm, "--verify", "--json"],
        },
    }
    results: Dict[str, Any] = {
        "facts": facts,
        "before": runs(prog, {"dump": [*vc, "--dump", "--json"]}),
        "states": {},
        "not_made": not_made,
    }
    for fault, change in changes.items():
        old = [(pa, elf.read_u64(pa)) for pa, _ in change]
        for pa, value in change:
            elf.write_u64(pa, value)
        try:
            got = runs(prog, actions[fault])
            if fault == "top_leaf":
                # Every address --dump printed walks again to the same SPTE.
                addrs = [leaf[0] for leaf in got["dump"].get("leaves") or []]
                again: List[str] = [*vc, "--json"]
                for a in addrs:
                    again += ["--addr", hex(a)]
                got["walk_again"] = slim(whole_table_safe(prog, again)) if addrs else None
        finally:
            for pa, value in old:
                elf.write_u64(pa, value)
        results["states"][fault] = {
            "changes": [{"pa": pa, "old": o, "new": v} for (pa, v), (_, o) in zip(change, old)],
            "runs": got,
        }
    results["flips"] = flips(prog, elf, kvm, root, facts, vm, vc, args.seed, args.flips)
    results["after"] = runs(prog, {"dump": [*vc, "--dump", "--json"]})
    results["made"] = list(changes)
    write_result(args.out, results)


if __name__ == "__main__":
    main()
