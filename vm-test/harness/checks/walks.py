# SPDX-License-Identifier: LGPL-2.1-or-later
"""The walks: for each view, workload, vCPU and tagged page, kvmwalk --addr
against the ground truth."""

from __future__ import annotations

import json
from typing import List, Optional

from ..matrix import VIEWS
from ..records import CellResult, Page, Problem, Truth, Walk, pagemap_hpa

RESULT = "result"  # the view gave a result at all
WALK = "walk"  # one --addr walk against the truth

SIZE_4K, SIZE_2M, SIZE_1G = 4 << 10, 2 << 20, 1 << 30


def expected_page_size(result: CellResult, truth: Truth, page: Page) -> int:
    """The leaf size KVM must use for ``page``, from how the workload backs it.

    Under TDP the leaf follows the host mapping (slot 1's GPA and HVA are
    aligned to 1 GiB, so nothing else limits it): a 1 GiB hugetlbfs page gives
    1G leaves, a page the host backs with a THP (``/proc/kpageflags``) 2M ones.
    Under shadow paging the leaf is also bounded by the guest's own page: 2M
    where the guest maps the page with a 2 MiB page over a huge host page,
    otherwise 4K.
    """
    backing = {s["slot"]: s.get("backing", "anon") for s in truth["memslots"]}[page["slot"]]
    host = SIZE_1G if backing == "hugetlb1g" else SIZE_2M if page.get("host_thp") else SIZE_4K
    if result["addr_kind"] == "gpa":
        return host
    guest = SIZE_2M if truth.get("guest_2m") and page["slot"] == 1 else SIZE_4K
    return min(host, guest)


def check_walks(result: CellResult) -> List[Problem]:
    """Every mismatch between the tool's walks and the ground truth.

    For each view, workload, vCPU and tagged page: the walk succeeded from a
    root of the expected kind and level (entered through pae_root for a PAE
    root), the HPA is the pagemap PFN plus the page offset, the leaf size is
    what the backing gives, and, where the view holds the page, the 8 bytes at
    that HPA are the tag the guest wrote.
    """
    problems: List[Problem] = []
    kind = result["addr_kind"]
    expect_mmu = "shadow" if kind == "gva" else "tdp"
    for view in VIEWS:
        v = result["views"].get(view)
        if v is None or "error" in v:
            problems.append(Problem(view, RESULT, f"{view}: no result: {json.dumps(v)[:2000]}"))
            continue
        for name, truth in result["truth"].items():
            wl = v["workloads"].get(name)
            if wl is None:
                problems.append(Problem(view, WALK, f"{view} {name}: not walked"))
                continue
            for vcpu in truth["vcpus"]:
                r = wl["vcpus"].get(str(vcpu))
                if r is None or r["rc"] != 0:
                    problems.append(
                        Problem(
                            view,
                            WALK,
                            f"{view} {name} vcpu {vcpu}: kvmwalk failed: {r and r['stderr']}",
                        )
                    )
                    continue
                walks = {w["addr"]: w for w in r["walks"]}
                for page in truth["pages"]:
                    problems += check_page(
                        result,
                        view,
                        f"{view} {name} vcpu {vcpu}",
                        walks.get(page[kind]),
                        page,
                        mmu=expect_mmu,
                        root_level=result["root_levels"][name],
                        page_size=expected_page_size(result, truth, page),
                    )
    return problems


def check_page(
    result: CellResult,
    view: str,
    where: str,
    w: Optional[Walk],
    page: Page,
    mmu: str,
    root_level: int,
    page_size: int,
) -> List[Problem]:
    """One walk of one tagged page against what it must give."""
    kind = result["addr_kind"]
    where = f"{where} {kind} {page[kind]:#x}"

    def problem(message: str) -> Problem:
        return Problem(view, WALK, f"{where}: {message}")

    if w is None:
        return [problem("not walked")]
    problems = []
    if w["mmu"] != mmu:
        problems.append(problem(f"mmu {w['mmu']}, expected {mmu}"))
    if w["root_level"] != root_level:
        problems.append(problem(f"root_level {w['root_level']}, expected {root_level}"))
    first = w["steps"][0]["kind"] if w["steps"] else None
    if (first == "pae_root") != (root_level == 3):
        problems.append(problem(f"first step is {first!r} under a {root_level}-level root"))
    hpa = pagemap_hpa(page, kind)
    got_hpa = w["hpa"]
    tag = w["tag_at_hpa"]
    if got_hpa != hpa:
        got = "unmapped (" + str(w["stop"]) + ")" if got_hpa is None else hex(got_hpa)
        problems.append(problem(f"HPA {got}, pagemap says {hpa:#x}"))
    elif w["page_size"] != page_size:
        problems.append(problem(f"{w['page_size']:#x}-byte leaf, expected {page_size:#x}"))
    elif tag is None:
        if view != "kdump" or result.get("dump_level", 31) & 8 == 0:
            # only makedumpfile -d with 8 drops user pages
            problems.append(problem(f"HPA {hpa:#x} not readable in this view"))
    elif tag != page["tag"]:
        problems.append(problem(f"{tag:#x} at HPA, tag is {page['tag']:#x}"))
    return problems
