#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run the churn VM alone, again and again, in one L1 boot: is the
environment stable under a host that keeps changing a guest's memory?

    churn_soak.py SUITE MODE [--runs N] [--seconds S] [--tcg-threads single|multi]
                  [--append ARG ...] [--host-load N] [--no-collapse] [--no-ksm]
                  [--workdir DIR]

Each run starts the cells' churn VM (harness.workload.l2vmm_command with
matrix.CHURN_OPTS and --churn-log: MADV_DONTNEED,
mprotect, memslot delete and add, MADV_COLLAPSE and KSM unless left out),
lets it churn for S seconds and stops it.  Nothing reads the host: no drgn,
no QMP.  A run ends as "ok" (the VMM stopped cleanly), "crashed" (it exited
with an error: a guest triple fault is "unexpected exit ... SHUTDOWN"),
"hold_timeout" (a vCPU stopped coming back from KVM_RUN), or "stuck" (it
did not exit 60 s after being told to).  L1's console is searched for a
panic or a hung task afterwards.  This is how the crashes noted in
matrix.TCG_SINGLE_CELLS were told apart from the tool (l2vmm-notes.md,
"Host that keeps changing").

Exit status: 0 when every run was ok and L1 showed no panic or hung task,
1 otherwise, 2 on a usage error.  ``--in-l1`` is the part that runs inside
L1 (through the L1 agent).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

READY = "L2VMM READY"
CONSOLE_TROUBLE = re.compile(
    r"Kernel panic|BUG:|Oops|blocked for more than|soft lockup|corrupted stack end"
)


