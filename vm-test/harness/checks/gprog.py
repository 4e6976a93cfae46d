# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn_kvmwalk.gprog's guest Programs, against the ground truth.

check_views.py makes, per vCPU, a guest Program ``through="spte"`` and one
``through="memslot"`` and reads from each, at every tagged page, 16 bytes
from 8 before it and its 8-byte tag, at its GPA (physical) and its GVA
(virtual, through the guest's tables), beside ``truth_hex``: the same bytes
read at the HPAs the workload's own GVA -> GPA runs and pagemap give ("??"
where they give none or the view lacks the page).  Then once per workload a
``linux=True`` Program of the VM, through the memslots, at the kernel
addresses of the made-up Linux layout the VMM planted (``made_up_linux``:
vmcoreinfo note, swapper_pg_dir), and once per view README's guest-Program
block.

GUEST_PROGRAM:
- under TDP both Programs are made; under shadow paging ``spte`` is refused
  (the root maps GVAs) and ``memslot`` is made;
- every byte read equals the truth's, and a read where the truth lacks a
  byte must fail: nothing is made up;
- through the memslots a read fails only where the truth lacks a byte (the
  SPTEs may lack a page the guest never touched);
- a failure is a drgn FaultError at an address of the range;
- the tag reads give the tag wherever the view holds guest memory;
- a GPA past every memslot is a fault;
- ``linux=True`` finds the planted vmcoreinfo and reads the tags at the
  planted kernel addresses (a dump without guest memory: no note, said so).
