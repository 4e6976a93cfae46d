#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Benchmark the whole-table views and one-address start-up on a real dump.

    vm-test/bench.py [--suite trixie] [--mib 1024] [--runs 9] [--gvas 10000] [--keep DIR]
                     [--keep-dump]

1. Boots the suite's kernel as L1 (TDP MMU on NPT, under TCG) with one L2 VM
   from build/l2vmm --prefault-mib MIB: MIB of 4K host pages (THP off for
   them), written by the VMM and mapped into KVM's tables with
   KVM_PRE_FAULT_MEMORY (Linux 6.10+), i.e. MIB*256 4K leaf SPTEs.
2. Takes an ELF dump of L1 over QMP and powers L1 off.
3. On the dump, for each view (--stats, --map, --map --json, --dump,
   --dump --json): one drgn process, ``--runs`` in-process runs of
   ``cli.main(prog, argv)`` with the output thrown away
   (vm-test/bench_inproc.py), each run paired with a run of the floor walk
   (one 4 KiB read and one numpy test per table page, nothing else) in the
   same process; leaves/s from the median run, and the floor's median time
   over the view's (the ratio does not drift with the machine's speed, as
   absolute figures do by about 20% here); peak RSS above drgn's own once
   its symbols are loaded.
4. ``--gvas`` GVAs the guest maps (its own GVA -> GPA runs, pages repeated
   at other offsets) through one in-process ``cli.main`` with ``--gva`` each
   (argument parsing and JSON included), and through ``VcpuGva.walk``,
   ``--runs`` times each from a cold cache: walks/s from the medians.
5. Whole processes, median of ``--runs``, the commands taken round-robin:
   drgn's own start-up with the same symbols (``drgn -c DUMP -s ... -e
   pass``), one ``--addr`` walk and one ``--gva`` walk through
   contrib/kvmwalk.py, one ``--addr`` walk through the
   ``kvmwalk`` console script, and each view with its output to /dev/null.

Prints the figures, then each target of the issue with what was measured
and whether it is met, and writes everything to DIR/bench.json (DIR
defaults to build/bench).  Exit status 0 either way: a benchmark reports,
the tests decide.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
sys.path.insert(0, str(HERE))

import cell  # noqa: E402
import kernels  # noqa: E402
from harness.records import truth_hpa  # noqa: E402
from harness.workload import l2vmm_command  # noqa: E402
from l1 import L1, agent_command  # noqa: E402

VIEWS = ["stats", "map", "map-json", "dump", "dump-json", "verify"]
VIEW_ARGS = {
    "stats": ["--stats"],
    "map": ["--vcpu", "0", "--map"],
    "map-json": ["--vcpu", "0", "--map", "--json"],
    "dump": ["--vcpu", "0", "--dump"],
    "dump-json": ["--vcpu", "0", "--dump", "--json"],
    "verify": ["--verify"],
}


def timed(procs: Dict[str, List[str]], runs: int) -> Dict[str, Dict[str, Any]]:
    """Each command ``runs`` times, round-robin: the machine's drift over the
    minute this takes (it is large here) falls on every command alike."""
    times: Dict[str, List[float]] = {name: [] for name in procs}
    for _ in range(runs):
        for name, cmd in procs.items():
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            times[name].append(time.perf_counter() - t0)
            if p.returncode:
                raise RuntimeError(f"{shlex.join(cmd)}: exit {p.returncode}: {p.stderr[-2000:]}")
    return {
        name: {
            "cmd": shlex.join(cmd),
            "seconds": times[name],
            "median": statistics.median(times[name]),
        }
        for name, cmd in procs.items()
    }


def targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The speed and memory targets of the issue, each with its figure."""
    inproc, proc = result["inproc"], result["process"]
    base = proc["drgn start-up"]["median"]
    walk = proc["--addr (drgn script)"]["median"] / base
    peak = max(r["extra_peak_mib"] for r in [*inproc.values(), result["hpa"]])
    rows = [
        ("--stats >= 0.7x the floor", inproc["stats"]["x_floor"], 0.7, True, "{:.2f}x"),
        ("--map >= 0.5x the floor", inproc["map"]["x_floor"], 0.5, True, "{:.2f}x"),
        ("--map --json >= 0.5x the floor", inproc["map-json"]["x_floor"], 0.5, True, "{:.2f}x"),
        (
            "--dump --json >= 3 M leaves/s",
            inproc["dump-json"]["leaves_per_s"] / 1e6,
            3.0,
            True,
            "{:.2f} M/s",
        ),
        (
            "--verify >= 5 M leaves/s",
            inproc["verify"]["leaves_per_s"] / 1e6,
            5.0,
            True,
            "{:.2f} M/s",
        ),
        ("--hpa of one page <= 0.5 s", result["hpa"]["median"], 0.5, False, "{:.3f} s"),
        ("one --addr walk <= 1.05x drgn start-up", walk, 1.05, False, "{:.2f}x"),
        (
            "one --gva walk <= 1.1x drgn start-up",
            proc["--gva (drgn script)"]["median"] / base,
            1.1,
            False,
            "{:.2f}x",
        ),
        (
            f"{result['gva']['gvas']:,} GVAs >= 20,000 walks/s (VcpuGva)",
            result["gva"]["api_walks_per_s"],
            20000.0,
            True,
            "{:,.0f}/s",
        ),
        (
            f"{result['gva']['gvas']:,} GVAs >= 20,000 walks/s (cli.main)",
            result["gva"]["walks_per_s"],
            20000.0,
            True,
            "{:,.0f}/s",
        ),
        ("peak memory <= +64 MiB over drgn", peak, 64.0, False, "{:.1f} MiB"),
    ]
    return [
        {
            "target": name,
            "value": value,
            "measured": shown.format(value),
            "met": value >= limit if at_least else value <= limit,
        }
        for name, value, limit, at_least, shown in rows
    ]


def bench_gvas(truth: Dict[str, Any], count: int) -> List[int]:
    """``count`` GVAs the guest maps: every 4 KiB page of its own GVA -> GPA
    runs (``guest_maps``: the data pages and the identity-mapped low 2 MiB),
    then the same pages again at other offsets until there are ``count``."""
    pages = [v + off for v, _, n in truth["guest_maps"] for off in range(0, n, 4096)]
    gvas: List[int] = []
    rnd = 0
    while len(gvas) < count:
        off = (rnd * 0x238) % 4096 & ~7
        gvas += [p + off for p in pages[: count - len(gvas)]]
        rnd += 1
    return gvas


def make_dump(kernel: Any, spec: Any, work: Path, workload: str, elf: Path, log: Any) -> None:
    """Boot L1 with the benchmark VM, take its ELF dump, power it off."""
    with L1(
        kernel,
        append=spec.append,
        cpu_features=spec.cpu_features,
        workdir=work,
        memory="4G",
        log=log,
        agent_cmd=agent_command(
            [workload], {}, python=sys.executable, ready_timeout=2400, timeout=3000
        ),
    ) as l1:
        ready = l1.wait_ready(2700)
        if not ready.get("ok"):
            raise SystemExit(f"L1 failed: {ready.get('errors')}")
        l1.dump_elf(elf)
        l1.release(180)


def main() -> int:
    cell.use_project_venv()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--suite",
        default="trixie",
        choices=sorted(kernels.SUITES),
        help="L1 kernel (needs KVM_PRE_FAULT_MEMORY: trixie or sid)",
    )
    ap.add_argument("--mib", type=int, default=1024, help="guest memory pre-faulted at 4K")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--gvas", type=int, default=10000, help="GVAs in the in-process --gva run")
    ap.add_argument(
        "--keep",
        type=Path,
        default=TOP / "build" / "bench",
        help="work directory (the dump is deleted at the end unless --keep-dump)",
    )
    ap.add_argument(
        "--keep-dump",
        action="store_true",
        help="keep DIR/l1.elf, and time an existing one instead of booting L1 again",
    )
    args = ap.parse_args()
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    kernel = kernels.fetch(args.suite, log=log)
    spec = cell.MODES["tdp_mmu"]
    work = args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shared = work / "shared"
    truth_file = shared / "truth.json"
    # 256 data pages per vCPU (the most l2vmm maps) for the --gva walks.
    workload = l2vmm_command(
        truth_file,
        shared / "release",
        3000,
        ["--prefault-mib", str(args.mib), "--pages", "256"],
        ["-v"],
    )
    elf = work / "l1.elf"
    t0 = time.monotonic()
    if args.keep_dump and elf.exists() and truth_file.exists():
        log(f"[bench] timing the kept dump {elf}")
    else:
        make_dump(kernel, spec, work, workload, elf, log)
    truth = json.loads(truth_file.read_text())
    log(f"[bench] dump ready after {time.monotonic() - t0:.0f} s")

    pid = str(truth["pid"])
    drgn = cell.drgn_bin()
    syms = cell.symbol_args(kernel)
    target = ["-c", str(elf)]
    result: Dict[str, Any] = {
        "suite": args.suite,
        "release": kernel.release,
        "mib": args.mib,
        "runs": args.runs,
        "inproc": {},
        "process": {},
    }

    def inproc(view: str, *extra: str) -> Dict[str, Any]:
        """bench_inproc.py's result for ``view``, with the peak RSS above drgn's."""
        out = work / f"inproc-{view}.json"
        cmd = [drgn, *target, *syms, str(HERE / "bench_inproc.py"), "--pid", pid]
        cmd += ["--view", view, *extra, "--runs", str(args.runs), "--out", str(out)]
        subprocess.run(cmd, check=True)
        r: Dict[str, Any] = json.loads(out.read_text())
        r["median"] = statistics.median(r["seconds"])
        r["extra_peak_mib"] = (r["rss_kib_after"] - r["rss_kib_before"]) / 1024
        return r

    for view in VIEWS:
        r = inproc(view)
        leaves = sum(r["stats"]["leaves"].values())
        r.update(
            leaves=leaves,
            leaves_per_s=leaves / r["median"],
            floor_median=statistics.median(r["floor_seconds"]),
            x_floor=statistics.median(r["floor_seconds"]) / r["median"],
        )
        result["inproc"][view] = r
    hpa = truth_hpa(truth, "gpa", truth["pages"][0]["gpa"])
    result["hpa"] = inproc("hpa", "--hpa", hex(hpa if hpa is not None else 0))
    gva_file = work / "gvas.txt"
    gva_file.write_text("\n".join(hex(g) for g in bench_gvas(truth, args.gvas)) + "\n")
    r = inproc("gva", "--gvas", str(gva_file))
    r["walks_per_s"] = r["gvas"] / r["median"]
    r["api_walks_per_s"] = r["gvas"] / statistics.median(r["api_seconds"])
    result["gva"] = r
    addr = hex(truth["pages"][0]["gpa"])
    script = str(TOP / "contrib" / "kvmwalk.py")
    kvmwalk = str(Path(sys.executable).parent / "kvmwalk")
    sym_files = [a for a in syms if a not in ("-s", "--no-default-symbols")]
    console_syms = [x for f in sym_files for x in ("-s", f)]

    def one_walk(action: str, value: str) -> List[str]:
        return [drgn, *target, *syms, script, "--vm", pid, "--vcpu", "0", action, value]

    procs = {
        "drgn start-up": [drgn, *target, *syms, "-e", "pass"],
        "--addr (drgn script)": one_walk("--addr", addr),
        "--gva (drgn script)": one_walk("--gva", hex(truth["pages"][0]["gva"])),
        "--addr (kvmwalk)": [
            kvmwalk,
            *target,
            *console_syms,
            "--vm",
            pid,
            "--vcpu",
            "0",
            "--addr",
            addr,
        ],
    }
    for view in VIEWS:
        procs[f"--{view} (kvmwalk)"] = [
            kvmwalk,
            *target,
            *console_syms,
            "--vm",
            pid,
            *VIEW_ARGS[view],
        ]
    result["process"] = timed(procs, args.runs)
    if not args.keep_dump:
        elf.unlink(missing_ok=True)
    (work / "bench.json").write_text(json.dumps(result, indent=1))
    base = result["process"]["drgn start-up"]["median"]
    print(
        f"{args.suite} ({kernel.release}), {args.mib} MiB guest pre-faulted at 4K, "
        f"median of {args.runs} runs"
    )
    print(
        f"{'in-process view':<14} {'leaves':>8} {'median s':>9} {'leaves/s':>12} "
        f"{'floor s':>8} {'x floor':>8} {'peak MiB over drgn':>19}"
    )
    for view, r in result["inproc"].items():
        print(
            f"{view:<14} {r['leaves']:>8} {r['median']:>9.4f} {r['leaves_per_s']:>12,.0f} "
            f"{r['floor_median']:>8.4f} {r['x_floor']:>8.2f} {r['extra_peak_mib']:>19.1f}"
        )
    h = result["hpa"]
    print(
        f"--hpa of one page in-process: median {h['median']:.3f} s, "
        f"peak {h['extra_peak_mib']:.1f} MiB over drgn"
    )
    g = result["gva"]
    print(
        f"--gva x{g['gvas']} in-process: cli.main median {g['median']:.3f} s, "
        f"{g['walks_per_s']:,.0f} walks/s; VcpuGva.walk {g['api_walks_per_s']:,.0f} walks/s; "
        f"peak {g['extra_peak_mib']:.1f} MiB over drgn"
    )
    print(f"{'whole process':<24} {'median s':>9} {'x drgn start-up':>16}")
    for name, r in result["process"].items():
        print(f"{name:<24} {r['median']:>9.3f} {r['median'] / base:>16.2f}")
    result["targets"] = targets(result)
    (work / "bench.json").write_text(json.dumps(result, indent=1))
    print(f"{'target':<40} {'measured':>12}  met")
    for t in result["targets"]:
        print(f"{t['target']:<40} {t['measured']:>12}  {'yes' if t['met'] else 'NO'}")
    print(f"details: {work / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
