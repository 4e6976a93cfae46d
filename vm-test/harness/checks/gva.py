# SPDX-License-Identifier: LGPL-2.1-or-later
"""--gva: every tagged GVA of both vCPUs, through the guest's tables and
KVM's, against what the workload built and what pagemap says.

The ground truth: the workload's own GVA -> GPA (``pages``), its CR3s and
page-table pages (``cr3``, ``first_cr3``, ``guest_pt_pages``), the host PFN
of every memslot page (``host_runs``, from /proc/self/pagemap) and the tag
the guest wrote at each page."""

from __future__ import annotations

import json
from typing import List, Optional

from ..matrix import VIEWS
from ..records import (
    CellResult,
    GvaRun,
    GvaWalk,
    Page,
    Problem,
    TextRun,
    Truth,
    each_vcpu_runs,
    host_hpa,
    pagemap_hpa,
)

GVA = "gva"

SIZE_4K, SIZE_2M, SIZE_1G = 4 << 10, 2 << 20, 1 << 30
GUEST_LEVELS = {"64": 4, "pae": 3, "32": 2}


def expected_size(truth: Truth, page: Page) -> int:
    """The smaller of the guest's page and the host's (which KVM's leaves
    follow: a 1 GiB hugetlbfs page, a THP, or 4K)."""
    backing = {s["slot"]: s.get("backing", "anon") for s in truth["memslots"]}[page["slot"]]
    host = SIZE_1G if backing == "hugetlb1g" else SIZE_2M if page.get("host_thp") else SIZE_4K
    return min(host, guest_size(truth, page))


def guest_size(truth: Truth, page: Page) -> int:
    return SIZE_2M if truth.get("guest_2m") and page["slot"] == 1 else SIZE_4K


def check_gva_record(
    result: CellResult,
    view: str,
    where: str,
    w: Optional[GvaWalk],
    page: Page,
    truth: Truth,
    cr3: int,
) -> List[str]:
    """What is wrong with one --gva record (messages)."""
    if w is None:
        return ["not walked"]
    msgs = []
    shadow = result["addr_kind"] == "gva"
    if view == "kdump" and result.get("dump_level", 31) & 8:
        # makedumpfile -d with 8 drops user pages, the guest's tables among
        # them: the walk must end there and say so, inventing nothing.
        if w["gpa"] is not None or w["hpa"] is not None:
            return [f"GPA {w['gpa']} HPA {w['hpa']} from a dump without the guest's tables"]
        if w["stop_in"] != "guest" or "cannot be read" not in (w["stop"] or ""):
            return [f"stopped in {w['stop_in']}: {w['stop']!r}, not at an unreadable guest table"]
        return []
    if w["cr3"] != cr3:
        msgs.append(f"CR3 {w['cr3']:#x}, the guest's is {cr3:#x}")
    level = GUEST_LEVELS[truth.get("guest_paging", "64")]
    if w["guest_level"] != level:
        msgs.append(f"guest paging level {w['guest_level']}, expected {level}")
    steps = w["guest_steps"]
    if [s["level"] for s in steps] != list(range(level, level - len(steps), -1)) or not steps:
        msgs.append(f"guest levels {[s['level'] for s in steps]}")
    tables = set(truth["guest_pt_pages"])
    for s in steps:
        if s["gpa"] & ~0xFFF not in tables:
            msgs.append(f"guest level {s['level']} entry at GPA {s['gpa']:#x}: no table page")
        if s["source"] == "memory":
            want = host_hpa(truth, s["gpa"])
            if s["hpa"] != want:
                msgs.append(
                    f"guest level {s['level']} entry GPA {s['gpa']:#x}: HPA {s['hpa']}, "
                    f"pagemap says {want}"
                )
    if steps and steps[0]["gpa"] & ~0xFFF != cr3 & ~0xFFF:
        msgs.append(f"the walk starts at GPA {steps[0]['gpa']:#x}, not in CR3's page")
    if w["gpa"] != page["gpa"]:
        msgs.append(f"GPA {w['gpa']}, the guest maps it to {page['gpa']:#x}")
    if w["guest_page_size"] != guest_size(truth, page):
        msgs.append(f"guest page size {w['guest_page_size']}, expected {guest_size(truth, page)}")
    hpa = pagemap_hpa(page, "gva")
    if w["hpa"] != hpa:
        msgs.append(f"HPA {w['hpa']} ({w['stop']}), pagemap says {hpa:#x}")
    elif w["page_size"] != expected_size(truth, page):
        msgs.append(f"page size {w['page_size']}, expected {expected_size(truth, page)}")
    # Under shadow paging the shadow root shadows the vCPU's own CR3 only.
    if w["spte_hpa"] != hpa and (not shadow or cr3 == truth["cr3"]):
        what = "the shadow root's walk of the GVA" if shadow else "the SPTE walk of the GPA"
        msgs.append(f"{what} gives {w['spte_hpa']}, pagemap says {hpa:#x}")
    if w["hpa_source"] != ("memslot" if shadow else "spte"):
        msgs.append(f"hpa_source {w['hpa_source']}")
    if w["mismatch"] is not None:
        msgs.append(f"mismatch reported on a healthy guest: {w['mismatch']}")
    tag = w.get("tag_at_hpa")
    if tag is None and "tag_at_hpa" in w and w["hpa"] == hpa:
        if view != "kdump" or result.get("dump_level", 31) & 8 == 0:
            msgs.append(f"HPA {hpa:#x} not readable in this view")
    elif tag is not None and tag != page["tag"]:
        msgs.append(f"{tag:#x} at HPA, the tag is {page['tag']:#x}")
    return msgs


