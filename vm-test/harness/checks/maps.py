# SPDX-License-Identifier: LGPL-2.1-or-later
"""--map and --dump: every range translates as the guest's tables and the
host's pagemap say, every tagged page is in a range, and --dump has the
same leaves as --map."""

from __future__ import annotations

import bisect
from typing import List, Optional

from ..records import AddrKind, DumpRun, MapRange, MapRun, Page, Problem, Truth, pagemap_hpa

MAP = "map"
DUMP = "dump"


def resolve(runs: List[List[int]], start: int, length: int) -> Optional[List[List[int]]]:
    """Translate ``[start, start + length)`` through ``runs`` ([from, to, len],
    any order): the pieces [offset, target, len], or None where a byte of it
    has no translation."""
    pieces = []
    addr, end = start, start + length
    for frm, to, ln in sorted(runs):
        if frm + ln <= addr or frm >= end:
            continue
        if frm > addr:
            return None
        n = min(end, frm + ln) - addr
        pieces.append([addr - start, to + (addr - frm), n])
        addr += n
        if addr == end:
            return pieces
    return None


def aged(dump_flags: List[str], map_flags: List[str]) -> bool:
    """The leaf's flags in --dump and in the --map that ran after it differ
    only by an Accessed bit that was set and is now clear.

    On a live host the kernel keeps running while the tool reads, and the
    Accessed bit of leaf SPTEs gets cleared in place: what KVM's page aging
    does (kvm_age_gfn(), through the MMU notifiers; inferred from the bit,
    the caller was not traced).  The guest is halted, so nothing sets it
    again.  Seen on Debian's 7.2 in
    every MMU mode, between the live view and the dumps taken after it.
    """
    return (
        "A" in dump_flags
        and "A" not in map_flags
        and [f for f in dump_flags if f != "A"] == map_flags
    )


def _range_at(ranges: List[MapRange], starts: List[int], addr: int) -> Optional[MapRange]:
    i = bisect.bisect_right(starts, addr) - 1
    return ranges[i] if i >= 0 else None


def check_map(
    view: str,
    where: str,
    mp: Optional[MapRun],
    dump: Optional[DumpRun],
    truth: Truth,
    pages: List[Page],
    kind: AddrKind,
    live: bool = False,
) -> List[Problem]:
    """--map (``mp``) and --dump (``dump``, which check_views.py runs first)
    of one vCPU's whole table."""
    if not mp or mp["rc"] != 0 or mp["stderr"]:
        return [Problem(view, MAP, f"{where} --map failed: {mp and mp['stderr']}")]
    if not dump or dump["rc"] != 0 or dump["stderr"]:
        return [Problem(view, DUMP, f"{where} --dump failed: {dump and dump['stderr']}")]
    problems: List[Problem] = []

    def problem(check: str, message: str) -> None:
        problems.append(Problem(view, check, f"{where} --{check}: {message}"))

    ranges = mp["records"]
    prev = -1
    for r in ranges:
        if r["start"] < prev or r["end"] <= r["start"]:
            problem(MAP, f"range {r['start']:#x}-{r['end']:#x} out of order")
        prev = r["end"]
        length = r["end"] - r["start"]
        if kind == "gpa":
            gpa_pieces = [[0, r["start"], length]]
        else:
            gpa_pieces = resolve(truth["guest_maps"], r["start"], length) or []
            if sum(p[2] for p in gpa_pieces) != length:
                problem(
                    MAP,
                    f"GVA {r['start']:#x}-{r['end']:#x} is not "
                    f"(all) mapped by the guest's page tables",
                )
                continue
        for off, gpa, n in gpa_pieces:
            host = resolve(truth["host_runs"], gpa, n)
            if host is None:
                problem(
                    MAP,
                    f"{r['start'] + off:#x} (GPA {gpa:#x}, "
                    f"{n:#x} bytes) is not all present in the host's pagemap",
                )
                break
            bad = [h for h in host if h[1] != r["hpa"] + off + h[0]]
            if bad:
                problem(
                    MAP,
                    f"{r['start'] + off + bad[0][0]:#x} -> HPA "
                    f"{r['hpa'] + off + bad[0][0]:#x}, pagemap says {bad[0][1]:#x}",
                )
                break
    starts = [r["start"] for r in ranges]
    for page in pages:
        addr = page[kind]
        at = _range_at(ranges, starts, addr)
        if at is None or not at["start"] <= addr < at["end"]:
            problem(MAP, f"tagged {kind} {addr:#x} in no range")
        elif at["hpa"] + addr - at["start"] != pagemap_hpa(page, kind):
            problem(MAP, f"tagged {kind} {addr:#x} to the wrong HPA")
    leaves = dump["records"]
    if len(leaves) != sum((r["end"] - r["start"]) >> (12 + 9 * (r["level"] - 1)) for r in ranges):
        problem(DUMP, f"{len(leaves)} leaves, --map ranges hold another number")
    # check_views.py runs --dump before --map.
    for leaf in leaves:
        at = _range_at(ranges, starts, leaf["addr"])
        if (
            at is None
            or not at["start"] <= leaf["addr"] < at["end"]
            or at["level"] != leaf["level"]
            or at["hpa"] + leaf["addr"] - at["start"] != leaf["hpa"]
        ):
            problem(DUMP, f"leaf {leaf['addr']:#x} disagrees with --map")
            break
        if at["flags"] != leaf["flags"] and not (live and aged(leaf["flags"], at["flags"])):
            problem(
                DUMP,
                f"leaf {leaf['addr']:#x} has flags {leaf['flags']}, its --map range {at['flags']}",
            )
            break
    return problems
