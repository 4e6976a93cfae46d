# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: time one whole-table view of the benchmark VM, in-process.

    drgn -c DUMP -s vmlinux -s kvm.ko vm-test/bench_inproc.py --pid PID \\
        --view stats|map|dump-json|verify|hpa|gva [--gvas FILE] [--hpa X] [--runs N] \\
        --out RESULT.json

Runs ``cli.main(prog, argv)`` ``--runs`` times with its output thrown away
(a sink that only counts characters), and records each run's wall time, the
leaf count (from ``--stats``, over the vCPU's root), and the process's peak
RSS before the first run (drgn with its symbols loaded) and after the last.

Each run of the view is paired with a run of the floor walk, in the same
process and on the same dump: vCPU 0's root descended with one 4 KiB read
and one numpy test per table page and nothing else (no SPTE format, no
special roots, no output).  No view can be faster than that, and a ratio to
it does not drift with the machine's speed the way absolute figures do.
With ``--profile FILE``, one more run of the view goes under cProfile.
"""

import argparse
import cProfile
import io
import json
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, List, TextIO, Tuple, cast

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from drgn_kvmwalk.cli import main as kvmwalk_main  # noqa: E402
from drgn_kvmwalk.guest import VcpuGva  # noqa: E402
from drgn_kvmwalk.kvm import find_vcpu, find_vm  # noqa: E402
from drgn_kvmwalk.mmu import mmu_info  # noqa: E402

if TYPE_CHECKING:
    import drgn

prog: "drgn.Program"  # set by drgn when it runs this script

VIEWS = {
    "stats": ["--stats"],
    "map": ["--vcpu", "0", "--map"],
    "map-json": ["--vcpu", "0", "--map", "--json"],
    "dump": ["--vcpu", "0", "--dump"],
    "dump-json": ["--vcpu", "0", "--dump", "--json"],
    "verify": ["--verify"],
    "hpa": [],  # --hpa X, X from --hpa
}


class Sink(io.TextIOBase):
    """Output thrown away; only its size is kept."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)

    def isatty(self) -> bool:
        return False


def floor_walk(prog: "drgn.Program", hpa: int, level: int) -> int:
    """Leaves under the table page at ``hpa``: one 4 KiB read and one numpy
    test per table page (present and not a large page; level 1 has only
    leaves), then down into each child."""
    entries = np.frombuffer(prog.read(hpa, 4096, True), dtype="<u8")
    if level == 1:
        return int(np.count_nonzero(entries & np.uint64(1)))
    down = (entries & np.uint64(0x81)) == np.uint64(1)
    leaves = int(np.count_nonzero(entries & np.uint64(1))) - int(np.count_nonzero(down))
    for child in (entries[down] & np.uint64(0x000FFFFFFFFFF000)).tolist():
        leaves += floor_walk(prog, child, level - 1)
    return leaves


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def timed_run(prog_: "drgn.Program", argv: List[str]) -> Tuple[float, int]:
    """One ``cli.main`` run, its output thrown away: (seconds, characters)."""
    sink = Sink()
    t0 = time.perf_counter()
    rc = kvmwalk_main(prog_, argv, out=cast(TextIO, sink), err=sys.stderr)
    seconds = time.perf_counter() - t0
    if rc:
        sys.exit(f"{argv[:8]}...: exit status {rc}")
    return seconds, sink.chars


def gva_main(pid: str, gvas: List[str], runs: int, out: str) -> None:
    """--view gva: one ``cli.main`` run of vCPU 0 with every GVA as a --gva
    (JSON, thrown away), ``runs`` times; each run from a cold cache (a new
    ``VcpuGva``: the guest's table pages and the SPTE pages are read again)."""
    prog_ = prog  # noqa: F821 (drgn's prog)
    argv = ["--vm", pid, "--vcpu", "0", "--json"] + [a for g in gvas for a in ("--gva", g)]
    base_rss = peak_rss_kib()
    times: List[float] = []
    chars = 0
    for _ in range(runs):
        seconds, chars = timed_run(prog_, argv)
        times.append(seconds)
    # The same walks through the API, without the command line's parsing
    # and rendering: a new VcpuGva each run (cold caches).
    vcpu = find_vcpu(find_vm(prog_, int(pid)), 0)
    addrs = [int(g, 0) for g in gvas]
    api_times: List[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        g = VcpuGva(vcpu)
        for gva in addrs:
            g.walk(gva)
        api_times.append(time.perf_counter() - t0)
    result = {
        "view": "gva",
        "gvas": len(gvas),
        "seconds": times,
        "api_seconds": api_times,
        "output_chars": chars,
        "rss_kib_before": base_rss,
        "rss_kib_after": peak_rss_kib(),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", required=True)
    ap.add_argument("--view", required=True, choices=sorted(VIEWS) + ["gva"])
    ap.add_argument("--gvas", help="--view gva: a file of GVAs, one per line")
    ap.add_argument("--hpa", help="--view hpa: the host physical address to trace back")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", help="also write a cProfile of one more run here")
    args = ap.parse_args()
    if args.view == "gva":
        with open(args.gvas) as f:
            gva_main(args.pid, f.read().split(), args.runs, args.out)
        return
    prog_ = prog  # noqa: F821 (drgn's prog)
    root = mmu_info(find_vcpu(find_vm(prog_, int(args.pid)), 0)).root
    base_rss = peak_rss_kib()
    # The leaves the views go through: KVM's own count over the VM's tables
    # and the tool's (--stats), taken once.
    stats_out = io.StringIO()
    if kvmwalk_main(prog_, ["--vm", args.pid, "--stats", "--json"], out=stats_out, err=sys.stderr):
        sys.exit("--stats failed")
    stats = json.loads(stats_out.getvalue())
    argv = ["--vm", args.pid, *VIEWS[args.view]]
    if args.view == "hpa":
        argv += ["--hpa", args.hpa]
    times: List[float] = []
    floor_times: List[float] = []
    chars = 0
    floor_leaves = floor_walk(prog_, root.hpa, root.level)  # warm the same pages
    for _ in range(args.runs):
        t0 = time.perf_counter()
        floor_leaves = floor_walk(prog_, root.hpa, root.level)
        floor_times.append(time.perf_counter() - t0)
        seconds, chars = timed_run(prog_, argv)
        times.append(seconds)
    if args.profile:
        cProfile.runctx(
            "kvmwalk_main(prog_, argv, out=Sink(), err=sys.stderr)",
            globals(),
            {"prog_": prog_, "argv": argv},
            args.profile,
        )
    result = {
        "view": args.view,
        "argv": argv,
        "seconds": times,
        "floor_seconds": floor_times,
        "floor_leaves": floor_leaves,
        "output_chars": chars,
        "stats": stats,
        "rss_kib_before": base_rss,
        "rss_kib_after": peak_rss_kib(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
