# SPDX-License-Identifier: LGPL-2.1-or-later
"""How much each cell and view of a VM test run checked, from the cells'
results (``build/vm/<suite>-<mode>/cell.json`` after vm-test/run-tests):

    .venv/bin/python vm-test/counts.py [CELLDIR ...]

Per cell and view: the tagged pages walked with --addr, the GVAs walked
with --gva (and how many of them reached an HPA; in a dump without the
guest's memory the guest's own tables are not there), the --read records,
the reads through the guest Programs, the leaf SPTEs --verify checked (all
VMs) and the problems it reported, the HPAs asked of --hpa, and the walks of
the pages the host changed (l2vmm --host-changes); per cell, the faults
made in a copy of the ELF dump and how many --verify found, and the
corrupt kernel state and bit flips made there, and the live-change run
(matrix.CHURN_CELLS: runs, flagged answers, pages compared with pagemap,
the host's changes).  The checks themselves are
harness/checks; this only counts what they were given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "vm-test"))

from harness.checks.churn import churn_counts  # noqa: E402

COLUMNS = [
    "walks",
    "gvas",
    "gvas_to_hpa",
    "reads",
    "program_reads",
    "verified",
    "problems",
    "hpa_asked",
    "changed_walks",
]


def counts(cell: Dict[str, Any]) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for view, v in cell.get("views", {}).items():
        c = out.setdefault(view, dict.fromkeys(COLUMNS, 0))
        if "error" in v:
            continue
        for rec in (v.get("verify") or {}).get("records", []):
            c["verified"] += rec.get("checked", 0)
            c["problems"] += "problem" in rec
        for wl in v["workloads"].values():
            c["hpa_asked"] += len((wl.get("hpa") or {}).get("asked", []))
            hc = wl.get("host_changes") or {}
            for r in hc.get("walks", {}).values():
                c["changed_walks"] += len(r.get("records", []))
            for r in wl["vcpus"].values():
                c["walks"] += len(r.get("walks", []))
                gva = (r.get("gva") or {}).get("records", [])
                c["gvas"] += len(gva)
                c["gvas_to_hpa"] += sum(1 for w in gva if w.get("hpa") is not None)
                for key in ("read", "read_gva"):
                    c["reads"] += len((r.get(key) or {}).get("records", []))
                g = r.get("guest_program") or {}
                for through in ("spte", "memslot"):
                    for rec in (g.get(through) or {}).get("reads", []):
                        c["program_reads"] += sum(1 for k in rec)
                c["program_reads"] += len((g.get("linux") or {}).get("reads", []))
    return out


def faults_found(cell: Dict[str, Any]) -> str:
    """ "found/made" of vm-test/fault_dumps.py's faults: found = --verify
    exited 1 naming the fault's problem."""
    fd = cell.get("fault_dumps") or {}
    faults = fd.get("faults") or {}
    found = sum(
        1
        for f in faults.values()
        if f["verify"]["rc"] == 1
        and any(r.get("problem") == f["expected"]["problem"] for r in f["verify"]["records"])
    )
    return f"{found}/{len(faults)}"


def corrupt_counts(cell: Dict[str, Any]) -> str:
    """What vm-test/corrupt_dumps.py did: the kernel-state changes made, the
    random bit flips, those in table pages (compared with the reference
    walk) and the leaves compared, the runs and the tracebacks among them."""
    cd = cell.get("corrupt_dumps") or {}
    if not cd or "error" in cd:
        return "not run"
    flips = cd.get("flips") or []
    compared = [f for f in flips if f.get("reference") is not None]
    runs = [r for st in cd["states"].values() for r in st["runs"].values() if r]
    runs += [r for f in flips for r in f["runs"].values()]
    tracebacks = sum("Traceback" in r.get("stderr", "") for r in runs)
    exit2 = sum(r.get("rc") == 2 for f in flips for r in f["runs"].values())
    leaves = sum(len(f["reference"]["leaves"]) for f in compared)
    return (
        f"{len(cd.get('made', []))} changes, {len(flips)} flips ({len(compared)} in table "
        f"pages, {leaves} leaves compared; {exit2} runs of the others exit 2), "
        f"{len(runs)} runs, {tracebacks} tracebacks, {cd.get('seconds')} s"
    )


def main(argv: List[str]) -> None:
    dirs = [Path(a) for a in argv] or sorted((TOP / "build" / "vm").glob("*-*"))
    print(f"{'cell':24} {'view':6} " + " ".join(f"{c:>13}" for c in COLUMNS))
    for d in dirs:
        path = d / "cell.json"
        if not path.exists():
            continue
        cell = json.loads(path.read_text())
        for view, c in counts(cell).items():
            print(f"{d.name:24} {view:6} " + " ".join(f"{c[k]:>13}" for k in COLUMNS))
        print(f"{d.name:24} faults made in a copy of the ELF dump, found: {faults_found(cell)}")
        print(f"{d.name:24} corrupt kernel state: {corrupt_counts(cell)}")
        churn = churn_counts(cell)
        if churn is not None:
            print(f"{d.name:24} live-change run: {json.dumps(churn)}")


if __name__ == "__main__":
    main(sys.argv[1:])
