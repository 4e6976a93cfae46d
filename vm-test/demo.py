#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Walk a real guest in a test VM and show the result.

Boots Debian's kernel as a KVM host (L1) in QEMU, starts a small L2 guest in it
(build/l2vmm), then runs kvmwalk twice as a user would: inside L1 on the live
kernel (``drgn -k``), and from outside over QMP (``drgn --qemu``).  Prints
both walks next to what /proc/PID/pagemap in L1 says.

    vm-test/demo.py [--suite bookworm] [--mode tdp_mmu|legacy|shadow]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kernels  # noqa: E402
from harness import TOP  # noqa: E402
from harness.matrix import MODES, addr_kind  # noqa: E402
from harness.records import load_truth  # noqa: E402
from harness.run import drgn_bin, symbol_args  # noqa: E402
from harness.workload import l2vmm_command  # noqa: E402
from l1 import L1, agent_command  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--suite",
        default="bookworm",
        choices=sorted(kernels.SUITES),
        help="Debian suite of the L1 kernel (default: bookworm)",
    )
    ap.add_argument(
        "--mode",
        default="tdp_mmu",
        choices=sorted(MODES),
        help="KVM MMU mode in L1 (default: tdp_mmu)",
    )
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    kernel = kernels.fetch(args.suite, log=log)
    workdir = Path(tempfile.mkdtemp(prefix="kvmwalk-demo-", dir=TOP / "build"))
    shared = workdir / "shared"
    truth_file = shared / "truth.json"
    kind = addr_kind(args.mode)
    drgn = drgn_bin()
    syms = symbol_args(kernel)
    script = str(TOP / "contrib" / "kvmwalk.py")
    workload = l2vmm_command(truth_file, shared / "release", 900)
    live = shlex.join([str(HERE / "walk_first"), str(truth_file), kind, drgn, "-k", *syms, script])
    log(
        f"[demo] booting {kernel.release} ({args.suite}) as L1, MMU mode {args.mode}; "
        f"this takes a minute or two under TCG"
    )
    spec = MODES[args.mode]
    with L1(
        kernel,
        append=spec.append,
        cpu_features=spec.cpu_features,
        workdir=workdir,
        log=log,
        memory=spec.memory,
        agent_cmd=agent_command([workload], {"live": live}, python=sys.executable),
    ) as l1:
        ready = l1.wait_ready(900)
        if not ready.get("ok") or not truth_file.exists():
            log(f"[demo] L1 reported a failure: {ready.get('errors')} (see {workdir})")
            return 1
        truth = load_truth(truth_file)
        pages = [p for p in truth["pages"] if p["vcpu"] == 0][:2] + [
            p for p in truth["pages"] if p["vcpu"] == 1
        ][:1]
        seconds = {c["name"]: c["seconds"] for c in ready["checks"]}["live"]
        print(
            f"\n=== inside L1: drgn -k contrib/kvmwalk.py (live kernel, one whole "
            f"process: {seconds:.0f} s under TCG)"
        )
        print((shared / "check-live.out").read_text().rstrip())
        cmd = [
            drgn,
            "--qemu",
            str(l1.qmp_drgn),
            *syms,
            script,
            "--vm",
            str(truth["pid"]),
            "--vcpu",
            "0",
        ]
        for p in pages:
            cmd += ["--addr", hex(p[kind])]
        print(
            "\n=== from outside over QMP: "
            + shlex.join(
                [
                    "drgn",
                    "--qemu",
                    "SOCK",
                    "-s",
                    "vmlinux",
                    "-s",
                    "kvm.ko",
                    "...",
                    "contrib/kvmwalk.py",
                    *cmd[cmd.index(script) + 1 :],
                ]
            )
        )
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        print(r.stdout.rstrip())
        if r.returncode:
            print(r.stderr.rstrip())
        print("\n=== ground truth from the L2 VMM (its memslots and /proc/self/pagemap in L1)")
        for p in pages:
            print(
                f"  {kind.upper()} {p[kind]:#x}: GPA {p['gpa']:#x} -> HVA {p['hva']:#x} -> "
                f"HPA {p['pfn'] << 12:#x}; the guest wrote tag {p['tag']:#x} there"
            )
        l1.release(120)
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
