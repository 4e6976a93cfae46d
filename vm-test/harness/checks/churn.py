# SPDX-License-Identifier: LGPL-2.1-or-later
"""The live-change run (matrix.CHURN_CELLS): the tool in a loop, live in L1
and over QMP, on a VM whose host keeps changing its memory (l2vmm
--churn-log: MADV_DONTNEED, mprotect there and back, slot 1 deleted and
added again, MADV_COLLAPSE with --churn-collapse, KSM merging and unmerging
with --churn-ksm (both in matrix.CHURN_OPTS); while the guest keeps
touching its pages).

What must hold, per loop (view "live" and "qmp"):

- every run ended: no traceback, no run over its time limit, stdout JSON
  Lines; exit 0 (--verify: 0, or 1 with problems), or for --addr, --dump
  and --map exit 2 with the one line that the vCPU has no valid root (KVM
  invalidates the roots when slot 1 is deleted; counted as ``no_root``);
- nothing is presented as a mapping the tables never held: every host page
  that an answer not flagged as changed maps (--addr walks whose record says
  ``"changed": false``; --dump leaves, --map ranges and --hpa mappings
  outside the ranges of the "changed while read" lines) is a PFN that pagemap showed for that
  guest page at some time during the run (the VMM sampled every page of
  slots 0 and 1 every 20 ms, and before and after each change).  The PFNs
  are the VMM's; the tool computed none of them.  Under shadow paging the
  GVA goes to its GPA through the guest's own page tables (the truth's
  guest_maps).  One exception, counted as ``ksm_other``: a page KSM merges
  (all of them hold the same bytes) may be mapped to a KSM page that
  pagemap showed backing others of them at once, since KSM can merge it
  and split it again between two samples (CI saw it: the same KSM page in
  --dump, --map and --addr of one such page, two rounds running, under
  shadow paging on 6.1);
- --verify's problems are all flagged as changed (on a host that changes,
  a problem the second read does not confirm is no finding);
- the host did change: each change was made (collapse and KSM's only when
  the VMM was asked for them) (and MADV_COLLAPSE did not fail
  but for EINVAL/EAGAIN, which say it could not collapse then), PFNs
  changed while the loops ran, the log ended with the VMM's counts.

The counts of runs, flagged answers and pages compared are in
:func:`churn_counts` (vm-test/counts.py prints them).
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, List, Optional

from ..records import CellResult, Problem

CHURN = "churn"
PAGE = 4096
LOOPS = ("live", "qmp")
ACTIONS = ("addr", "dump", "map", "stats", "verify", "list", "hpa")
OPS = (
    "madv_dontneed",
    "mprotect_read",
    "mprotect_write",
    "madv_collapse",
    "ksm_merge",
    "ksm_unmerge",
    "memslot_delete",
    "memslot_add",
)
# MADV_COLLAPSE may find nothing to collapse, or memory it cannot take now.
_COLLAPSE_MAY = {11, 22}  # EAGAIN, EINVAL
# Leaf sizes checked page by page (a 1G leaf is none of the churn VM's).
_MAX_PAGES_PER_MAPPING = 512


class _GuestMaps:
    """GVA -> GPA through the guest's tables (the truth's guest_maps runs)."""

    def __init__(self, runs: List[List[int]]) -> None:
        self.runs = sorted((r[0], r[1], r[2]) for r in runs)
        self.starts = [r[0] for r in self.runs]

    def gpa(self, gva: int) -> Optional[int]:
        i = bisect.bisect_right(self.starts, gva) - 1
        if i < 0:
            return None
        start, to, length = self.runs[i]
        return to + (gva - start) if gva < start + length else None


class _Judge:
    def __init__(self, result: CellResult, churn: Dict[str, Any]) -> None:
        self.gva = result.get("addr_kind") == "gva"
        truth = churn.get("truth") or {}
        self.maps = _GuestMaps(truth.get("guest_maps", []))
        log = churn.get("log") or {}
        self.history = {int(g): set(p) for g, p in (log.get("history") or {}).items()}
        # The pages KSM merges (all of the same bytes) and the KSM pages
        # pagemap showed (a PFN backing two of them or more at once).
        self.ksm_gpas = {p["gpa"] for p in log.get("pages") or [] if p.get("kind") == "ksm"}
        self.ksm_pfns = set(log.get("ksm_pfns") or [])
        self.ksm_other = 0
        self.compared = 0
        self.flagged = 0
        self.wrong: List[str] = []

    def page(self, addr: int, hpa: int, what: str) -> None:
        """One 4K page of an answer not flagged: its PFN must be one the
        VMM saw for it."""
        gpa = self.maps.gpa(addr) if self.gva else addr
        page = None if gpa is None else gpa & ~(PAGE - 1)
        seen = self.history.get(page) if page is not None else None
        self.compared += 1
        if seen is None:
            self.wrong.append(
                f"{what}: {addr:#x} -> {hpa:#x}, but the VMM never saw a host page "
                f"for {'GVA' if self.gva else 'GPA'} {addr:#x} (GPA {page and hex(page)})"
            )
        elif hpa >> 12 not in seen and page in self.ksm_gpas and hpa >> 12 in self.ksm_pfns:
            # KSM merged this page into a KSM page that pagemap showed for the
            # others, and split it again, between two samples (seen in CI:
            # the guest faulted the KSM page in meanwhile).
            self.ksm_other += 1
        elif hpa >> 12 not in seen:
            self.wrong.append(
                f"{what}: {addr:#x} -> {hpa:#x}, a host page pagemap never showed for "
                f"GPA {page:#x} (it showed {len(seen)} PFNs)"
            )

    def mapping(self, start: int, end: int, hpa: int, what: str) -> None:
        for i, addr in enumerate(
            range(start, min(end, start + _MAX_PAGES_PER_MAPPING * PAGE), PAGE)
        ):
            gpa = self.maps.gpa(addr) if self.gva else addr
            if gpa is not None and (gpa & ~(PAGE - 1)) in self.history:
                self.page(addr, hpa + i * PAGE, what)
            elif i == 0:
                self.page(addr, hpa, what)  # a mapping of nothing the VM has


def _overlaps(spans: List[List[int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


def _runs_of(loop: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return list((loop or {}).get("runs") or [])


def check_churn(result: CellResult) -> List[Problem]:
    churn = result.get("churn")
    if churn is None:
        return []
    problems: List[Problem] = []

    def problem(view: Optional[str], msg: str) -> None:
        problems.append(Problem(view, CHURN, msg))

    check = churn.get("live_check") or {}
    if check.get("rc") != 0:
        problem("live", f"the live loop in L1 failed (rc {check.get('rc')}): {check.get('stderr')}")
    qmp_run = churn.get("qmp_run") or {}
    if qmp_run.get("rc") != 0:
        problem("qmp", f"the QMP loop failed (rc {qmp_run.get('rc')}): {qmp_run.get('stderr')}")
    log = churn.get("log")
    if not log:
        problem(None, f"the churn VM wrote no log: {churn.get('vmm_stderr')}")
        return problems
    if not log.get("ended"):
        problem(None, f"the churn VM's log has no end line: {churn.get('vmm_stderr')}")
    if log.get("bad_lines"):
        problem(None, f"{log['bad_lines']} lines of the churn log are not JSON")
    for op in OPS:
        if op.startswith("ksm_") and not log.get("ksm", True):
            continue  # l2vmm --churn-ksm not given (see matrix.CHURN_OPTS)
        if op == "madv_collapse" and not log.get("collapse", True):
            continue  # nor --churn-collapse
        if not log.get("ops", {}).get(op):
            problem(None, f"the churn VM never made the change {op}")
    for op, errnos in (log.get("op_errors") or {}).items():
        if op not in OPS:
            continue  # hold_timeout: counted (churn_counts), the VMM's own wait
        allowed = _COLLAPSE_MAY if op == "madv_collapse" else set()
        if set(errnos) - allowed:
            problem(None, f"the churn VM's {op} failed with errno {errnos}")
    if not log.get("pfn_changes"):
        problem(None, "no guest page changed its host page while the loops ran")

    judge = _Judge(result, churn)
    for view in LOOPS:
        loop = churn.get(view)
        runs = _runs_of(loop)
        if not runs:
            if loop is None:
                problem(view, "the loop wrote no result")
            continue
        ran = {r["action"] for r in runs}
        for action in ACTIONS:
            if action not in ran:
                problem(view, f"the loop never ran --{action}")
        for r in runs:
            name = f"--{r['action']} ({' '.join(r['argv'][:6])} ...)"
            if r.get("traceback"):
                problem(view, f"{name}: traceback: {r['traceback']}")
                continue
            if r.get("hang"):
                problem(view, f"{name}: did not end within its time limit")
                continue
            if r.get("bad_json"):
                problem(view, f"{name}: {r['bad_json']} stdout lines are not JSON")
            if no_root(r):
                continue  # the truth at that moment: see no_root
            ok_rc = (0, 1) if r["action"] == "verify" else (0,)
            if r.get("rc") not in ok_rc:
                problem(view, f"{name}: exit {r.get('rc')}: {r.get('stderr', '')[-600:]}")
                continue
            _judge_run(judge, view, r, problem)
    for line in judge.wrong[:20]:
        problem(None, line)
    if len(judge.wrong) > 20:
        problem(None, f"... and {len(judge.wrong) - 20} more answers like these")
    return problems


def no_root(r: Dict[str, Any]) -> bool:
    """A vCPU action that found the vCPU without a valid root, in one line:
    while slot 1 is deleted KVM invalidates every root (the vCPU loads a new
    one at its next entry, and the churn VM's vCPUs wait at a halt then), so
    this is what the kernel held, said as the documented exit 2."""
    err = r.get("stderr", "")
    return (
        r.get("rc") == 2
        and r["action"] in ("addr", "dump", "map")
        and err.count("\n") == 1
        and "the vCPU's MMU has no valid root" in err
    )


def _judge_run(judge: _Judge, view: str, r: Dict[str, Any], problem: Any) -> None:
    action = r["action"]
    what = f"{view} --{action}"
    if action == "addr":
        for addr, hpa, _size, changed in r.get("walks", []):
            if changed is None:
                problem(view, f"{what}: a walk record of a live target has no 'changed' key")
            elif changed:
                judge.flagged += 1
            elif hpa is not None:
                judge.page(addr, hpa & ~(PAGE - 1), what)
    elif action == "dump":
        spans = r.get("flagged", [])
        for addr, hpa, level in r.get("leaves", []):
            size = PAGE << (9 * (level - 1))
            if _overlaps(spans, addr, addr + size):
                judge.flagged += 1
            else:
                judge.mapping(addr, addr + size, hpa, what)
    elif action == "map":
        spans = r.get("flagged", [])
        for start, end, hpa in r.get("ranges", []):
            if _overlaps(spans, start, end):
                judge.flagged += 1
            else:
                judge.mapping(start, end, hpa, what)
    elif action == "hpa":
        spans = r.get("flagged", [])
        for addr, hpa in r.get("mappings", []):
            if addr is None:
                continue  # the answer "no SPTE maps it" (so written before live_loop left it out)
            if _overlaps(spans, addr, addr + 1):
                judge.flagged += 1
            else:
                judge.page(addr & ~(PAGE - 1), hpa & ~(PAGE - 1), what)
    elif action == "verify":
        for p in r.get("problems", []):
            if not p.get("changed"):
                problem(view, f"{what}: a problem not flagged as changed: {p}")
        if r.get("problem_count", 0) > len(r.get("problems", [])) and not all(
            s.get("changed_pages") for s in r.get("summaries", [])
        ):
            problem(view, f"{what}: {r['problem_count']} problems, not all flagged as changed")


def churn_counts(result: CellResult) -> Optional[Dict[str, Any]]:
    """What the live-change run did, for the note: runs per loop, flagged
    answers, pages compared with pagemap, the host's changes."""
    churn = result.get("churn")
    if churn is None:
        return None
    judge = _Judge(result, churn)
    counts: Dict[str, Any] = {}
    for view in LOOPS:
        runs = _runs_of(churn.get(view))
        before = judge.flagged
        for r in runs:
            if not (r.get("traceback") or r.get("hang")):
                _judge_run(judge, view, r, lambda *a: None)
        counts[view] = {
            "rounds": (churn.get(view) or {}).get("rounds"),
            "runs": len(runs),
            "tracebacks": sum(bool(r.get("traceback")) for r in runs),
            "hangs": sum(bool(r.get("hang")) for r in runs),
            "changed_lines": sum(r.get("changed_lines", 0) for r in runs),
            "flagged_answers": judge.flagged - before,
            "flagged_runs": sum(r.get("changed_lines", 0) > 0 for r in runs),
            "no_root": sum(no_root(r) for r in runs),
            # 2M leaves while slot 1 is a THP, 4K ones after a split
            "dump_leaves": {
                f"level {lv}": sum(
                    1
                    for r in runs
                    if r["action"] == "dump"
                    for x in r.get("leaves", [])
                    if x[2] == lv
                )
                for lv in (1, 2)
            },
            "slowest": max((r.get("seconds", 0) for r in runs), default=0),
        }
    log = churn.get("log") or {}
    counts["compared"] = judge.compared
    counts["wrong"] = len(judge.wrong)
    counts["ksm_other"] = judge.ksm_other
    counts["host"] = {
        "ops": log.get("ops"),
        "op_errors": log.get("op_errors"),
        "pfn_changes": log.get("pfn_changes"),
        "ksm_shared": log.get("ksm_shared"),
        "hold_max": log.get("hold_max"),
        "mmio_exits": log.get("mmio_exits"),
        "passes": log.get("passes"),
        "seconds": log.get("seconds"),
    }
    return counts
