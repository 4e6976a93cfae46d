# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: walk every ground-truth address of an L2 workload through the
kvmwalk command line, in one drgn process, and read back what the guest wrote.

    drgn [-k | -c DUMP | --qemu SOCK] -s ... vm-test/check_views.py \\
        --truth NAME=truth.json [--truth ...] --out results.json [--view NAME] --addr-kind gpa|gva

For each vCPU of the workload it runs ``cli.main(prog, [--vm, --vcpu, --json,
--addr ...])`` exactly as a user would (GPAs under TDP, GVAs under shadow
paging), then reads 8 bytes at each HPA
the tool returned, so the test can compare them with the tag the guest wrote;
then ``--dump --json`` and ``--map --json`` for the vCPU, and once per view
``--list --json`` and ``--stats --json``.
The comparison itself is the test's job (tests/vm), against pagemap truth.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from drgn import FaultError, Program  # noqa: E402
from harness.checks.hostchanges import changed_addrs, changed_hpas  # noqa: E402
from harness.checks.read import READ_BEFORE, READ_LENGTH  # noqa: E402
from harness.records import truth_hpa  # noqa: E402
from readme_api import readme_block, run_block  # noqa: E402

from drgn_kvmwalk import find_vcpu, find_vm  # noqa: E402
from drgn_kvmwalk.cli import main as kvmwalk_main  # noqa: E402
from drgn_kvmwalk.gprog import GuestPhysical, find_vmcoreinfo, guest_program  # noqa: E402

if TYPE_CHECKING:  # the records are the harness's (vm-test/harness/records.py)
    from harness.records import AddrKind, Truth, VcpuRun, ViewResult, WorkloadRun


