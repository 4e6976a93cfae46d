# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: the kvmwalk command line in a loop on a host that keeps
changing the VM's memory (l2vmm --churn-log), for a given time.

    drgn [-k | --qemu SOCK] -s ... vm-test/live_loop.py --truth truth.json \\
        --addr-kind gpa|gva --seconds S --out results.json

Each round runs, in one drgn process and as a user would type them:
``--addr`` of every tagged page (both vCPUs), ``--dump``, ``--map``,
``--stats``, ``--verify``, ``--list`` and ``--hpa`` (of the first page's
host page before the churn and of the one the round's last ``--addr`` walk
found; who maps those now).  Each run has a time
limit (a run over it is a hang); an exception out of ``cli.main`` is a
traceback.  What each run answered is kept in a compact form (mappings,
the lines flagged "changed while read") for checks/churn.py, which judges
it against the PFNs the VMM saw in pagemap while it ran.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from drgn import Program, ProgramFlags  # noqa: E402

from drgn_kvmwalk.cli import main as kvmwalk_main  # noqa: E402

# One run may take this long (the slowest, --verify of a small VM, takes a
# few seconds under TCG); past it the run is a hang.
RUN_LIMIT = 120
_STDERR_KEPT = 4000
# "changed while read: table page at host physical 0x... (level 1 GPAs 0x..-0x.., ...)"
_RANGE = re.compile(
    r"level (\d+) (?:(?:GPAs|GVAs|addresses) (0x[0-9a-f]+)-(0x[0-9a-f]+)|every address)"
)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Optional[FrameType]) -> None:
    raise Hang()


def flagged_ranges(stderr: str) -> List[Tuple[int, int]]:
    """The address ranges the "changed while read" lines of a whole-table
    view name (every address for a root's own table)."""
    spans: List[Tuple[int, int]] = []
    for line in stderr.splitlines():
        if "changed while read" not in line:
            continue
        for m in _RANGE.finditer(line):
            if m.group(2) is None:
                spans.append((0, 1 << 64))
            else:
                spans.append((int(m.group(2), 16), int(m.group(3), 16)))
    return spans


def one_run(prog: Program, action: str, argv: List[str]) -> Dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    rec: Dict[str, Any] = {"action": action, "argv": argv}
    t0 = time.monotonic()
    signal.alarm(RUN_LIMIT)
    try:
        rec["rc"] = kvmwalk_main(prog, argv, out=out, err=err)
    except Hang:
        rec["hang"] = True
    except BaseException:  # noqa: BLE001 (the point: any exception is a finding)
        rec["traceback"] = traceback.format_exc()[-_STDERR_KEPT:]
    finally:
        signal.alarm(0)
    rec["seconds"] = round(time.monotonic() - t0, 3)
    stderr = err.getvalue()
    rec["stderr"] = stderr[-_STDERR_KEPT:]
    rec["changed_lines"] = sum("changed while read" in line for line in stderr.splitlines())
    records: List[Dict[str, Any]] = []
    bad_json = 0
    for line in out.getvalue().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            bad_json += 1
    rec["bad_json"] = bad_json
    rec.update(_compact(action, records, stderr))
    return rec


def _compact(action: str, records: List[Dict[str, Any]], stderr: str) -> Dict[str, Any]:
    """What the checker needs of a run's JSON output."""
    if action == "addr":
        return {"walks": [[r["addr"], r["hpa"], r["page_size"], r.get("changed")] for r in records]}
    if action == "dump":
        return {
            "leaves": [[r["addr"], r["hpa"], r["level"]] for r in records],
            "flagged": flagged_ranges(stderr),
        }
    if action == "map":
        return {
            "ranges": [[r["start"], r["end"], r["hpa"]] for r in records],
            "flagged": flagged_ranges(stderr),
        }
    if action == "hpa":
        return {
            # (an HPA no SPTE maps has a record too, its "addr" null)
            "mappings": [[r["addr"], r["hpa"]] for r in records if r.get("addr") is not None],
            "flagged": flagged_ranges(stderr),
        }
    if action == "stats":
        return {"stats": [{k: r.get(k) for k in ("vm", "match", "changed_pages")} for r in records]}
    if action == "verify":
        problems = [r for r in records if "problem" in r]
        return {
            "problems": [
                {k: r.get(k) for k in ("problem", "addr", "hpa", "host_hpa", "changed", "detail")}
                for r in problems[:50]
            ],
            "problem_count": len(problems),
            "summaries": [
                {k: r.get(k) for k in ("vm", "checked", "problems", "changed_pages")}
                for r in records
                if "checked" in r
            ],
        }
    return {"records": len(records)}


def actions(truth: Dict[str, Any], kind: str) -> List[Tuple[str, List[str]]]:
    pid = str(truth["pid"])
    todo: List[Tuple[str, List[str]]] = []
    for vcpu in truth["vcpus"]:
        argv = ["--vm", pid, "--vcpu", str(vcpu), "--json"]
        for page in truth["pages"]:
            if page["vcpu"] == vcpu:
                argv += ["--addr", hex(page[kind])]
        todo.append(("addr", argv))
    vcpu0 = ["--vm", pid, "--vcpu", "0", "--json"]
    todo += [
        ("dump", vcpu0 + ["--dump"]),
        ("map", vcpu0 + ["--map"]),
        ("stats", ["--vm", pid, "--stats", "--json"]),
        ("verify", ["--vm", pid, "--verify", "--json"]),
        ("list", ["--list", "--json"]),
        ("hpa", ["--vm", pid, "--hpa", hex(truth["pages"][0]["pfn"] << 12), "--json"]),
    ]
    return todo


def main(prog: Program, argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--truth", required=True)
    ap.add_argument("--addr-kind", choices=["gpa", "gva"], required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with open(args.truth) as f:
        truth = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    todo = actions(truth, args.addr_kind)
    runs: List[Dict[str, Any]] = []
    t0 = time.monotonic()
    rounds = 0
    now: Optional[int] = None  # the host page the last --addr found for the first page
    while time.monotonic() - t0 < args.seconds:
        for action, a in todo:
            if action == "hpa" and now is not None:
                a = a + ["--hpa", hex(now)]
            runs.append(one_run(prog, action, a))
            walks = runs[-1].get("walks") or []
            if action == "addr" and walks and walks[0][1] is not None:
                now = walks[0][1] & ~0xFFF
        rounds += 1
    result = {
        "live": bool(prog.flags & ProgramFlags.IS_LIVE),
        "seconds": round(time.monotonic() - t0, 1),
        "rounds": rounds,
        "runs": runs,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog, sys.argv[1:]))  # type: ignore[name-defined]  # noqa: F821
