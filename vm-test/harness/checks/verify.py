# SPDX-License-Identifier: LGPL-2.1-or-later
"""--verify and --hpa against the workload's own records.

--verify: no problem in the healthy VMs of the cell, every leaf counted: at
least each leaf --dump gave under each vCPU's root, and (in a dump, which
does not change) exactly as many as KVM's own counters
(``kvm->stat.pages_4k/2m/1g``, read by --stats; kernels before v5.15 count
only large pages, so there the leaves --stats counted).  The only named
exceptions a quiet VM may have are the kernel's own ways (TDP MMU pages
with their parent's level before v5.14, stale MMIO SPTEs, invalid roots).

--hpa: each tagged page's HPA by the pagemap names the workload's VM and,
under every root that maps it, exactly the guest address the ground truth
gives (the GPA under TDP; under shadow paging a GVA that the guest's tables
send to that GPA), and its GFN; a leaf table page of a walk is a table
page of that VM, at the walk's level, reached from the walk's root.
"""

from __future__ import annotations

from typing import Any, Dict, List, Set

from ..matrix import VIEWS
from ..records import CellResult, Problem, Truth, each_view, truth_gpa

VERIFY = "verify"
HPA = "hpa"
VERIFY_FAULTS = "verify_faults"

# The faults vm-test/fault_dumps.py makes in a copy of the ELF dump.
FAULTS = ("pfn", "readonly_host", "no_memslot", "backpointer")

ALLOWED_EXCEPTIONS = {"tdp_mmu_parent_level", "stale_mmio", "invalid_root"}
# Views of a running kernel, where the tool reads its table pages twice.
LIVE_VIEWS = ("live", "qmp")


def unexplained_stderr(view: str, stderr: str) -> str:
    """``stderr`` without, on a live view, the tool's "changed while read"
    warnings: KVM changes table pages of a quiet VM too (page aging clears
    Accessed bits in place, seen on 7.2), and saying so is the tool's job."""
    if view not in LIVE_VIEWS:
        return stderr
    return "".join(
        line
        for line in stderr.splitlines(True)
        if not (line.startswith("warning: ") and "changed while read" in line)
    )


def check_verify(result: CellResult) -> List[Problem]:
    problems: List[Problem] = []
    kind = result["addr_kind"]
    for view, v in each_view(result, VIEWS):
        problems += _check_view_verify(result, view)
        for name, truth in result["truth"].items():
            wl = v["workloads"].get(name) or {}
            problems += _check_hpa(view, f"{view} {name}", wl.get("hpa"), truth, kind)
    return problems


def check_fault_dumps(result: CellResult) -> List[Problem]:
    """Each fault made in a copy of the ELF dump is found, named at the
    SPTE (or table page) it was made at, with exit status 1; the copy
    verifies clean before and after."""
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem("elf", VERIFY_FAULTS, f"fault dumps: {message}"))

    fd = result.get("fault_dumps")
    if not fd or "error" in fd:
        problem(f"not run: {fd}")
        return problems
    for state in ("before", "after"):
        v = fd[state]
        found = [r for r in v["records"] if "problem" in r]
        if v["rc"] != 0 or found or v["stderr"]:
            problem(f"{state} the faults: exit {v['rc']}, {found[:3]}, {v['stderr']}")
    if sorted(fd["made"]) != sorted(FAULTS):
        problem(f"made {fd['made']}, not {FAULTS}: {fd.get('not_made')}")
    for name, f in fd["faults"].items():
        v, want = f["verify"], f["expected"]
        found = [r for r in v["records"] if "problem" in r]
        key = "sptep" if "sptep" in want else "hpa"
        named = [r for r in found if r["problem"] == want["problem"] and r[key] == want[key]]
        others = [r for r in found if r["problem"] != want["problem"]]
        if v["rc"] != 1 or not named or others or v["stderr"]:
            problem(
                f"{name} (at {f['pa']:#x}): want {want['problem']} at {key} {want[key]:#x}, "
                f"exit 1; got exit {v['rc']}: {found[:3]} {v['stderr']}"
            )
    return problems