def run(prog: Program, truth: Truth, view: str, addr_kind: AddrKind) -> WorkloadRun:
    result: WorkloadRun = {"view": view, "addr_kind": addr_kind, "vcpus": {}}
    for vcpu in truth["vcpus"]:
        argv = ["--vm", str(truth["pid"]), "--vcpu", str(vcpu), "--json"]
        for page in truth["pages"]:
            argv += ["--addr", hex(page[addr_kind])]
        out, err = io.StringIO(), io.StringIO()
        t0 = time.monotonic()
        rc = kvmwalk_main(prog, argv, out=out, err=err)
        elapsed = time.monotonic() - t0
        walks = [json.loads(line) for line in out.getvalue().splitlines()]
        for w in walks:
            w["tag_at_hpa"] = read_tag(prog, w["hpa"])
        vcpu_run: VcpuRun = {
            "rc": rc,
            "stderr": err.getvalue(),
            "seconds": elapsed,
            "walks": walks,
        }
        result["vcpus"][str(vcpu)] = vcpu_run
        # The shadow pages behind the tables of a few walks.
        annotated = whole_table(
            prog,
            argv[:5]
            + ["--annotate"]
            + [
                a
                for page in truth["pages"][:: max(1, len(truth["pages"]) // 4)]
                for a in ("--addr", hex(page[addr_kind]))
            ],
        )
        vcpu_run["annotated"] = annotated
        # Every root the vCPU can reach, for the first page.
        vcpu_run["all_roots"] = whole_table(
            prog, argv[:5] + ["--root", "all", "--addr", hex(truth["pages"][0][addr_kind])]
        )
        # A guest that switched CR3 (l2vmm --switch-cr3): under shadow
        # paging its first root is in mmu->prev_roots.
        if truth["first_cr3"] != truth["cr3"]:
            vcpu_run["prev_root"] = whole_table(
                prog, argv[:5] + ["--root", "prev", "--annotate"] + argv[5:]
            )
        # The guest's view: every tagged GVA through the guest's tables and
        # KVM's (in every mode), with the tag at each HPA; for a guest that
        # switched CR3, the same from its first CR3 (a copy of the top table).
        gvas = [a for page in truth["pages"] for a in ("--gva", hex(page["gva"]))]
        vcpu_run["gva"] = with_tags(prog, whole_table(prog, argv[:5] + gvas))
        if truth["first_cr3"] != truth["cr3"]:
            vcpu_run["gva_first_cr3"] = whole_table(
                prog, argv[:5] + ["--cr3", hex(truth["first_cr3"])] + gvas
            )
        vcpu_run["gva_text"] = text_run(prog, argv[:4] + gvas[:4])
        # Guest memory through the walks: 16 bytes from 8 before each tagged
        # page (across a page boundary), as --addr takes the address and as
        # a GVA through the guest's tables, beside the bytes at the HPAs the
        # ground truth gives (``truth_hex``, "??" where it has none).
        vcpu_run["read"] = read_run(prog, truth, argv[:5], addr_kind)
        vcpu_run["read_gva"] = read_run(prog, truth, argv[:5] + ["--gva"], "gva")
        page0 = truth["pages"][0]
        vcpu_run["read_text"] = text_run(
            prog, argv[:4] + ["--gva", "--read", hex(page0["gva"]), "--length", "8"]
        )
        # The guest as a drgn Program (drgn_kvmwalk.gprog).
        vcpu_run["guest_program"] = guest_program_run(prog, truth, vcpu)
        # The whole table under the vCPU's root, as leaves and as ranges.
        # In this order: harness.checks.maps.check_map allows, live, only an Accessed bit that
        # the host cleared after --dump and before --map.
        whole = ["--vm", str(truth["pid"]), "--vcpu", str(vcpu)]
        vcpu_run["dump"] = whole_table(prog, [*whole, "--dump", "--json"])
        vcpu_run["map"] = whole_table(prog, [*whole, "--map", "--json"])
        vcpu_run["map_annotated"] = whole_table(
            prog, ["--vm", str(truth["pid"]), "--vcpu", str(vcpu), "--map", "--annotate", "--json"]
        )
    result["hpa"] = hpa_run(prog, truth, addr_kind, result["vcpus"])
    if truth.get("host_changes"):
        result["host_changes"] = host_changes_run(prog, truth, addr_kind)
    return result


def host_changes_run(prog: Program, truth: Truth, addr_kind: AddrKind) -> Any:
    """--addr, from each vCPU, of the pages l2vmm --host-changes changed
    (harness.checks.hostchanges.changed_addrs), with the tag at each HPA;
    and --hpa of those the host still has."""
    addrs = [a for x in changed_addrs(truth, addr_kind) for a in ("--addr", hex(x.addr))]
    walks = {}
    for vcpu in truth["vcpus"]:
        argv = ["--vm", str(truth["pid"]), "--vcpu", str(vcpu), "--json"]
        walks[str(vcpu)] = with_tags(prog, whole_table(prog, argv + addrs))
    asked = changed_hpas(truth)
    hpa = whole_table(prog, ["--json"] + [a for x in asked for a in ("--hpa", hex(x["hpa"]))])
    hpa["asked"] = asked
    return {"walks": walks, "hpa": hpa}


def hpa_run(prog: Program, truth: Truth, addr_kind: AddrKind, vcpus: Dict[str, VcpuRun]) -> Any:
    """--hpa of every tagged page's HPA by the pagemap (at an offset inside
    the page), and of the leaf table pages of the first vCPU's walks."""
    asked: List[Dict[str, Any]] = []
    for i, page in enumerate(truth["pages"]):
        hpa = truth_hpa(truth, "gpa", page["gpa"])
        if hpa is not None:
            asked.append({"hpa": hpa + 8 * (i % 512), "page": i})
    first = vcpus[str(truth["vcpus"][0])]
    for w in first["walks"][:4]:
        leaf = [s for s in w["steps"] if s["leaf"]]
        if leaf:
            asked.append(
                {
                    "hpa": leaf[0]["sptep"] & ~0xFFF,
                    "table_level": leaf[0]["level"],
                    "root": w["root_hpa"],
                }
            )
    run = whole_table(prog, ["--json"] + [a for x in asked for a in ("--hpa", hex(x["hpa"]))])
    run["asked"] = asked
    return run


def attempt(gprog: Program, addr: int, length: int, physical: bool) -> Any:
    """``length`` bytes at ``addr`` of ``gprog``: {bytes (hex) or None,
    error (the exception, as text) or None, address (a FaultError's)}."""
    try:
        return {"bytes": gprog.read(addr, length, physical).hex(), "error": None}
    except FaultError as e:
        return {"bytes": None, "error": f"FaultError: {e.message}", "address": e.address}
    except Exception as e:  # noqa: BLE001 (recorded for the test)
        return {"bytes": None, "error": f"{type(e).__name__}: {e}"}


def guest_program_run(prog: Program, truth: Truth, vcpu_id: int) -> Any:
    """Reads through drgn_kvmwalk.gprog's guest Programs of one vCPU: for
    each of ``spte`` and ``memslot``, 16 bytes from 8 before each tagged
    page and its 8-byte tag, at its GPA (physical) and its GVA (virtual),
    with the truth's bytes beside them, and one GPA past every memslot;
    then ``linux=True`` from the VM through the memslots, at the kernel
    addresses of the made-up layout l2vmm planted (``made_up_linux``)."""
    vcpu = find_vcpu(find_vm(prog, truth["pid"]), vcpu_id)
    result: Dict[str, Any] = {}
    for through in ("spte", "memslot"):
        try:
            gprog = guest_program(vcpu, through)
        except Exception as e:  # noqa: BLE001 (recorded for the test)
            result[through] = {"error": f"{type(e).__name__}: {e}"}
            continue
        reads = []
        for page in truth["pages"]:
            rec = {}
            for key, kind, physical in (("phys", "gpa", True), ("virt", "gva", False)):
                start = page[kind] - READ_BEFORE  # type: ignore[literal-required]
                rec[key] = attempt(gprog, start, READ_LENGTH, physical)
                rec[key]["truth_hex"] = truth_hex(prog, truth, kind, start, READ_LENGTH)  # type: ignore[arg-type]
                rec[key + "_tag"] = attempt(gprog, start + READ_BEFORE, 8, physical)
            reads.append(rec)
        end = max(m["gpa"] + m["size"] for m in truth["memslots"])
        result[through] = {
            "error": None,
            "reads": reads,
            "outside": dict(attempt(gprog, end, 8, True), gpa=end),
        }
    made_up = truth.get("made_up_linux")
    if made_up and vcpu_id == truth["vcpus"][0]:
        t0 = time.monotonic()
        linux: Dict[str, Any] = {"error": None}
        try:
            lprog = guest_program(vcpu.kvm, "memslot", linux=True)
            linux["seconds"] = time.monotonic() - t0
            linux["flags"] = str(lprog.flags)
            linux["reads"] = [attempt(lprog, kva, 8, False) for kva, _, _ in made_up["reads"]]
            text = find_vmcoreinfo(GuestPhysical(vcpu.kvm, "memslot"))
            linux["vmcoreinfo"] = text.decode(errors="replace")
        except Exception as e:  # noqa: BLE001 (recorded for the test)
            linux["error"] = f"{type(e).__name__}: {e}"
        result["linux"] = linux
    return result


README_GUEST = "<!-- guest-program -->"


def readme_guest_run(prog: Program, truth: Truth) -> Any:
    """README's guest-Program block, as it stands there, with ``prog``,
    ``pid``, and ``gpa`` and ``gva`` of the first tagged page set; what it
    printed, or the error it raised."""
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    code = readme_block(readme, README_GUEST)
    page = truth["pages"][0]
    scope: Dict[str, Any] = {
        "prog": prog,
        "pid": truth["pid"],
        "gpa": page["gpa"],
        "gva": page["gva"],
    }
    stdout, exc, _ = run_block(code, scope, "README.md (guest-program block)")
    error = None if exc is None else f"{type(exc).__name__}: {exc}"
    return {"code": code, "stdout": stdout, "error": error}


def with_tags(prog: Program, run: Any) -> Any:
    """``run``'s records, each with the 8 bytes at its HPA (``tag_at_hpa``,
    None where this view does not hold the page)."""
    for w in run["records"]:
        w["tag_at_hpa"] = read_tag(prog, w["hpa"])
    return run


def read_run(prog: Program, truth: Truth, argv: List[str], kind: AddrKind) -> Any:
    """--read of 16 bytes from 8 before each tagged page's ``kind`` address,
    each record with ``truth_hex``."""
    starts = [
        (page["gva"] if kind == "gva" else page["gpa"]) - READ_BEFORE for page in truth["pages"]
    ]
    argv = argv + ["--length", str(READ_LENGTH)]
    run_ = whole_table(prog, argv + [a for start in starts for a in ("--read", hex(start))])
    for rec, start in zip(run_["records"], starts):
        rec["truth_hex"] = truth_hex(prog, truth, kind, start, READ_LENGTH)
    return run_


def truth_hex(prog: Program, truth: Truth, kind: AddrKind, addr: int, length: int) -> str:
    """The bytes from guest address ``addr`` read at the HPAs of the ground
    truth (not the tool's walk), as hex, "??" for a byte it cannot give;
    one read per run of bytes contiguous in one host page."""
    hpas = [truth_hpa(truth, kind, a) for a in range(addr, addr + length)]
    out: List[str] = []
    i = 0
    while i < length:
        start = hpas[i]
        j = i + 1
        while (
            start is not None
            and j < length
            and hpas[j] == start + (j - i)
            and (start + (j - i)) & 0xFFF
        ):
            j += 1
        if start is None:
            out.append("??")
        else:
            try:
                out.append(prog.read(start, j - i, True).hex())
            except FaultError:
                out.append("??" * (j - i))
        i = j
    return "".join(out)


def read_tag(prog: Program, hpa: Optional[int]) -> Optional[int]:
    """The 8 bytes at ``hpa``, or None: no HPA, or not in this view (a
    filtered dump drops the guest's memory)."""
    if hpa is None:
        return None
    try:
        return int.from_bytes(prog.read(hpa, 8, True), "little")
    except FaultError:
        return None


def text_run(prog: Program, argv: List[str]) -> Any:
    """One kvmwalk run in this process, its text output kept as it is."""
    out, err = io.StringIO(), io.StringIO()
    rc = kvmwalk_main(prog, argv, out=out, err=err)
    return {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()}


def whole_table(prog: Program, argv: List[str]) -> Any:
    """One kvmwalk run in this process: its JSON records (JSON, so Any: a
    records.WalkRun, DumpRun, MapRun or StatsRun)."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    rc = kvmwalk_main(prog, argv, out=out, err=err)
    return {
        "rc": rc,
        "stderr": err.getvalue(),
        "seconds": time.monotonic() - t0,
        "records": [json.loads(line) for line in out.getvalue().splitlines()],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--truth",
        required=True,
        action="append",
        help="NAME=FILE: ground truth of one L2 workload (repeatable)",
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--view", default="unknown")
    ap.add_argument(
        "--addr-kind",
        choices=["gpa", "gva"],
        required=True,
        help="gpa under TDP, gva under shadow paging",
    )
    ap.add_argument(
        "--core",
        help="run under plain Python: open this dump as the kvmwalk "
        "console script does (drgn's reader, or kvmwalk's own for a "
        "kdump-compressed dump libkdumpfile refuses)",
    )
    ap.add_argument(
        "-s",
        "--symbols",
        action="append",
        default=[],
        help="with --core: debug info files (vmlinux, kvm.ko)",
    )
    args = ap.parse_args()
    if args.core:
        from drgn_kvmwalk.console import load_kvm_debug_info, open_core

        prog = open_core(args.core)
        load_kvm_debug_info(prog, args.symbols)
    else:
        prog = globals()["prog"]  # drgn's, when drgn runs this script
    result: ViewResult = {"view": args.view, "workloads": {}}
    out, err = io.StringIO(), io.StringIO()
    rc = kvmwalk_main(prog, ["--list", "--json"], out=out, err=err)
    result["list"] = {
        "rc": rc,
        "stderr": err.getvalue(),
        "vms": json.loads(out.getvalue())["vms"] if rc == 0 else None,
    }
    result["stats"] = whole_table(prog, ["--stats", "--json"])
    result["verify"] = whole_table(prog, ["--verify", "--json"])
    for i, spec in enumerate(args.truth):
        name, _, path = spec.partition("=")
        with open(path) as f:
            truth = json.load(f)
        if i == 0:
            result["readme_guest"] = readme_guest_run(prog, truth)
        result["workloads"][name] = run(
            prog,
            truth,
            args.view,
            args.addr_kind,
        )
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, args.out)


if __name__ == "__main__":
    main()