README_GUEST: the README block printed the tag twice (or, without the
guest's memory in the view, raised a FaultError)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..matrix import VIEWS
from ..records import CellResult, Problem, Truth, each_vcpu_runs, each_view
from .read import READ_BEFORE, READ_LENGTH, no_guest_memory

GUEST_PROGRAM = "guest_program"
README_GUEST = "readme_guest"


def _fault_ok(got: Dict[str, Any], start: int, length: int) -> Optional[str]:
    """What is wrong with a failed read (None: a FaultError in the range)."""
    err = got.get("error") or ""
    if not err.startswith("FaultError: ") or len(err) <= len("FaultError: "):
        return f"failed without a FaultError: {err!r}"
    addr = got.get("address")
    if addr is None or not start <= addr < start + length:
        return f"FaultError at {addr}, outside {start:#x}+{length}: {err}"
    return None


def check_read(got: Dict[str, Any], start: int, strict: bool) -> List[str]:
    """A 16-byte read from ``start`` against its ``truth_hex``; ``strict``:
    it may fail only where the truth lacks a byte."""
    truth = got["truth_hex"]
    complete = "??" not in truth
    if got["bytes"] is not None:
        if not complete:
            return [f"read {got['bytes']} where the truth has {truth}"]
        if got["bytes"] != truth:
            return [f"read {got['bytes']}, at the truth's HPAs {truth}"]
        return []
    msgs = []
    why = _fault_ok(got, start, READ_LENGTH)
    if why:
        msgs.append(why)
    if strict and complete:
        msgs.append(f"could not read what the truth holds ({truth}): {got['error']}")
    return msgs


def check_tag(
    got: Dict[str, Any], start: int, tag: int, truth_tag: str, no_guest: bool
) -> List[str]:
    """An 8-byte read of a tag: the tag, or without the guest's memory in
    the view a fault (or what the view kept, byte for byte)."""
    want = tag.to_bytes(8, "little").hex()
    if got["bytes"] is not None:
        if got["bytes"] == want and (not no_guest or truth_tag == want):
            return []
        return [f"tag read {got['bytes']}, the guest wrote {want} (truth at HPA: {truth_tag})"]
    if not no_guest:
        return [f"the tag was not read: {got['error']}"]
    why = _fault_ok(got, start, 8)
    return [why] if why else []


def check_program(
    result: CellResult, view: str, through: str, run: Optional[Dict[str, Any]], truth: Truth
) -> List[str]:
    """What is wrong with one Program's reads (messages)."""
    tdp = result["addr_kind"] == "gpa"
    if run is None:
        return ["not run"]
    if through == "spte" and not tdp:
        err = run.get("error") or ""
        if not (err.startswith("ValueError: ") and "shadow-paging root" in err):
            return [f"under shadow paging, not refused as a shadow root: {str(run)[:300]}"]
        return []
    if run.get("error"):
        return [f"not made: {run['error']}"]
    no_guest = no_guest_memory(result, view)
    msgs: List[str] = []
    reads = run["reads"]
    if len(reads) != len(truth["pages"]):
        return [f"{len(reads)} reads for {len(truth['pages'])} pages"]
    for rec, page in zip(reads, truth["pages"]):
        for key, kind in (("phys", "gpa"), ("virt", "gva")):
            start = page[kind] - READ_BEFORE  # type: ignore[literal-required]
            where = f"{key} {start:#x}"
            got = rec[key]
            msgs += [f"{where}: {m}" for m in check_read(got, start, through == "memslot")]
            msgs += [
                f"{where} tag: {m}"
                for m in check_tag(
                    rec[key + "_tag"],
                    start + READ_BEFORE,
                    page["tag"],
                    got["truth_hex"][2 * READ_BEFORE : 2 * READ_LENGTH],
                    no_guest,
                )
            ]
    out = run["outside"]
    if out["bytes"] is not None:
        msgs.append(f"read {out['bytes']} at GPA {out['gpa']:#x}, past every memslot")
    else:
        why = _fault_ok(out, out["gpa"], 8)
        if why:
            msgs.append(f"past every memslot: {why}")
    return msgs


def check_linux(
    result: CellResult, view: str, run: Optional[Dict[str, Any]], truth: Truth
) -> List[str]:
    """``linux=True`` at the made-up kernel layout."""
    made_up = truth.get("made_up_linux")
    if made_up is None:
        return []
    if run is None:
        return ["linux=True not run"]
    no_guest = no_guest_memory(result, view)
    if run["error"]:
        if no_guest and run["error"].startswith("LookupError: no vmcoreinfo note"):
            return []  # the note is the VMM's memory too: not in this dump
        return [f"linux=True failed: {run['error']}"]
    msgs = []
    if "IS_LINUX_KERNEL" not in run["flags"]:
        msgs.append(f"flags {run['flags']}")
    if f"OSRELEASE={made_up['osrelease']}\n" not in run["vmcoreinfo"]:
        msgs.append(f"vmcoreinfo found is not the planted one: {run['vmcoreinfo'][:200]!r}")
    for got, (kva, gpa, tag) in zip(run["reads"], made_up["reads"]):
        want = tag.to_bytes(8, "little").hex()
        if got["bytes"] != want:
            msgs.append(f"kernel address {kva:#x} (GPA {gpa:#x}): {got}, the guest wrote {want}")
    if len(run["reads"]) != len(made_up["reads"]):
        msgs.append(f"{len(run['reads'])} kernel reads")
    return msgs


def check_readme_guest(result: CellResult, view: str, run: Optional[Dict[str, Any]]) -> List[str]:
    if run is None:
        return ["README's guest-Program block not run"]
    truth = next(iter(result["truth"].values()))
    tag = truth["pages"][0]["tag"].to_bytes(8, "little").hex()
    if run["error"] is None and run["stdout"] == f"{tag}\n{tag}\n":
        return []
    if no_guest_memory(result, view) and (run["error"] or "").startswith("FaultError: "):
        return []
    return [f"printed {run['stdout']!r}, raised {run['error']!r}; the guest wrote {tag}"]


def check_guest_programs(result: CellResult) -> List[Problem]:
    problems: List[Problem] = []
    for view, _, truth, vcpu, r, where in each_vcpu_runs(result, VIEWS):
        runs = r.get("guest_program")
        if runs is None:
            problems.append(Problem(view, GUEST_PROGRAM, f"{where}: not run"))
            continue
        for through in ("spte", "memslot"):
            problems += [
                Problem(view, GUEST_PROGRAM, f"{where} {through}: {m}")
                for m in check_program(result, view, through, runs.get(through), truth)
            ]
        if vcpu == truth["vcpus"][0]:
            problems += [
                Problem(view, GUEST_PROGRAM, f"{where} linux: {m}")
                for m in check_linux(result, view, runs.get("linux"), truth)
            ]
    for view, v in each_view(result, VIEWS):
        problems += [
            Problem(view, README_GUEST, m)
            for m in check_readme_guest(result, view, v.get("readme_guest"))
        ]
    return problems
