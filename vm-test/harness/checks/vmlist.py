# SPDX-License-Identifier: LGPL-2.1-or-later
"""--list: the VM, its vCPUs with the root each walk started from, and its
memslots exactly as the VMM created them."""

from __future__ import annotations

from typing import List

from ..records import CellResult, ListVm, Problem, Truth, WorkloadRun

LIST = "list"


def check_list(
    result: CellResult,
    view: str,
    name: str,
    where: str,
    vm: ListVm,
    truth: Truth,
    walked: WorkloadRun,
) -> List[Problem]:
    """One workload's VM in --list against its truth and its walks."""
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, LIST, f"{where} --list: {message}"))

    want_mmu = "shadow" if result["addr_kind"] == "gva" else "npt"
    want_tdp_mmu = result["mode"] == "tdp_mmu"
    if (vm["mmu"], vm["tdp_mmu"]) != (want_mmu, want_tdp_mmu):
        problem(f"mmu {vm['mmu']} tdp_mmu {vm['tdp_mmu']}, expected {want_mmu} {want_tdp_mmu}")
    if vm["stats_id"] not in (None, f"kvm-{truth['pid']}"):
        problem(f"stats_id {vm['stats_id']}")
    if sorted(c["id"] for c in vm["vcpus"]) != sorted(truth["vcpus"]):
        problem(f"vCPUs {[c['id'] for c in vm['vcpus']]}")
    for c in vm["vcpus"]:
        walks = walked["vcpus"].get(str(c["id"]), {}).get("walks") or [{}]
        want = (walks[0].get("root_hpa"), result["root_levels"][name], result["addr_kind"] == "gpa")
        got = (c["root_hpa"], c["root_level"], c["direct"])
        if got != want:
            problem(f"vCPU {c['id']} root {got}, the walk used {want}")
    want_slots = sorted(
        (m["as_id"], m["slot"], m["gpa"] >> 12, m["size"] >> 12, m["hva"], m["flags"])
        for m in truth["memslots"]
    )
    got_slots = sorted(
        (m["as_id"], m["id"], m["base_gfn"], m["npages"], m["hva"], m["flags"])
        for m in vm["memslots"]
    )
    if got_slots != want_slots:
        problem(f"memslots {got_slots}, the VMM made {want_slots}")
    return problems
