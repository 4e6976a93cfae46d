# SPDX-License-Identifier: LGPL-2.1-or-later
"""The entry points besides check_views.py's in-process runs: the kvmwalk
console script and %kvmwalk walked the first tagged page to its pagemap
HPA (or, on a dump libkdumpfile refuses, said so in one line)."""

from __future__ import annotations

from typing import List

from ..records import CellResult, Problem, pagemap_hpa

# What contrib/kvmwalk.py and %kvmwalk say on a dump libkdumpfile refuses.
KDUMP_REFUSED_HINT = "kvmwalk -c DUMP) reads kdump-compressed dumps that libkdumpfile refuses"

CONSOLE = "console"
PLUGIN = "plugin"


def check_entry_points(result: CellResult) -> List[Problem]:
    """The kvmwalk console script and %kvmwalk walked the first tagged page
    to the pagemap HPA."""
    page = next(iter(result["truth"].values()))["pages"][0]
    want = f"=> HPA {pagemap_hpa(page, result['addr_kind']):#x} "
    problems = []
    for what, runs in ((CONSOLE, result.get("console", {})), (PLUGIN, result.get("plugin", {}))):
        for view, r in runs.items():
            if what == PLUGIN and view == "kdump" and not result["libkdumpfile_reads"]:
                if KDUMP_REFUSED_HINT not in r.get("stderr", "") or want in r.get("stdout", ""):
                    problems.append(
                        Problem(
                            view,
                            what,
                            f"kdump plugin: libkdumpfile refuses "
                            f"{result['release']}, but %kvmwalk did not say so: "
                            f"{r.get('stderr', '')[-300:]!r}",
                        )
                    )
                continue
            if r.get("rc") != 0 or want not in r.get("stdout", ""):
                problems.append(
                    Problem(
                        view,
                        what,
                        f"{view} {what}: rc {r.get('rc')}, stdout "
                        f"{r.get('stdout', '')[-300:]!r}, stderr "
                        f"{r.get('stderr', '')[-300:]!r}",
                    )
                )
    return problems
