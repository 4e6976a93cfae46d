#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run INSIDE L1 (an l1_agent.py check): start an L2 VM whose host keeps
changing its memory (l2vmm --churn-log), then the kvmwalk command line in a
loop on the live kernel (vm-test/live_loop.py under ``drgn -k``).

    churn_live.py --l2vmm CMD --truth FILE --addr-kind gpa|gva --seconds S --out FILE \\
        -- DRGN [ARGS...]

The VMM is left running in its own session when this exits, so that the
host can go on over QMP; it stops when its --stop-file appears.  Exit
status: the loop's (2 when the VMM did not get ready).

When the VMM's command has --churn-ksm, KSM is switched on first
(``/sys/kernel/mm/ksm``: run 1, 1000 pages per scan, 10 ms between scans)
so that its MADV_MERGEABLE pages merge while the loop runs.  KSM's
counters before and after go to FILE.ksm.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
KSM = Path("/sys/kernel/mm/ksm")
READY = "L2VMM READY"


def ksm_counters() -> Dict[str, str]:
    if not KSM.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in KSM.iterdir() if p.is_file()}


def switch_ksm_on(who: str) -> None:
    """KSM on, scanning fast (1000 pages per scan, 10 ms between scans), so
    that MADV_MERGEABLE pages merge within the churn's cycle; a setting that
    cannot be made is said on stderr."""
    for name, value in (("pages_to_scan", "1000"), ("sleep_millisecs", "10"), ("run", "1")):
        try:
            (KSM / name).write_text(value)
        except OSError as e:
            print(f"{who}: cannot set ksm {name}: {e}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--l2vmm", required=True, help="the VMM's command line")
    ap.add_argument("--truth", required=True)
    ap.add_argument("--addr-kind", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("drgn", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    drgn = args.drgn[1:] if args.drgn[:1] == ["--"] else args.drgn
    before = ksm_counters()
    if "--churn-ksm" in shlex.split(args.l2vmm):
        switch_ksm_on("churn_live")
    out = Path(args.out)
    vmm_out = out.with_suffix(".vmm.out")
    vmm_err = out.with_suffix(".vmm.err")
    with open(vmm_out, "wb") as fo, open(vmm_err, "wb") as fe:
        vmm = subprocess.Popen(
            shlex.split(args.l2vmm),
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while READY not in vmm_out.read_text():
        if vmm.poll() is not None or time.monotonic() > deadline:
            print(
                f"churn_live: the VMM did not get ready (rc {vmm.poll()}): "
                f"{vmm_err.read_text()[-2000:]}",
                file=sys.stderr,
            )
            return 2
        time.sleep(0.2)
    cmd = [*drgn, str(HERE / "live_loop.py"), "--truth", args.truth]
    cmd += ["--addr-kind", args.addr_kind, "--seconds", str(args.seconds), "--out", str(out)]
    print("churn_live: " + shlex.join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, timeout=args.seconds + 600).returncode
    ksm = {"before": before, "after": ksm_counters()}
    Path(str(out) + ".ksm").write_text(json.dumps(ksm))
    return rc


if __name__ == "__main__":
    sys.exit(main())
