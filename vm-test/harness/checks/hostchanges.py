# SPDX-License-Identifier: LGPL-2.1-or-later
"""What KVM did with the host-side changes of l2vmm --host-changes, as the
tool shows it (HOST_CHANGES).

After the guest wrote its tags, the VMM moved one memslot and deleted
another, made one page read-only and ran the guest again (it read that page
and wrote the others), then unmapped one page (MADV_DONTNEED) and made
another read-only (truth ``host_changes``; l2vmm-notes.md).  KVM must have
zapped or downgraded those SPTEs.  In every view, from every vCPU's root:

- the page made read-only before the second run is mapped, at the HPA that
  pagemap gives, by a leaf with neither the W bit nor KVM's host-writable
  bit, and its tag is there (where the view holds the page);
- every other changed page has no leaf: its GVA under shadow paging; under
  TDP its old GPA, and for the moved memslot its new GPA too (the guest
  never touched it there);
- --hpa of each changed page the host still has (pagemap's PFN) names the
  read-only page at exactly its address, and no VM for the others.

--verify of the same VMs (checks/verify.py) must find no problem.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple

from ..matrix import VIEWS
from ..records import AddrKind, CellResult, HostChange, Problem, Truth, each_view

HOST_CHANGES = "host_changes"

READ_AGAIN = "mprotect_readonly_read"  # the one change the guest's second run maps again


class ChangedAddr(NamedTuple):
    addr: int
    change: HostChange
    which: str  # "gva", "gpa" or "new_gpa"


def changed_addrs(truth: Truth, kind: AddrKind) -> List[ChangedAddr]:
    """The addresses check_views.py walks with --addr, in order."""
    out = []
    for c in truth.get("host_changes") or []:
        out.append(ChangedAddr(c[kind], c, kind))
        if kind == "gpa" and c["new_gpa"] is not None:
            out.append(ChangedAddr(c["new_gpa"], c, "new_gpa"))
    return out


def changed_hpas(truth: Truth) -> List[Dict[str, Any]]:
    """What check_views.py asks --hpa: each changed page the host still has,
    at an offset inside the page ({"hpa", "change": index})."""
    return [
        {"hpa": c["pfn"] << 12 | 8 * (i + 1), "change": i}
        for i, c in enumerate(truth.get("host_changes") or [])
        if c["host_present"]
    ]


def check_host_changes(result: CellResult) -> List[Problem]:
    problems: List[Problem] = []
    kind = result["addr_kind"]
    for view, v in each_view(result, VIEWS):
        for name, truth in result["truth"].items():
            if not truth.get("host_changes"):
                continue
            run = (v["workloads"].get(name) or {}).get("host_changes")
            problems += _check_workload(view, f"{view} {name}", run, truth, kind)
    return problems


def _check_workload(view: str, where: str, run: Any, truth: Truth, kind: AddrKind) -> List[Problem]:
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(view, HOST_CHANGES, f"{where} host changes: {message}"))

    if not isinstance(run, dict):
        problem("not run")
        return problems
    want = changed_addrs(truth, kind)
    for vcpu in truth["vcpus"]:
        walks = run["walks"].get(str(vcpu)) or {}
        if walks.get("rc") != 0 or walks.get("stderr"):
            problem(f"vCPU {vcpu} --addr: exit {walks.get('rc')}: {walks.get('stderr')}")
            continue
        records = walks.get("records") or []
        if [w["addr"] for w in records] != [a.addr for a in want]:
            problem(f"vCPU {vcpu}: walked {[w['addr'] for w in records]}")
            continue
        for w, a in zip(records, want):
            what = f"vCPU {vcpu} {a.change['change']} {a.which} {a.addr:#x}"
            leaf = [s for s in w["steps"] if s["leaf"]]
            if a.change["change"] == READ_AGAIN:
                want_hpa = a.change["pfn"] << 12 | (a.addr & 0xFFF)
                flags = leaf[0]["flags"] if leaf else []
                if w["hpa"] != want_hpa or {"W", "host-writable"} & set(flags):
                    problem(
                        f"{what}: HPA {w['hpa']}, flags {flags}; want HPA {want_hpa:#x} "
                        f"read-only (pagemap, mprotect)"
                    )
                elif w.get("tag_at_hpa") not in (None, a.change["tag"]):
                    problem(f"{what}: {w['tag_at_hpa']:#x} at its HPA, not its tag")
            elif w["hpa"] is not None or leaf:
                problem(f"{what}: a leaf to HPA {w['hpa']} ({leaf}); KVM should have zapped it")
    hpa = run.get("hpa") or {}
    if hpa.get("rc") != 0 or hpa.get("stderr"):
        problem(f"--hpa: exit {hpa.get('rc')}: {hpa.get('stderr')}")
        return problems
    changes = truth["host_changes"]
    for asked in hpa.get("asked", []):
        c = changes[asked["change"]]
        x = asked["hpa"]
        maps = [r for r in hpa["records"] if r["hpa"] == x and r.get("vm") is not None]
        if c["change"] == READ_AGAIN:
            want_addr = c[kind] + (x & 0xFFF)
            if not maps or any(r["vm"] != truth["pid"] or r["addr"] != want_addr for r in maps):
                problem(f"--hpa {x:#x} ({c['change']}): {maps}; want {kind} {want_addr:#x}")
        elif maps:
            problem(f"--hpa {x:#x} ({c['change']}): mapped by {maps}; KVM should have zapped it")
    return problems
