# SPDX-License-Identifier: LGPL-2.1-or-later
"""--stats: the leaves counted in all of a VM's tables equal KVM's own
counters, and every table page is counted."""

from __future__ import annotations

from typing import List, Optional

from ..matrix import tdp_mmu_counts_lpages
from ..records import CellResult, Problem, StatsRecord, WorkloadRun

STATS = "stats"


def check_stats(
    result: CellResult, view: str, name: str, st: Optional[StatsRecord], walked: WorkloadRun
) -> List[Problem]:
    """One workload's VM in --stats (``st``, None when --stats has none)."""
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, STATS, f"{view} {name} --stats: {message}"))

    # The TDP MMU's large pages in lpages: see matrix.tdp_mmu_counts_lpages.
    old_lpages = result["mode"] == "tdp_mmu" and not tdp_mmu_counts_lpages(result["release"])
    if st is not None and old_lpages and name in ("thp", "1g"):
        if st["differences"] != ["lpages"] or len(st.get("notes") or []) != 1:
            problem(f"the 5.10 lpages gap is not flagged and explained: {st}")
    elif st is None or not st["match"]:
        problem(f"leaves and KVM's counters differ: {st}")
    # Every table page is counted, the TDP MMU's too: at least the
    # pages that hold --dump's leaves, and a root above them.
    leaf_tables = {
        rec["sptep"] >> 12
        for r in walked["vcpus"].values()
        for rec in (r.get("dump") or {}).get("records", [])
    }
    if st is not None and st["tables"] < len(leaf_tables) + 1:
        problem(
            f"{st['tables']} table pages read, but --dump's leaves lie in "
            f"{len(leaf_tables)} table pages under a root"
        )
    return problems
