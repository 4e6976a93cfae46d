# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: time one whole-table view of the benchmark VM, in-process.

    drgn -c DUMP -s vmlinux -s kvm.ko vm-test/bench_inproc.py --pid PID \\
        --view stats|map|dump-json [--runs N] --out RESULT.json

Runs ``cli.main(prog, argv)`` ``--runs`` times with its output thrown away
(a sink that only counts characters), and records each run's wall time, the
leaf count (from ``--stats``, over the vCPU's root), and the process's peak
RSS before the first run (drgn with its symbols loaded) and after the last.
"""

import argparse
import io
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from drgn_kvmwalk.cli import main as kvmwalk_main  # noqa: E402

VIEWS = {
    "stats": ["--stats"],
    "map": ["--vcpu", "0", "--map"],
    "map-json": ["--vcpu", "0", "--map", "--json"],
    "dump": ["--vcpu", "0", "--dump"],
    "dump-json": ["--vcpu", "0", "--dump", "--json"],
}


class Sink(io.TextIOBase):
    """Output thrown away; only its size is kept."""

    def __init__(self):
        self.chars = 0

    def write(self, s):
        self.chars += len(s)
        return len(s)

    def isatty(self):
        return False


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", required=True)
    ap.add_argument("--view", required=True, choices=sorted(VIEWS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prog_ = prog  # noqa: F821 (drgn's prog)
    base_rss = peak_rss_kib()
    # The leaves the views go through: KVM's own count over the VM's tables
    # and the tool's (--stats), taken once.
    stats_out = io.StringIO()
    rc = kvmwalk_main(prog_, ["--vm", args.pid, "--stats", "--json"], out=stats_out, err=sys.stderr)
    stats = json.loads(stats_out.getvalue())
    argv = ["--vm", args.pid, *VIEWS[args.view]]
    times, chars = [], 0
    for _ in range(args.runs):
        sink = Sink()
        t0 = time.perf_counter()
        rc = kvmwalk_main(prog_, argv, out=sink, err=sys.stderr)
        times.append(time.perf_counter() - t0)
        chars = sink.chars
        if rc:
            sys.exit(f"{argv}: exit status {rc}")
    result = {
        "view": args.view,
        "argv": argv,
        "seconds": times,
        "output_chars": chars,
        "stats": stats,
        "rss_kib_before": base_rss,
        "rss_kib_after": peak_rss_kib(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