def in_l1(args: argparse.Namespace) -> int:
    """Inside L1: the runs; one JSON object per run on stdout."""
    from churn_live import switch_ksm_on
    from harness.matrix import CHURN_OPTS
    from harness.workload import l2vmm_command

    out = Path(args.dir)
    # The cells' churn VM, less what was left out.
    left_out = {"--churn-collapse": not args.collapse, "--churn-ksm": not args.ksm}
    opts = [o for o in CHURN_OPTS if not left_out.get(o)]
    if "--churn-ksm" in opts:
        switch_ksm_on("churn_soak")
    for i in range(1, args.runs + 1):
        stop = out / f"stop.{i}"
        log = out / f"churn.{i}"
        vmm_out, vmm_err = out / f"vmm.{i}.out", out / f"vmm.{i}.err"
        cmd = shlex.split(
            l2vmm_command(
                out / f"truth.{i}", stop, int(args.seconds + 600), [*opts, "--churn-log", str(log)]
            )
        )
        with open(vmm_out, "wb") as fo, open(vmm_err, "wb") as fe:
            vmm = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        run: Dict[str, Any] = {"run": i}
        deadline = time.monotonic() + 300
        while READY not in vmm_out.read_text() and vmm.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        t0 = time.monotonic()
        try:
            rc = vmm.wait(args.seconds)
        except subprocess.TimeoutExpired:
            stop.touch()
            try:
                rc = vmm.wait(60)
            except subprocess.TimeoutExpired:
                rc = None
        run["seconds"] = round(time.monotonic() - t0, 1)
        text = log.read_text() if log.exists() else ""
        ops = [json.loads(line) for line in text.splitlines() if '"op"' in line]
        run["ops"] = len(ops)
        run["last_op"] = ops[-1]["op"] if ops else None
        err = vmm_err.read_text()[-400:]
        if rc is None:
            run["outcome"] = "stuck"
            vmm.send_signal(signal.SIGKILL)
        elif any(op["op"] == "hold_timeout" for op in ops):
            run["outcome"] = "hold_timeout"
        elif rc == 0 and stop.exists():
            run["outcome"] = "ok"
        else:
            run["outcome"] = "crashed"
            run["rc"] = rc
            run["error"] = err.strip().splitlines()[0] if err.strip() else ""
        print(json.dumps(run), flush=True)
        if rc is None:
            break  # the VMM is stuck in the kernel: the next run would be too
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", nargs="?", help="Debian suite of the L1 kernel")
    ap.add_argument("mode", nargs="?", help="KVM MMU mode in L1 (matrix.MODES)")
    ap.add_argument("--runs", type=int, default=5, help="churn VM runs (default 5)")
    ap.add_argument("--seconds", type=float, default=60, help="churn time per run (default 60)")
    ap.add_argument(
        "--tcg-threads",
        choices=["single", "multi"],
        help="under TCG: one host thread for all vCPUs, or one per vCPU (QEMU's default)",
    )
    ap.add_argument(
        "--append",
        action="append",
        help="L1 kernel command line instead of the mode's (repeat for more words)",
    )
    ap.add_argument(
        "--host-load",
        type=int,
        default=0,
        metavar="N",
        help="N busy processes on this host while L1 runs (QEMU's threads then get less CPU)",
    )
    ap.add_argument("--no-collapse", dest="collapse", action="store_false", help="no MADV_COLLAPSE")
    ap.add_argument("--no-ksm", dest="ksm", action="store_false", help="no KSM merging")
    ap.add_argument("--workdir", type=Path, help="default: build/vm/soak-<suite>-<mode>")
    ap.add_argument("--in-l1", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_l1:
        return in_l1(args)

    import kernels
    from harness import TOP
    from harness.matrix import MODES
    from harness.run import use_project_venv
    from l1 import L1, agent_command

    use_project_venv()
    if args.suite not in kernels.SUITES or args.mode not in MODES:
        ap.error(f"SUITE is one of {sorted(kernels.SUITES)}, MODE one of {sorted(MODES)}")
    if args.runs < 1 or args.seconds <= 0:
        ap.error("--runs and --seconds must be positive")
    workdir = (args.workdir or TOP / "build" / "vm" / f"soak-{args.suite}-{args.mode}").resolve()
    shared = workdir / "shared"
    spec = MODES[args.mode]
    kernel = kernels.fetch(args.suite, log=lambda m: print(m, file=sys.stderr))
    inner = [sys.executable, str(Path(__file__).resolve()), "--in-l1"]
    inner += ["--dir", str(shared), "--runs", str(args.runs), "--seconds", str(args.seconds)]
    inner += [] if args.collapse else ["--no-collapse"]
    inner += [] if args.ksm else ["--no-ksm"]
    budget = args.runs * (args.seconds + 400) + 300
    runs: List[Dict[str, Any]] = []
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(args.host_load)
    ]
    try:
        with L1(
            kernel,
            append=spec.append if args.append is None else args.append,
            cpu_features=spec.cpu_features,
            memory=spec.memory,
            workdir=workdir,
            tcg_threads=args.tcg_threads,
            log=lambda m: print(m, file=sys.stderr),
            agent_cmd=agent_command(
                [],
                {"soak": shlex.join(inner)},
                python=sys.executable,
                timeout=budget + 300,
                check_timeout=budget,
            ),
        ) as l1:
            try:
                l1.wait_ready(budget + 200)
            except Exception as e:  # L1 died or hung: what the runs said so far still counts
                print(f"churn_soak: L1: {e}".splitlines()[0], file=sys.stderr)
            out = shared / "check-soak.out"
            if out.exists():
                runs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            console = l1.console_tail(10**7)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    trouble = sorted({m.group(0) for m in CONSOLE_TROUBLE.finditer(console)})
    for r in runs:
        extra = f": {r['error']}" if r.get("error") else ""
        print(
            f"run {r['run']}: {r['outcome']} after {r['seconds']} s, {r['ops']} host changes, "
            f"last {r['last_op']}{extra}"
        )
    bad = [r for r in runs if r["outcome"] != "ok"]
    print(
        f"{args.suite} {args.mode} ({' '.join(args.append or spec.append)}), "
        f"TCG threads {args.tcg_threads or 'default'}, host load {args.host_load}, "
        f"collapse {'on' if args.collapse else 'off'}, KSM {'on' if args.ksm else 'off'}: "
        f"{len(bad)} of {len(runs)} runs not ok ({args.runs} asked); "
        f"L1 console: {', '.join(trouble) or 'nothing'}"
    )
    print(f"logs: {shared}, console: {workdir / 'console.log'}")
    return 0 if runs and len(runs) == args.runs and not bad and not trouble else 1


if __name__ == "__main__":
    sys.exit(main())
