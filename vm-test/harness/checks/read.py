# SPDX-License-Identifier: LGPL-2.1-or-later
"""--read: guest memory through the walks, against the ground truth.

check_views.py reads 16 bytes from 8 before each tagged page (so across a
page boundary), once with the address as --addr takes it (a GPA under TDP,
a GVA through the shadow root under shadow paging) and once as a GVA with
--gva; beside each record it keeps ``truth_hex``: the same bytes read at the
HPAs that the workload's own GVA -> GPA runs and pagemap give ("??" where
they give none or the view lacks the page).  Every byte the tool returns
must equal the truth's, from the HPA the truth gives (so nothing is made up
where the view lacks the page); the last 8 bytes must be the tag the guest
wrote wherever the view holds guest memory; a part the tool could not read
must say why."""

from __future__ import annotations

import json
from typing import List, Optional

from ..matrix import VIEWS
from ..records import (
    CellResult,
    Page,
    Problem,
    ReadRecord,
    ReadRun,
    TextRun,
    Truth,
    each_vcpu_runs,
    host_hpa,
    truth_gpa,
)

READ = "read"
READ_BEFORE, READ_LENGTH = 8, 16  # what check_views.py reads


def no_guest_memory(result: CellResult, view: str) -> bool:
    """makedumpfile -d with 8 drops user pages: the VMM's guest memory."""
    return view == "kdump" and bool(result.get("dump_level", 31) & 8)


def check_read_record(
    result: CellResult, view: str, rec: ReadRecord, page: Page, truth: Truth, kind: str
) -> List[str]:
    """What is wrong with one --read --json record (messages)."""
    start = page[kind] - READ_BEFORE  # type: ignore[literal-required]
    if rec["addr"] != start or rec["length"] != READ_LENGTH:
        return [f"record for {rec['addr']:#x}+{rec['length']}, asked {start:#x}+{READ_LENGTH}"]
    msgs = []
    got: List[Optional[str]] = []
    pos = start
    for p in rec["pieces"]:
        if p["addr"] != pos or p["length"] <= 0:
            return [f"pieces do not cover the range in order: {rec['pieces']}"]
        if p["bytes"] is None:
            if not p["error"]:
                msgs.append(f"{p['addr']:#x}: no bytes and no reason")
            got += [None] * p["length"]
        else:
            if len(p["bytes"]) != 2 * p["length"] or p["error"] is not None:
                msgs.append(f"{p['addr']:#x}: {p}")
            got += [p["bytes"][2 * i : 2 * i + 2] for i in range(p["length"])]
            gpa = p["addr"] if kind == "gpa" else truth_gpa(truth, p["addr"])
            if kind == "gva" and p["gpa"] is not None and p["gpa"] != gpa:
                msgs.append(f"{p['addr']:#x}: GPA {p['gpa']:#x}, the guest maps it to {gpa}")
            want = host_hpa(truth, gpa)
            if p["hpa"] != want:
                msgs.append(f"{p['addr']:#x}: read at HPA {p['hpa']:#x}, pagemap says {want}")
        pos += p["length"]
    if pos != start + READ_LENGTH:
        return [f"pieces cover {pos - start} bytes, not {READ_LENGTH}"]
    whole = None if None in got else "".join(b for b in got if b is not None)
    if rec["bytes"] != whole:
        msgs.append(f"bytes {rec['bytes']!r}, its pieces give {whole!r}")
    if rec["missing"] != got.count(None):
        msgs.append(f"missing {rec['missing']}, its pieces lack {got.count(None)}")
    truth_bytes = [rec["truth_hex"][2 * i : 2 * i + 2] for i in range(READ_LENGTH)]
    for i, (b, t) in enumerate(zip(got, truth_bytes)):
        if b is not None and b != t:
            msgs.append(f"byte {start + i:#x}: {b}, at the truth's HPA {t}")
            break
    tag = page["tag"].to_bytes(8, "little").hex()
    tool_tag = got[READ_BEFORE:]
    # A dump without the guest's memory: what it kept (a hugetlbfs page may
    # stay) is compared above, byte for byte, and nothing may be made up.
    if not no_guest_memory(result, view):
        if None in tool_tag:
            msgs.append(f"the tagged page was not read: {rec['pieces']}")
        elif "".join(b for b in tool_tag if b is not None) != tag:
            msgs.append(f"read {''.join(b or '??' for b in tool_tag)} where the guest wrote {tag}")
    return msgs


def check_read_run(
    result: CellResult, view: str, where: str, run: Optional[ReadRun], truth: Truth, kind: str
) -> List[Problem]:
    if not run or run["rc"] != 0 or run["stderr"]:
        return [Problem(view, READ, f"{where}: --read failed: {json.dumps(run)[:2000]}")]
    records = run["records"]
    if len(records) != len(truth["pages"]):
        return [Problem(view, READ, f"{where}: {len(records)} records")]
    return [
        Problem(view, READ, f"{where} {kind} {page[kind]:#x}: {m}")  # type: ignore[literal-required]
        for rec, page in zip(records, truth["pages"])
        for m in check_read_record(result, view, rec, page, truth, kind)
    ]


def check_read_text(
    result: CellResult, view: str, where: str, run: Optional[TextRun], truth: Truth
) -> List[Problem]:
    """--gva --read of the first tagged GVA, 8 bytes, as text: the hexdump
    line of the tag, in two-byte groups (in a dump without the guest's
    memory, the line saying why it could not be read)."""
    if not run or run["rc"] != 0 or run["stderr"]:
        return [Problem(view, READ, f"{where}: --read (text) failed: {run}")]
    page = truth["pages"][0]
    gva = page["gva"]
    if no_guest_memory(result, view):
        want = f"# GVA {gva:#x}-{gva + 7:#x}: "
    else:
        tag = page["tag"].to_bytes(8, "little").hex()
        groups = " ".join(tag[i : i + 4] for i in range(0, 16, 4))
        want = f"{gva:0{max(8, len(f'{gva + 7:x}'))}x}: {groups}"
    lines = run["stdout"].splitlines()
    if not any(line.startswith(want) for line in lines):
        return [Problem(view, READ, f"{where}: --read text lacks a line {want!r}: {lines}")]
    return []


def check_reads(result: CellResult) -> List[Problem]:
    """Every view, workload and vCPU: --read of every tagged page, as
    --addr takes the address and as a GVA, and one as text."""
    problems: List[Problem] = []
    kind = result["addr_kind"]
    for view, _, truth, _, r, where in each_vcpu_runs(result, VIEWS):
        problems += check_read_run(result, view, where, r.get("read"), truth, kind)
        problems += check_read_run(result, view, f"{where} --gva", r.get("read_gva"), truth, "gva")
        problems += check_read_text(result, view, where, r.get("read_text"), truth)
    return problems
