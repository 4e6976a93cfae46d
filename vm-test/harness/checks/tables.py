# SPDX-License-Identifier: LGPL-2.1-or-later
"""The whole-table views of each view, against the workload's own records:
--list (vmlist.py), --stats (stats.py), --annotate and --map --annotate
(annotate.py), --root all and --root prev (roots.py), --map and --dump
(maps.py)."""

from __future__ import annotations

from typing import List

from ..matrix import VIEWS
from ..records import CellResult, Problem, each_view
from .annotate import check_annotated, check_map_annotated
from .maps import check_map
from .roots import check_all_roots, check_prev_root
from .stats import STATS, check_stats
from .vcpustate import check_vcpu_state
from .vmlist import LIST, check_list


def check_whole_tables(result: CellResult) -> List[Problem]:
    """--list, --map, --dump and --stats against the workload's own records.

    --list: the VM, its vCPUs with the root each walk started from, and its
    memslots exactly as the VMM created them.  --map: every range translates,
    byte for byte, as the guest's tables (shadow paging) and the host's
    pagemap say, and every tagged page is in a range.  --dump: the same
    leaves as --map, each inside its range.  --stats: the leaves counted in
    all of the VM's tables equal KVM's own counters.  --root prev: a guest
    that switched CR3 still translates through its first root.
    """
    problems: List[Problem] = []
    kind = result["addr_kind"]
    for view, v in each_view(result, VIEWS):
        lst = v.get("list") or {}
        if lst.get("rc") != 0:
            problems.append(Problem(view, LIST, f"{view} --list failed: {lst.get('stderr')}"))
            continue
        vms = {vm["pid"]: vm for vm in lst.get("vms") or []}
        stats = v.get("stats") or {}
        if stats.get("rc") != 0 or stats.get("stderr"):
            problems.append(Problem(view, STATS, f"{view} --stats failed: {stats.get('stderr')}"))
        by_pid = {r["vm"]: r for r in stats.get("records", [])}
        for name, truth in result["truth"].items():
            wl = v["workloads"][name]
            problems += check_stats(result, view, name, by_pid.get(truth["pid"]), wl)
            where = f"{view} {name}"
            vm = vms.get(truth["pid"])
            if vm is None:
                problems.append(
                    Problem(view, LIST, f"{where} --list: no VM with pid {truth['pid']}")
                )
                continue
            problems += check_list(result, view, name, where, vm, truth, wl)
            problems += check_vcpu_state(view, where, vm, truth)
            for vcpu in truth["vcpus"]:
                r = wl["vcpus"].get(str(vcpu), {})
                at = f"{where} vcpu {vcpu}"
                walks = r.get("walks") or []
                problems += check_annotated(result, view, at, r.get("annotated"), truth)
                problems += check_all_roots(view, at, r.get("all_roots"), walks, truth)
                problems += check_prev_root(view, at, r.get("prev_root"), walks, truth, kind)
                problems += check_map_annotated(
                    result, view, at, r.get("map_annotated"), r.get("map")
                )
                problems += check_map(
                    view,
                    at,
                    r.get("map"),
                    r.get("dump"),
                    truth,
                    truth["pages"],
                    kind,
                    live=view == "live",
                )
    return problems