def _check_view_verify(result: CellResult, view: str) -> List[Problem]:
    v = result["views"][view]
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, VERIFY, f"{view} --verify: {message}"))

    run = v.get("verify")
    if run is None:
        problem("not run")
        return problems
    records = run.get("records") or []
    found = [r for r in records if "problem" in r]
    summaries = {r["vm"]: r for r in records if "checked" in r}
    if run.get("rc") != 0 or found or unexplained_stderr(view, run.get("stderr") or ""):
        problem(f"exit {run.get('rc')}, {len(found)} problems {found[:5]}: {run.get('stderr')}")
    stats = {r["vm"]: r for r in (v.get("stats") or {}).get("records", [])}
    for name, truth in result["truth"].items():
        s = summaries.get(truth["pid"])
        if s is None:
            problem(f"{name}: no summary for VM pid {truth['pid']}")
            continue
        odd = set(s["exceptions"]) - ALLOWED_EXCEPTIONS
        if odd or s["unreadable"]:
            problem(f"{name}: exceptions {s['exceptions']}, unreadable {s['unreadable']}")
        wl = v["workloads"].get(name) or {}
        dumped: Set[int] = set()
        for r in wl.get("vcpus", {}).values():
            dumped |= {rec["sptep"] for rec in (r.get("dump") or {}).get("records", [])}
        if s["checked"] < len(dumped):
            problem(f"{name}: {s['checked']} leaves checked, --dump gave {len(dumped)}")
        st = stats.get(truth["pid"])
        if view != "live" and st is not None:
            counters: Dict[str, int] = st.get("kvm") or {}
            want = (
                sum(counters.values())
                if "pages_4k" in counters
                else sum((st.get("leaves") or {}).values())
            )
            if s["checked"] != want:
                problem(f"{name}: {s['checked']} leaves checked, KVM counts {counters}")
    return problems


def _check_hpa(view: str, where: str, run: Any, truth: Truth, kind: str) -> List[Problem]:
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, HPA, f"{where} --hpa: {message}"))

    if not isinstance(run, dict):
        problem("not run")
        return problems
    if run.get("rc") != 0 or unexplained_stderr(view, run.get("stderr") or ""):
        problem(f"exit {run.get('rc')}: {run.get('stderr')}")
        return problems
    by_hpa: Dict[int, List[Dict[str, Any]]] = {}
    for rec in run.get("records", []):
        by_hpa.setdefault(rec["hpa"], []).append(rec)
    for asked in run.get("asked", []):
        recs = by_hpa.get(asked["hpa"], [])
        x = asked["hpa"]
        if "page" in asked:
            page = truth["pages"][asked["page"]]
            gpa = page["gpa"] + (x & 0xFFF)
            mappings = [r for r in recs if "addr" in r and r["vm"] is not None]
            if not mappings:
                problem(f"HPA {x:#x} (page {asked['page']}, GPA {gpa:#x}): no mapping {recs}")
                continue
            for r in mappings:
                got = r["addr"] if kind == "gpa" else truth_gpa(truth, r["addr"])
                if r["vm"] != truth["pid"] or got != gpa or r["gfn"] != gpa >> 12:
                    problem(f"HPA {x:#x}: {r}, but the truth is VM {truth['pid']} GPA {gpa:#x}")
            want_addr = page[kind] + (x & 0xFFF)
            if want_addr not in {r["addr"] for r in mappings}:
                problem(f"HPA {x:#x}: no mapping at {kind.upper()} {want_addr:#x}: {mappings}")
        else:
            tables = [r for r in recs if "table" in r]
            if len(tables) != 1:
                problem(f"leaf table page {x:#x}: not named as a table page: {recs}")
                continue
            t = tables[0]
            level, want = t["table"]["level"], asked["table_level"]
            # TDP MMU pages had their parent's level before v5.14 (f1b832550832).
            if (
                t["vm"] != truth["pid"]
                or (level != want and not (t["table"]["tdp_mmu"] and level == want + 1))
                or asked["root"] not in t["roots"]
            ):
                problem(f"leaf table page {x:#x} (asked {asked}): {t}")
    return problems
