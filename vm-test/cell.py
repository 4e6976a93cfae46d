#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run one cell of the VM test matrix: one L1 boot of one kernel in one MMU
mode (harness.run), then check its result against the ground truth
(harness.checks).  For a developer in a hurry::

    vm-test/cell.py bookworm shadow        # prints a summary, exit 0 if all matched

The harness lives in vm-test/harness/; the names vm-test/bench.py and
vm-test/demo.py use are re-exported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernels  # noqa: E402
from harness import HERE, TOP  # noqa: E402
from harness.checks import check_cell  # noqa: E402
from harness.matrix import (  # noqa: E402
    CHURN_CELLS,
    CHURN_SECONDS,
    MODES,
    SUITES,
    TCG_SINGLE_CELLS,
    VIEWS,
    addr_kind,
)
from harness.run import drgn_bin, run_cell, symbol_args, use_project_venv  # noqa: E402

__all__ = [
    "HERE",
    "MODES",
    "SUITES",
    "TOP",
    "VIEWS",
    "addr_kind",
    "drgn_bin",
    "run_cell",
    "symbol_args",
    "use_project_venv",
]


def main() -> int:
    use_project_venv()
    ap = argparse.ArgumentParser(description="Run one (kernel, MMU mode) cell of the VM tests.")
    ap.add_argument("suite", choices=sorted(kernels.SUITES), help="Debian suite of the L1 kernel")
    ap.add_argument("mode", choices=sorted(MODES), help="KVM MMU mode in L1")
    ap.add_argument("--workdir", type=Path, help="default: build/vm/<suite>-<mode>")
    ap.add_argument("--keep-dumps", action="store_true", help="keep l1.elf and l1.kdump")
    ap.add_argument(
        "--churn-seconds",
        type=float,
        help="run the live-change run (the tool in a loop while the host keeps changing a "
        "VM's memory) for this long live and as long over QMP; default: "
        f"{CHURN_SECONDS:g} s in {', '.join(sorted(f'{s}/{m}' for s, m in CHURN_CELLS))}, "
        "none elsewhere; 0: none",
    )
    ap.add_argument(
        "--tcg-threads",
        choices=["single", "multi"],
        help="under TCG, QEMU's vCPU threads: one for all (single) or one per vCPU (multi); "
        "default: single in "
        f"{', '.join(sorted(f'{s}/{m}' for s, m in TCG_SINGLE_CELLS)) or 'no cell'}, "
        "else QEMU's default (multi)",
    )
    args = ap.parse_args()
    workdir = args.workdir or TOP / "build" / "vm" / f"{args.suite}-{args.mode}"
    result = run_cell(
        args.suite,
        args.mode,
        workdir.resolve(),
        log=lambda m: print(m, file=sys.stderr),
        keep_dumps=args.keep_dumps,
        churn_seconds=args.churn_seconds,
        tcg_threads=args.tcg_threads,
    )
    problems = check_cell(result)
    for view, w in result["one_walk"].items():
        print(f"--- {view}: one whole-process walk, {w.get('seconds')} s, rc {w.get('rc')}")
        print(w.get("stdout", "").rstrip())
    pages = sum(len(t["pages"]) * len(t["vcpus"]) for t in result["truth"].values())
    print(
        f"{args.suite}/{args.mode}: {pages} (page, vCPU) walks x {len(VIEWS)} views, "
        f"{len(problems)} problems, {result['seconds']} s (details: {workdir}/cell.json)"
    )
    for p in problems[:50]:
        print("  " + p.message)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
