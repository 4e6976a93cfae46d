# SPDX-License-Identifier: LGPL-2.1-or-later
"""How much each cell and view of a VM test run checked, from the cells'
results (``build/vm/<suite>-<mode>/cell.json`` after vm-test/run-tests):

    .venv/bin/python vm-test/counts.py [CELLDIR ...]

Per cell and view: the tagged pages walked with --addr, the GVAs walked
with --gva (and how many of them reached an HPA; in a dump without the
guest's memory the guest's own tables are not there), the --read records,
and the reads through the guest Programs.  The checks themselves are
harness/checks; this only counts what they were given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

TOP = Path(__file__).resolve().parent.parent


def counts(cell: Dict[str, Any]) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for view, v in cell.get("views", {}).items():
        c = out.setdefault(
            view, {"walks": 0, "gvas": 0, "gvas_to_hpa": 0, "reads": 0, "program_reads": 0}
        )
        if "error" in v:
            continue
        for wl in v["workloads"].values():
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


def main(argv: List[str]) -> None:
    dirs = [Path(a) for a in argv] or sorted((TOP / "build" / "vm").glob("*-*"))
    cols = ["walks", "gvas", "gvas_to_hpa", "reads", "program_reads"]
    print(f"{'cell':28} {'view':6} " + " ".join(f"{c:>13}" for c in cols))
    for d in dirs:
        path = d / "cell.json"
        if not path.exists():
            continue
        for view, c in counts(json.loads(path.read_text())).items():
            print(f"{d.name:28} {view:6} " + " ".join(f"{c[k]:>13}" for k in cols))


if __name__ == "__main__":
    main(sys.argv[1:])
