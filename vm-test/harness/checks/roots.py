# SPDX-License-Identifier: LGPL-2.1-or-later
"""--root all and --root prev: the vCPU's roots."""

from __future__ import annotations

from typing import List, Optional

from ..records import AddrKind, Problem, Truth, Walk, WalkRun, pagemap_hpa, switched_cr3

ROOT_ALL = "root_all"
ROOT_PREV = "root_prev"


def check_all_roots(
    view: str, where: str, ar: Optional[WalkRun], walks: List[Walk], truth: Truth
) -> List[Problem]:
    """--root all: the current root is among the labelled roots and gives the
    same answer as the plain walk; every root is listed once."""
    if not ar or ar["rc"] != 0:
        return [Problem(view, ROOT_ALL, f"{where} --root all failed: {ar and ar['stderr']}")]
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, ROOT_ALL, f"{where} --root all: {message}"))

    recs = ar["records"]
    labels = [r.get("root") for r in recs]
    if labels.count("current") != 1 or len({r["root_hpa"] for r in recs}) != len(recs):
        problem(f"roots {labels}")
    cur = [r for r in recs if r.get("root") == "current"]
    first = walks[0] if walks else None
    if cur and first and (cur[0]["root_hpa"], cur[0]["hpa"]) != (first["root_hpa"], first["hpa"]):
        problem("the current root's walk differs from --addr's")
    if switched_cr3(truth) and not any(str(lb).startswith("prev[") for lb in labels):
        problem("no previous root, though the guest switched CR3")
    return problems


def check_prev_root(
    view: str,
    where: str,
    pr: Optional[WalkRun],
    walks: List[Walk],
    truth: Truth,
    kind: AddrKind,
) -> List[Problem]:
    """--root prev --annotate, for a guest that started on a copy of its
    top-level table and then loaded the real one (l2vmm --switch-cr3): KVM
    kept the first root in mmu->prev_roots (fast_pgd_switch()).  It is the
    one previous root, its kvm_mmu_page shadows the first CR3's table, it is
    not the current root, and through it every tagged page still reaches the
    pagemap HPA (the guest wrote every tag under both CR3s)."""
    if not switched_cr3(truth):
        return []
    if not pr or pr["rc"] != 0 or pr["stderr"]:
        return [Problem(view, ROOT_PREV, f"{where} --root prev failed: {pr and pr['stderr']}")]
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, ROOT_PREV, f"{where} --root prev: {message}"))

    recs = pr["records"]
    labels = sorted({r.get("root") for r in recs}, key=str)
    if len(labels) != 1 or not str(labels[0]).startswith("prev["):
        return [
            Problem(
                view,
                ROOT_PREV,
                f"{where} --root prev: roots {labels}, expected the one the first CR3 had",
            )
        ]
    root_sp = recs[0]["steps"][0].get("sp") if recs and recs[0]["steps"] else None
    if root_sp is None or root_sp["gfn"] != truth["first_cr3"] >> 12 or root_sp["direct"]:
        problem(
            f"root kvm_mmu_page {root_sp}, expected one "
            f"shadowing gfn {truth['first_cr3'] >> 12:#x} (the first CR3)"
        )
    if walks and recs[0]["root_hpa"] == walks[0].get("root_hpa"):
        problem("the previous root is the current one")
    if len(recs) != len(truth["pages"]):
        problem(f"{len(recs)} walks for {len(truth['pages'])} addresses")
    for rec, page in zip(recs, truth["pages"]):
        want = pagemap_hpa(page, kind)
        if rec["addr"] != page[kind] or rec["hpa"] != want:
            problem(f"{rec['addr']:#x} -> HPA {rec['hpa']}, pagemap says {want:#x}")
            break
    return problems