def check_gva_run(
    result: CellResult, view: str, where: str, run: Optional[GvaRun], truth: Truth, cr3: int
) -> List[Problem]:
    if not run or run["rc"] != 0 or run["stderr"]:
        return [Problem(view, GVA, f"{where}: --gva failed: {json.dumps(run)[:2000]}")]
    problems = []
    records = run["records"]
    if len(records) != len(truth["pages"]):
        problems.append(Problem(view, GVA, f"{where}: {len(records)} records"))
    for w, page in zip(records, truth["pages"]):
        if w["addr"] != page["gva"]:
            problems.append(Problem(view, GVA, f"{where}: record for {w['addr']:#x} out of order"))
            continue
        for m in check_gva_record(result, view, where, w, page, truth, cr3):
            problems.append(Problem(view, GVA, f"{where} gva {page['gva']:#x}: {m}"))
    return problems


def check_gva_text(
    result: CellResult, view: str, where: str, run: Optional[TextRun], truth: Truth
) -> List[Problem]:
    """The text of the first two GVAs: their GPA and HPA lines (in a dump
    without the guest's tables, where the walk stopped)."""
    if not run or run["rc"] != 0 or run["stderr"]:
        return [Problem(view, GVA, f"{where}: --gva (text) failed: {run}")]
    problems = []
    no_tables = view == "kdump" and result.get("dump_level", 31) & 8
    for page in truth["pages"][:2]:
        for want in (
            (f"GVA {page['gva']:#x}\n", "cannot be read")
            if no_tables
            else (
                f"GVA {page['gva']:#x}\n",
                f"=> GPA {page['gpa']:#x} (",
                f"=> HPA {pagemap_hpa(page, 'gva'):#x} (",
            )
        ):
            if want not in run["stdout"]:
                problems.append(Problem(view, GVA, f"{where}: --gva text lacks {want!r}"))
    return problems


def check_gvas(result: CellResult) -> List[Problem]:
    """Every view, workload and vCPU: --gva of every tagged GVA from the
    guest's CR3, and, for a guest that switched CR3, from its first CR3."""
    problems: List[Problem] = []
    for view, _, truth, _, r, where in each_vcpu_runs(result, VIEWS):
        problems += check_gva_run(result, view, where, r.get("gva"), truth, truth["cr3"])
        problems += check_gva_text(result, view, where, r.get("gva_text"), truth)
        if truth["first_cr3"] != truth["cr3"]:
            problems += check_gva_run(
                result,
                view,
                f"{where} --cr3 first_cr3",
                r.get("gva_first_cr3"),
                truth,
                truth["first_cr3"],
            )
    return problems
