# SPDX-License-Identifier: LGPL-2.1-or-later
"""What vm-test/corrupt_dumps.py records for a TDP MMU cell whose tool
survives and names every change: the healthy record the check's fault
tests (test_vm_checks.py) break one way at a time."""

from __future__ import annotations

from typing import Any, Dict, List

PID = 100
ROOT = 0x1134000
TOP_SPTE = 0x1133027
LEAF = [0x4000_1000, 0x77008, 1]  # addr, sptep, level: the one leaf before
COPIES = [1, 2, 3, 4]
TOP_LEAF_SPTEP = ROOT + 8 * 300
SHIFT = 12 + 9 * 4  # level 5
MEMSLOTS = "kvm->memslots[0]->gfn_tree"


def run(rc: int = 0, stderr: str = "", records: Any = (), **more: Any) -> Dict[str, Any]:
    return {
        "argv": [],
        "rc": rc,
        "stderr": stderr,
        "seconds": 0.1,
        "records": list(records),
        **more,
    }


def problem(name: str, **fields: Any) -> Dict[str, Any]:
    return {
        "vm": PID,
        "problem": name,
        "addr": None,
        "hpa": None,
        "sptep": None,
        "detail": "",
        **fields,
    }


def summary() -> Dict[str, Any]:
    return {"vm": PID, "checked": 1, "problems": 0, "exceptions": {}}


def stats(broken: List[str]) -> Dict[str, Any]:
    return {"vm": PID, "leaves": {"4K": 1, "2M": 0, "1G": 0}, "broken": broken}


def corrupt_dumps() -> Dict[str, Any]:
    link = 0xFFFF_8880_0010_0000
    entry = 0xFFFF_8880_0020_0000
    dump = run(leaves=[LEAF])
    list_ok = {
        "vms": [
            {
                "pid": PID,
                "vcpus": [
                    {
                        "id": 0,
                        "no_root": "mmu->root_role.level is 15, not a root level (2-5): "
                        "the kernel's memory is corrupt",
                    }
                ],
            }
        ]
    }
    vm_list_line = (
        f"warning: vm_list is corrupt: the entry at {link:#x} is linked to twice (a cycle); "
        "only the 1 VM(s) before it are read\n"
    )
    mmu_list = (
        f"kvm->arch.tdp_mmu_roots is corrupt: the entry at {entry:#x} is linked to twice (a cycle)"
    )
    role = (
        f"role.level of TDP MMU root {ROOT:#x} (struct kvm_mmu_page 0xffff888000300000) is "
        "15, not a root level (2-5): the kernel's memory is corrupt; its leaves are not counted"
    )
    leaf4 = (
        f"1 leaf SPTE at level 5 under TDP MMU root {ROOT:#x}: the page-size bit is reserved "
        "at level 5, the tables are corrupt; not counted"
    )
    repeats = "".join(
        f"warning: GPA {j << SHIFT:#x}-{(j + 1) << SHIFT:#x}: level-4 table page 0x1133000 "
        "reached a second time: KVM never links a TDP table page twice, the tables are "
        "corrupt; not walked again; its mappings are unknown\n"
        for j in COPIES
    )
    top_leaf = [300 << SHIFT, TOP_LEAF_SPTEP, 5]
    states = {
        "mmu_root_level": {
            "addr": run(
                2,
                "kvmwalk: mmu->root_role.level is 15, not a root level (2-5): the kernel's "
                "memory is corrupt\n",
                walks=[],
            ),
            "list": run(records=[list_ok]),
            "verify": run(records=[summary()]),
        },
        "sp_role_level": {
            "stats": run(0, f"warning: VM pid {PID}: {role}\n", [stats([role])]),
            "verify": run(1, "", [problem("root_level", hpa=ROOT), summary()]),
        },
        "vm_list_loop": {
            "list": run(0, vm_list_line, [{"vms": [{"pid": PID, "vcpus": []}]}]),
            "stats": run(0, vm_list_line, [stats([])]),
        },
        "memslot_loop": {
            "list": run(
                0,
                f"warning: VM pid {PID}: {MEMSLOTS} is corrupt: the entry at 0x1 is linked "
                "to twice (a cycle)\n",
                [{"vms": [{"pid": PID, "vcpus": [], "broken": [f"{MEMSLOTS} is corrupt: ..."]}]}],
            ),
            "verify": run(
                1,
                "",
                [
                    problem("corrupt_list", detail=f"{MEMSLOTS} is corrupt: ..."),
                    problem("no_memslot", sptep=LEAF[1]),
                    summary(),
                ],
            ),
        },
        "mmu_list_loop": {
            "stats": run(0, f"warning: VM pid {PID}: {mmu_list}\n", [stats([mmu_list])]),
            "verify": run(
                1, "", [problem("corrupt_list", detail=mmu_list + ": the roots..."), summary()]
            ),
        },
        "table_repeat": {
            "dump": run(0, repeats, leaves=[LEAF]),
            "verify": run(
                1,
                "",
                [*(problem("table_repeated", addr=j << SHIFT) for j in COPIES), summary()],
            ),
        },
        "top_leaf": {
            "dump": run(leaves=[top_leaf, LEAF]),
            "walk_again": run(
                walks=[[top_leaf[0], TOP_LEAF_SPTEP, 0x1133000], [LEAF[0], LEAF[1], 0x9000]]
            ),
            "stats": run(0, f"warning: VM pid {PID}: {leaf4}\n", [stats([leaf4])]),
            "verify": run(1, "", [problem("leaf_level", sptep=TOP_LEAF_SPTEP), summary()]),
        },
    }
    return {
        "facts": {
            "pid": PID,
            "vcpu": 0,
            "addr": LEAF[0],
            "root_hpa": ROOT,
            "root_level": 5,
            "direct": True,
            "tdp_mmu": True,
            "vm_list_link": link,
            "memslot_what": MEMSLOTS,
            "mmu_list": "tdp_mmu_roots",
            "mmu_list_entry": entry,
            "top": {"level": 5, "index": 0, "table": ROOT, "spte": TOP_SPTE},
            "repeat_indexes": COPIES,
            "top_leaf_sptep": TOP_LEAF_SPTEP,
        },
        "before": {"dump": dump},
        "after": {"dump": run(leaves=[LEAF])},
        "states": {name: {"changes": [], "runs": runs} for name, runs in states.items()},
        "flips": [
            {
                "what": "level-1 table page 0x77000",
                "pa": 0x77010,
                "bit": 11,
                "old": 0x9067,
                "runs": {
                    "dump": run(leaves=[LEAF]),
                    "stats": run(records=[stats([])]),
                    "verify": run(1, "", [problem("no_memslot"), summary()]),
                },
                "reference": {"leaves": [LEAF], "skipped": []},
            },
            {
                "what": "kvm->vm_list.next",
                "pa": 0x5000,
                "bit": 3,
                "old": 0,
                "runs": {
                    "dump": run(2, "kvmwalk: cannot read the target's memory: ...\n"),
                    "stats": run(0, "warning: vm_list is corrupt: ...\n", []),
                    "verify": run(records=[summary()]),
                },
                "reference": None,
            },
        ],
        "made": list(states),
        "not_made": {},
        "seconds": 3.0,
    }
