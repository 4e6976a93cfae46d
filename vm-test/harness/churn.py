# SPDX-License-Identifier: LGPL-2.1-or-later
"""The log of l2vmm --churn-log (a host that keeps changing the VM's
memory), read into what checks/churn.py judges against: every PFN that
pagemap showed for each GPA of slots 0 and 1 while the VMM ran, and what the
VMM did (see vm-test/l2vmm-notes.md, "Host that keeps changing")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Set


def read_churn_log(path: Path) -> Dict[str, Any]:
    """``{"pages", "history" {gpa: [pfn...]}, "ops" {op: n}, "op_errors"
    {op: [errno...]}, "pfn_changes", "ksm_shared", "hold_max", "ended",
    "mmio_exits", "passes", "bad_lines", "seconds"}``.  ``hold_max``: the
    longest the vCPUs took to come to a halt before slot 1 was deleted (an
    op ``hold_timeout`` when they did not within 30 s).

    ``ksm_shared`` is the most GPAs that one PFN backed at once (above 1:
    KSM merged pages), ``ksm_pfns`` the PFNs that backed two or more at
    once; ``pfn_changes`` counts the lines where a GPA got a
    PFN other than its last (absent pages are PFN 0 in the log and are
    not in ``history``)."""
    history: Dict[int, Set[int]] = {}
    now: Dict[int, int] = {}
    holders: Dict[int, int] = {}  # pfn -> GPAs it backs now
    shared: Set[int] = set()  # PFNs that backed two GPAs or more at once (KSM pages)
    ops: Dict[str, int] = {}
    op_errors: Dict[str, List[int]] = {}
    out: Dict[str, Any] = {"ended": False, "bad_lines": 0, "pfn_changes": 0, "ksm_shared": 1}
    t_first = t_last = None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                out["bad_lines"] += 1
                continue
            t = rec.get("t")
            if t is not None:
                t_first = t if t_first is None else t_first
                t_last = t
            if rec.get("start"):
                out["pages"] = rec["pages"]
                out["ksm"] = rec.get("ksm", True)
                out["collapse"] = rec.get("collapse", True)
            elif "gpa" in rec:
                gpa, pfn = rec["gpa"], rec["pfn"]
                old = now.get(gpa, 0)
                if old:
                    holders[old] -= 1
                    out["pfn_changes"] += 1
                now[gpa] = pfn
                if pfn:
                    history.setdefault(gpa, set()).add(pfn)
                    holders[pfn] = holders.get(pfn, 0) + 1
                    out["ksm_shared"] = max(out["ksm_shared"], holders[pfn])
                    if holders[pfn] > 1:
                        shared.add(pfn)
            elif "op" in rec:
                ops[rec["op"]] = ops.get(rec["op"], 0) + 1
                if rec["errno"]:
                    op_errors.setdefault(rec["op"], [])
                    if rec["errno"] not in op_errors[rec["op"]]:
                        op_errors[rec["op"]].append(rec["errno"])
            elif "hold" in rec:
                out["hold_max"] = max(out.get("hold_max", 0.0), rec["hold"])
            elif rec.get("end"):
                out["ended"] = True
                out["mmio_exits"] = rec["mmio_exits"]
                out["passes"] = rec["passes"]
    out["history"] = {str(g): sorted(p) for g, p in history.items()}
    out["ksm_pfns"] = sorted(shared)
    out["ops"] = ops
    out["op_errors"] = op_errors
    out["seconds"] = round((t_last or 0) - (t_first or 0), 1)
    return out
