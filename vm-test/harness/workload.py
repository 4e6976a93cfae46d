# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one builder of the L2 workload's command line (build/l2vmm), for the
cells (run.py), the demo (vm-test/demo.py) and the benchmark."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from . import TOP

L2VMM = TOP / "build" / "l2vmm"


def l2vmm_command(
    truth: Path, stop_file: Path, timeout: int, opts: Sequence[str] = (), extra: Sequence[str] = ()
) -> str:
    """The shell command that starts one L2 workload in L1: it writes its
    ground truth to ``truth``, then waits (at most ``timeout`` seconds) until
    ``stop_file`` exists.  ``opts`` are the workload's options (matrix.Workload),
    ``extra`` more at the end (-v)."""
    if not L2VMM.exists():
        raise RuntimeError(f"{L2VMM} is missing: run vm-test/setup")
    return shlex.join(
        [
            str(L2VMM),
            "--truth",
            str(truth),
            *opts,
            "--stop-file",
            str(stop_file),
            "--timeout",
            str(timeout),
            *extra,
        ]
    )
