# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kdump view: kvmwalk's own reader of kdump-compressed dumps gave the
ELF dump's pages; where libkdumpfile refuses the dump, drgn -c
contrib/kvmwalk.py said so in one line."""

from __future__ import annotations

from typing import List

from ..records import CellResult, Problem
from .entry import KDUMP_REFUSED_HINT

KDUMP_READER = "kdump_reader"
KDUMP_ONE_WALK = "kdump_one_walk"


def check_kdump_views(result: CellResult) -> List[Problem]:
    """kvmwalk's kdump reader gave the ELF dump's pages; where libkdumpfile
    refuses the dump, contrib/kvmwalk.py under drgn -c said so in one line."""
    r = result["kdump_reader"]
    problems = [Problem("kdump", KDUMP_READER, f"kdump reader: {m}") for m in r["mismatches"]]
    if r["compared"] == 0 or (r["tagged"] == 0 and result.get("dump_level", 31) & 8 == 0):
        problems.append(
            Problem(
                "kdump",
                KDUMP_READER,
                f"kdump reader: compared {r['compared']} pages ({r['tagged']} tagged)",
            )
        )
    if not result["libkdumpfile_reads"]:
        w = result["one_walk"]["kdump"]
        lines = w.get("stderr", "").strip().splitlines()
        if w.get("rc") != 2 or not lines or KDUMP_REFUSED_HINT not in lines[-1]:
            problems.append(
                Problem(
                    "kdump",
                    KDUMP_ONE_WALK,
                    f"kdump one walk: libkdumpfile refuses {result['release']}, but "
                    f"drgn -c contrib/kvmwalk.py did not say so: rc {w.get('rc')}, "
                    f"{w.get('stderr', '')[-300:]!r}",
                )
            )
    return problems
