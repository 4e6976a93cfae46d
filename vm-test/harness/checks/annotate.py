# SPDX-License-Identifier: LGPL-2.1-or-later
"""--annotate and --map --annotate: each table's struct kvm_mmu_page."""

from __future__ import annotations

from typing import List, Optional

from ..matrix import tdp_mmu_child_has_own_level
from ..records import CellResult, MapRange, MapRun, Problem, ShadowPage, Truth, WalkRun

ANNOTATE = "annotate"
MAP_ANNOTATE = "map_annotate"


def sp_level_ok(result: CellResult, sp: ShadowPage, level: int, root: bool) -> bool:
    """The kvm_mmu_page of a level-``level`` table has that level; except a
    TDP MMU child page on a kernel where it got its parent's level (see
    matrix.tdp_mmu_child_has_own_level)."""
    if sp["level"] == level:
        return True
    return (
        not tdp_mmu_child_has_own_level(result["release"])
        and sp["tdp_mmu"]
        and not root
        and sp["level"] == level + 1
    )


def check_annotated(
    result: CellResult, view: str, where: str, ann: Optional[WalkRun], truth: Truth
) -> List[Problem]:
    """--annotate: every table on the path has its struct kvm_mmu_page, of the
    step's level; under TDP it maps the GFN range the step covers, under
    shadow paging it shadows one of the guest's own page-table pages."""
    if not ann or ann["rc"] != 0:
        return [Problem(view, ANNOTATE, f"{where} --annotate failed: {ann and ann['stderr']}")]
    problems: List[Problem] = []
    guest_tables = {gpa >> 12 for gpa in truth["guest_pt_pages"]}
    for w in ann["records"]:
        for i, step in enumerate(w["steps"]):
            if step["kind"] == "pae_root":
                continue
            sp = step.get("sp")
            at = f"{where} --annotate {w['addr']:#x} level {step['level']}"

            def problem(message: str) -> None:
                problems.append(Problem(view, ANNOTATE, f"{at}: {message}"))  # noqa: B023

            if sp is None:
                problem("no kvm_mmu_page")
                continue
            if not sp_level_ok(result, sp, step["level"], i == 0) or sp["invalid"]:
                problem(f"kvm_mmu_page {sp}")
            if result["addr_kind"] == "gpa":
                span = 9 * step["level"]
                if not sp["direct"] or sp["gfn"] != (w["addr"] >> 12) >> span << span:
                    problem(
                        f"kvm_mmu_page gfn {sp['gfn']:#x}, direct "
                        f"{sp['direct']}: not the GFNs the table maps"
                    )
            elif not sp["direct"] and sp["gfn"] not in guest_tables:
                problem(f"kvm_mmu_page shadows gfn {sp['gfn']:#x}, not a guest page table")
            if i == 0 and sp["root_count"] < 1:
                problem(f"the root's kvm_mmu_page has root_count {sp['root_count']}")
    return problems


def _covered(records: List[MapRange]) -> List[List[int]]:
    out: List[List[int]] = []
    for r in records:
        if out and out[-1][1] == r["start"]:
            out[-1][1] = r["end"]
        else:
            out.append([r["start"], r["end"]])
    return out


def check_map_annotated(
    result: CellResult, view: str, where: str, ann: Optional[MapRun], mp: Optional[MapRun]
) -> List[Problem]:
    """--map --annotate: the same addresses as --map, each range with the
    struct kvm_mmu_page of its table, of the range's level."""
    if not ann or ann["rc"] != 0 or not mp:
        return [
            Problem(view, MAP_ANNOTATE, f"{where} --map --annotate failed: {ann and ann['stderr']}")
        ]
    problems = []
    if _covered(ann["records"]) != _covered(mp["records"]):
        problems.append(
            Problem(
                view, MAP_ANNOTATE, f"{where} --map --annotate: covers other addresses than --map"
            )
        )
    for r in ann["records"]:
        sp = r.get("sp")
        if sp is None or not sp_level_ok(result, sp, r["level"], False):
            problems.append(
                Problem(
                    view, MAP_ANNOTATE, f"{where} --map --annotate: range {r['start']:#x}: sp {sp}"
                )
            )
            break
    return problems
