#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run one cell of the VM test matrix: one L1 boot of one kernel in one MMU mode.

In that boot:
1. the L2 workload (build/l2vmm) starts in L1 and records its ground truth
   (memslots, GVA -> GPA -> HVA, HVA -> host PFN from /proc/self/pagemap, tags);
2. live view: inside L1, one ``drgn -k`` process walks every tagged address of
   both vCPUs (vm-test/check_views.py), and one whole ``drgn -k
   contrib/kvmwalk.py`` run walks one address (timed);
3. from the host while L1 runs: the same over QMP (``drgn --qemu``);
4. an ELF dump of L1 (QMP dump-guest-memory) and a kdump-compressed dump made
   from it by makedumpfile (DUMP_LEVEL), each walked the same way.

Results go to ``<workdir>/cell.json``; tests/vm asserts on them against the
truth.  For a developer in a hurry::

    vm-test/cell.py bookworm shadow        # prints a summary, exit 0 if all matched
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
sys.path.insert(0, str(HERE))

import kernels  # noqa: E402
from l1 import L1, L1Error, agent_command, compress_dump  # noqa: E402


class Workload(NamedTuple):
    """One L2 guest (build/l2vmm) run in the cell's L1 boot."""

    opts: List[str]  # extra l2vmm options
    root_level: Optional[int] = None  # when not the mode's: 32-bit guests under
    # shadow paging get a PAE root (3 levels)


class Mode(NamedTuple):
    """How L1 boots for one MMU mode, and which L2 workloads run in it."""

    append: List[str]  # L1 kernel command line (kvm_amd loads by itself at
    # boot under -cpu max: module parameters go here)
    cpu_features: List[str]  # appended to -cpu
    workloads: Dict[str, Workload]
    root_level: int  # the NPT/shadow root level the boot must give
    memory: str = "2G"  # L1 RAM

    def expected_root_level(self, suite: str, workload: str) -> int:
        level = self.workloads[workload].root_level or self.root_level
        # Before Linux kernel commit cb0f722aff6e ("KVM: x86/mmu: Support
        # shadowing NPT when 5-level paging is enabled in host") (in v5.15),
        # get_npt_level() gave 4 levels whatever the host's paging.
        if level == 5 and suite == "bullseye":
            return 4
        return level


# Under TDP, three guests whose data pages the host backs with 4K pages, with
# transparent huge pages, and with one 1 GiB hugetlbfs page: 4K, 2M and 1G
# leaves.  L1 reserves that 1 GiB page at boot (a 2G L1 cannot find a free,
# aligned GiB for it; 4G can).
_TDP_WORKLOADS = {
    "base": Workload([]),
    "thp": Workload(["--thp"]),
    "1g": Workload(["--backing", "hugetlb1g"]),
}
_HUGETLB_1G = ["hugepagesz=1G", "hugepages=1"]

MODES: Dict[str, Mode] = {
    # TDP MMU (off by default before v5.15) on 5-level host paging (-cpu max
    # has LA57): 5-level NPT roots.
    "tdp_mmu": Mode(["kvm.tdp_mmu=1", *_HUGETLB_1G], [], _TDP_WORKLOADS, 5, "4G"),
    # Legacy MMU on 4-level host paging: 4-level NPT roots.
    "legacy": Mode(["kvm.tdp_mmu=0", *_HUGETLB_1G], ["la57=off"], _TDP_WORKLOADS, 4, "4G"),
    # Shadow paging: the root follows the guest's paging.  A 64-bit guest
    # (4-level root); a 32-bit PAE guest and a 32-bit non-PAE guest, whose
    # shadow pages KVM enters through mmu->pae_root (3 levels); and a 64-bit
    # guest mapping its data with 2 MiB pages over THP-backed host memory,
    # which KVM shadows with 2M leaves.  The 64-bit guest starts on a copy of
    # its top-level table and then loads the real one, so KVM keeps its first
    # root in mmu->prev_roots (--root prev).
    "shadow": Mode(
        ["kvm_amd.npt=0"],
        [],
        {
            "base": Workload(["--switch-cr3"]),
            "pae": Workload(["--guest-paging", "pae"], root_level=3),
            "32": Workload(["--guest-paging", "32"], root_level=3),
            "2m": Workload(["--guest-2m", "--thp"]),
        },
        4,
    ),
}
VIEWS = ["live", "qmp", "elf", "kdump"]
# The kernels the tests cover (Debian suites; see kernels.py).  experimental
# carries the newest kernel while it has one (see kernels.OPTIONAL).
SUITES = ["bullseye", "bookworm", "trixie", "sid", "experimental"]
# makedumpfile's page filter (-d 31 drops user, cache and free pages) reads
# page flags whose layout changes between kernels; Debian bookworm's
# makedumpfile 1.7.2 misjudges 6.12's and drops module notes that drgn needs,
# so newer kernels get -d 1 (zero pages only, judged by content).
DUMP_LEVEL = {"bullseye": 31, "bookworm": 31, "trixie": 1, "sid": 1, "experimental": 1}


def addr_kind(mode: str) -> str:
    return "gva" if mode == "shadow" else "gpa"


def pagemap_hpa(page: Dict[str, Any], kind: str) -> int:
    """The host physical address of a tagged page's ``kind`` address (gpa or
    gva), from the PFN the VMM read in /proc/self/pagemap."""
    return int(page["pfn"]) << 12 | (page[kind] & 0xFFF)


def drgn_bin() -> str:
    cand = Path(sys.executable).parent / "drgn"
    return str(cand) if cand.exists() else "drgn"


def symbol_args(kernel: kernels.Kernel) -> List[str]:
    """drgn options that load vmlinux and kvm.ko and nothing else: the walk
    needs no vendor module, and searching debug info for every loaded module
    costs start-up time (much of it under TCG)."""
    kvm = [m for m in kernel.kvm_modules if Path(m).name.startswith("kvm.ko")]
    args = ["--no-default-symbols"]
    for path in [kernel.vmlinux, *kvm]:
        args += ["-s", path]
    return args


def _run(cmd: List[str], timeout: float) -> Dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return {
        "cmd": shlex.join(cmd),
        "rc": p.returncode,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "seconds": round(time.monotonic() - t0, 3),
    }


def run_cell(
    suite: str,
    mode: str,
    workdir: Path,
    log: Callable[[str], None] = print,
    keep_dumps: bool = False,
) -> Dict[str, Any]:
    kernel = kernels.fetch(suite, log=log)
    spec = MODES[mode]
    workdir.mkdir(parents=True, exist_ok=True)
    shared = workdir / "shared"
    truths = {name: shared / f"truth-{name}.json" for name in spec.workloads}
    first = truths[next(iter(truths))]
    drgn = drgn_bin()
    syms = symbol_args(kernel)
    kind = addr_kind(mode)
    l2vmm = TOP / "build" / "l2vmm"
    if not l2vmm.exists():
        raise RuntimeError(f"{l2vmm} is missing: run vm-test/setup")
    workloads = [
        shlex.join(
            [
                str(l2vmm),
                "--truth",
                str(truths[name]),
                *wl.opts,
                "--stop-file",
                str(shared / "release"),
                "--timeout",
                "1800",
            ]
        )
        for name, wl in spec.workloads.items()
    ]
    truth_args = [arg for name, path in truths.items() for arg in ("--truth", f"{name}={path}")]

    def views_cmd(target: List[str], view: str, out: Path) -> List[str]:
        return [
            drgn,
            *target,
            *syms,
            str(HERE / "check_views.py"),
            *truth_args,
            "--out",
            str(out),
            "--view",
            view,
            "--addr-kind",
            kind,
        ]

    def one_walk_cmd(target: List[str]) -> List[str]:
        # One address, as a user would type it; the address comes from the truth file.
        return [
            str(HERE / "walk_first"),
            str(first),
            kind,
            drgn,
            *target,
            *syms,
            str(TOP / "contrib" / "kvmwalk.py"),
        ]

    # The kvmwalk console script opens the target itself and loads only
    # vmlinux and the kvm modules (here from the -s files).
    console = str(Path(sys.executable).parent / "kvmwalk")
    console_syms = [a for f in syms if f.startswith("/") for a in ("-s", f)]

    def console_cmd(target: List[str]) -> List[str]:
        return [str(HERE / "walk_first"), str(first), kind, console, *target, *console_syms]

    def plugin_cmd(target: List[str]) -> List[str]:
        # %kvmwalk through drgn's own command machinery (the drgn.plugins
        # entry point registers it when drgn sets up the program).
        page = json.loads(first.read_text())
        command = f"kvmwalk --vm {page['pid']} --vcpu 0 --addr {hex(page['pages'][0][kind])}"
        # A failure is drgn's CommandError: its message, exit status 2.
        return [
            drgn,
            *target,
            *syms,
            "-e",
            "import sys\nfrom drgn.commands import CommandError, run_command\n"
            f"try:\n    run_command(prog, {command!r})\n"
            "except CommandError as e:\n    print(e, file=sys.stderr)\n    sys.exit(2)\n",
        ]

    checks = {
        "live": shlex.join(views_cmd(["-k"], "live", shared / "live.json")),
        "live-one": shlex.join(one_walk_cmd(["-k"])),
        "live-console": shlex.join(console_cmd(["-k"])),
    }
    result: Dict[str, Any] = {
        "suite": suite,
        "mode": mode,
        "release": kernel.release,
        "addr_kind": kind,
        "root_levels": {name: spec.expected_root_level(suite, name) for name in spec.workloads},
        "views": {},
        "one_walk": {},
        "console": {},
        "plugin": {},
    }
    t_cell = time.monotonic()
    with L1(
        kernel,
        append=spec.append,
        cpu_features=spec.cpu_features,
        workdir=workdir,
        memory=spec.memory,
        log=log,
        agent_cmd=agent_command(workloads, checks, python=sys.executable),
    ) as l1:
        ready = l1.wait_ready(900)
        result["ready"] = ready
        missing = [name for name, path in truths.items() if not path.exists()]
        if missing:
            raise RuntimeError(
                f"L2 workloads {missing} wrote no truth: {ready.get('errors')}; "
                f"see {shared}/workload-*.err and {l1.console_log}"
            )
        result["truth"] = {name: json.loads(path.read_text()) for name, path in truths.items()}
        for name in ("live", "live-one", "live-console"):
            check = {c["name"]: c for c in ready.get("checks", [])}.get(name, {})
            out_file = shared / f"check-{name}.out"
            err_file = shared / f"check-{name}.err"
            entry = {
                "rc": check.get("rc"),
                "seconds": check.get("seconds"),
                "stdout": out_file.read_text() if out_file.exists() else "",
                "stderr": err_file.read_text() if err_file.exists() else "",
            }
            if name == "live":
                live = shared / "live.json"
                result["views"]["live"] = (
                    json.loads(live.read_text()) if live.exists() else {"error": entry}
                )
            elif name == "live-one":
                result["one_walk"]["live"] = entry
            else:
                result["console"]["live"] = entry
        qmp = ["--qemu", str(l1.qmp_drgn)]
        r = _run(views_cmd(qmp, "qmp", workdir / "qmp.json"), 600)
        result["views"]["qmp"] = (
            json.loads((workdir / "qmp.json").read_text()) if r["rc"] == 0 else {"error": r}
        )
        result["one_walk"]["qmp"] = _run(one_walk_cmd(qmp), 600)
        result["console"]["qmp"] = _run(console_cmd(qmp), 600)
        result["plugin"]["qmp"] = _run(plugin_cmd(qmp), 600)
        result["errors"] = error_cases(drgn, qmp, syms, result["truth"], kind)
        # %kvmwalk --drgn's code beside the command; README's Python API block.
        first_truth = json.loads(first.read_text())
        result["drgn_code"] = first_page_script(
            drgn, qmp, syms, "drgn_code_check.py", first_truth, kind, workdir / "drgn_code.json"
        )
        result["readme_api"] = first_page_script(
            drgn,
            qmp,
            syms,
            "readme_api.py",
            first_truth,
            kind,
            workdir / "readme_api.json",
            ["--readme", str(TOP / "README.md")],
        )
        elf = workdir / "l1.elf"
        result["dump_seconds"] = round(l1.dump_elf(elf), 3)
        try:
            result["agent_rc"] = l1.release(180)
        except L1Error as e:
            # Everything was collected; an L1 that then fails to power off
            # (seen under TCG on a loaded host: an RCU stall, then nothing) is
            # stopped by L1.__exit__ and reported, not taken for a tool failure.
            result["agent_rc"] = None
            result["release_error"] = str(e)[-2000:]
            log(f"[cell] {suite}/{mode}: L1 did not power off after release; stopped it")
    log(f"[cell] {suite}/{mode}: L1 done after {time.monotonic() - t_cell:.0f}s")
    kdump = workdir / "l1.kdump"
    result["dump_level"] = DUMP_LEVEL.get(suite, 1)
    result["compress_seconds"] = round(compress_dump(elf, kdump, result["dump_level"]), 3)
    result["libkdumpfile_reads"] = libkdumpfile_reads(kernel.release)
    result["kdump_reader"] = compare_kdump_reader(elf, kdump, result["truth"])
    for view, path in (("elf", elf), ("kdump", kdump)):
        out = workdir / f"{view}.json"
        if view == "kdump":
            # Opened as the console script opens it: drgn's reader, or
            # kvmwalk's own where libkdumpfile refuses the dump.
            cmd = [
                sys.executable,
                str(HERE / "check_views.py"),
                "--core",
                str(path),
                *console_syms,
                *truth_args,
                "--out",
                str(out),
                "--view",
                view,
                "--addr-kind",
                kind,
            ]
        else:
            cmd = views_cmd(["-c", str(path)], view, out)
        r = _run(cmd, 600)
        result["views"][view] = json.loads(out.read_text()) if r["rc"] == 0 else {"error": r}
        result["one_walk"][view] = _run(one_walk_cmd(["-c", str(path)]), 600)
        result["console"][view] = _run(console_cmd(["-c", str(path)]), 600)
        result["plugin"][view] = _run(plugin_cmd(["-c", str(path)]), 600)
    if not keep_dumps:
        for path in (elf, kdump):
            path.unlink(missing_ok=True)
    result["seconds"] = round(time.monotonic() - t_cell, 1)
    (workdir / "cell.json").write_text(json.dumps(result, indent=1))
    return result


def libkdumpfile_reads(release: str) -> bool:
    """Whether libkdumpfile, drgn's reader of kdump-compressed dumps, reads a
    dump of kernel ``release``: its linux_ver_revalidate() (0.5.x,
    src/kdumpfile/util.c) wants VERSION.PATCHLEVEL.SUBLEVEL before it reads a
    page, which Debian experimental's release candidates (7.3-amd64) lack."""
    return re.match(r"\d+\.\d+\.\d", release) is not None


# What contrib/kvmwalk.py and %kvmwalk say on a dump libkdumpfile refuses.
KDUMP_REFUSED_HINT = "kvmwalk -c DUMP) reads kdump-compressed dumps that libkdumpfile refuses"


def compare_kdump_reader(
    elf: Path, kdump: Path, truths: Dict[str, Any], sample: int = 512
) -> Dict[str, Any]:
    """drgn_kvmwalk.kdump's pages of the kdump-compressed dump beside the same
    pages of the ELF dump it was made from (read by drgn's own ELF reader):
    every tagged page the dump holds, and ``sample`` more spread over it."""
    import drgn

    from drgn_kvmwalk.kdump import KdumpFile

    dump = KdumpFile(str(kdump))
    prog = drgn.Program()
    prog.set_core_dump(str(elf))
    held = [int(p) for p in dump.dumped.nonzero()[0]]
    tagged = {int(p["pfn"]) for t in truths.values() for p in t["pages"]}
    tagged = {p for p in tagged if p < len(dump.dumped) and dump.dumped[p]}
    pfns = sorted(tagged | set(held[:: max(1, len(held) // sample)]))
    mismatches = []
    for pfn in pfns:
        try:
            same = dump.page(pfn) == prog.read(pfn << 12, 4096, True)
        except Exception as e:  # noqa: BLE001 (reported, not hidden)
            mismatches.append(f"pfn {pfn:#x}: {e}")
            continue
        if not same:
            mismatches.append(f"pfn {pfn:#x}: differs from the ELF dump")
    dump.close()
    return {
        "release": dump.release,
        "held": len(held),
        "compared": len(pfns),
        "tagged": len(tagged),
        "mismatches": mismatches[:50],
    }


def check_kdump_views(result: Dict[str, Any]) -> List[str]:
    """kvmwalk's kdump reader gave the ELF dump's pages; where libkdumpfile
    refuses the dump, contrib/kvmwalk.py under drgn -c said so in one line."""
    r = result["kdump_reader"]
    problems = [f"kdump reader: {m}" for m in r["mismatches"]]
    if r["compared"] == 0 or (r["tagged"] == 0 and result.get("dump_level", 31) & 8 == 0):
        problems.append(f"kdump reader: compared {r['compared']} pages ({r['tagged']} tagged)")
    if not result["libkdumpfile_reads"]:
        w = result["one_walk"]["kdump"]
        lines = w.get("stderr", "").strip().splitlines()
        if w.get("rc") != 2 or not lines or KDUMP_REFUSED_HINT not in lines[-1]:
            problems.append(
                f"kdump one walk: libkdumpfile refuses {result['release']}, but "
                f"drgn -c contrib/kvmwalk.py did not say so: rc {w.get('rc')}, "
                f"{w.get('stderr', '')[-300:]!r}"
            )
    return problems


def first_page_script(
    drgn: str,
    target: List[str],
    syms: List[str],
    script: str,
    truth: Dict[str, Any],
    kind: str,
    out: Path,
    extra: Sequence[str] = (),
) -> Dict[str, Any]:
    """Run the drgn script vm-test/``script`` on the target for the
    workload's VM and its first tagged page (``--pid``, ``--addr``); its
    JSON result, or the failed run."""
    page = truth["pages"][0]
    argv = [str(HERE / script), *extra, "--pid", str(truth["pid"]), "--addr", hex(page[kind])]
    r = _run([drgn, *target, *syms, *argv, "--out", str(out)], 600)
    if r["rc"] != 0 or not out.exists():
        return {"error": json.dumps(r)[-3000:]}
    return dict(json.loads(out.read_text()))


def error_cases(
    drgn: str, target: List[str], syms: List[str], truths: Dict[str, Dict[str, Any]], kind: str
) -> Dict[str, Dict[str, Any]]:
    """Run contrib/kvmwalk.py with wrong or incomplete input against the real
    kernel; tests/vm checks the exit status and the one-line message."""
    truth = next(iter(truths.values()))
    script = str(TOP / "contrib" / "kvmwalk.py")
    pid = str(truth["pid"])
    addr = hex(truth["pages"][0][kind])
    vmlinux_only = syms[: syms.index("-s") + 2]  # --no-default-symbols -s vmlinux
    cases = {
        "not_a_vm": [*syms, script, "--vm", "1", "--vcpu", "0", "--addr", addr],
        "no_such_vcpu": [*syms, script, "--vm", pid, "--vcpu", "7", "--addr", addr],
        "beyond_root": [*syms, script, "--vm", pid, "--vcpu", "0", "--addr", hex(1 << 60)],
        "malformed": [*syms, script, "--vm", pid, "--vcpu", "0", "--addr", "0xZZ"],
        "no_kvm_debug_info": [*vmlinux_only, script, "--vm", pid, "--vcpu", "0", "--addr", addr],
        # Without --vm: fine with one VM, an error listing them with several.
        "vm_omitted": [*syms, script, "--vcpu", "1", "--addr", addr],
        # A GPA/GVA nobody touched: an answer, not an error.
        "unmapped": [*syms, script, "--vm", pid, "--vcpu", "1", "--addr", hex(0x3FFF_F000)],
    }
    return {name: _run([drgn, *target, *argv], 300) for name, argv in cases.items()}


SIZE_4K, SIZE_2M, SIZE_1G = 4 << 10, 2 << 20, 1 << 30


def expected_page_size(result: Dict[str, Any], truth: Dict[str, Any], page: Dict[str, Any]) -> int:
    """The leaf size KVM must use for ``page``, from how the workload backs it.

    Under TDP the leaf follows the host mapping (slot 1's GPA and HVA are
    aligned to 1 GiB, so nothing else limits it): a 1 GiB hugetlbfs page gives
    1G leaves, a page the host backs with a THP (``/proc/kpageflags``) 2M ones.
    Under shadow paging the leaf is also bounded by the guest's own page: 2M
    where the guest maps the page with a 2 MiB page over a huge host page,
    otherwise 4K.
    """
    backing = {s["slot"]: s.get("backing", "anon") for s in truth["memslots"]}[page["slot"]]
    host = SIZE_1G if backing == "hugetlb1g" else SIZE_2M if page.get("host_thp") else SIZE_4K
    if result["addr_kind"] == "gpa":
        return host
    guest = SIZE_2M if truth.get("guest_2m") and page["slot"] == 1 else SIZE_4K
    return min(host, guest)


def check_cell(result: Dict[str, Any]) -> List[str]:
    """Every mismatch between the tool's answers and the ground truth, as text.

    For each view, workload, vCPU and tagged page: the walk succeeded from a
    root of the expected kind and level (entered through pae_root for a PAE
    root), the HPA is the pagemap PFN plus the page offset, the leaf size is
    what the backing gives, and, where the view holds the page, the 8 bytes at
    that HPA are the tag the guest wrote.
    """
    problems: List[str] = []
    kind = result["addr_kind"]
    expect_mmu = "shadow" if kind == "gva" else "tdp"
    for view in VIEWS:
        v = result["views"].get(view)
        if v is None or "error" in v:
            problems.append(f"{view}: no result: {json.dumps(v)[:2000]}")
            continue
        for name, truth in result["truth"].items():
            wl = v["workloads"].get(name)
            if wl is None:
                problems.append(f"{view} {name}: not walked")
                continue
            for vcpu in truth["vcpus"]:
                r = wl["vcpus"].get(str(vcpu))
                if r is None or r["rc"] != 0:
                    problems.append(
                        f"{view} {name} vcpu {vcpu}: kvmwalk failed: {r and r['stderr']}"
                    )
                    continue
                walks = {w["addr"]: w for w in r["walks"]}
                for page in truth["pages"]:
                    want = {
                        "mmu": expect_mmu,
                        "root_level": result["root_levels"][name],
                        "page_size": expected_page_size(result, truth, page),
                    }
                    problems += _check_page(
                        result,
                        view,
                        f"{view} {name} vcpu {vcpu}",
                        walks.get(page[kind]),
                        page,
                        want,
                    )
    return problems


def _check_page(
    result: Dict[str, Any],
    view: str,
    where: str,
    w: Any,
    page: Dict[str, Any],
    want: Dict[str, Any],
) -> List[str]:
    kind = result["addr_kind"]
    where = f"{where} {kind} {page[kind]:#x}"
    if w is None:
        return [f"{where}: not walked"]
    problems = []
    for key in ("mmu", "root_level"):
        if w[key] != want[key]:
            problems.append(f"{where}: {key} {w[key]}, expected {want[key]}")
    first = w["steps"][0]["kind"] if w["steps"] else None
    if (first == "pae_root") != (want["root_level"] == 3):
        problems.append(f"{where}: first step is {first!r} under a {want['root_level']}-level root")
    hpa = pagemap_hpa(page, kind)
    if w["hpa"] != hpa:
        got = "unmapped (" + str(w["stop"]) + ")" if w["hpa"] is None else hex(w["hpa"])
        problems.append(f"{where}: HPA {got}, pagemap says {hpa:#x}")
    elif w["page_size"] != want["page_size"]:
        problems.append(f"{where}: {w['page_size']:#x}-byte leaf, expected {want['page_size']:#x}")
    elif w["tag_at_hpa"] is None:
        if view != "kdump" or result.get("dump_level", 31) & 8 == 0:
            # only makedumpfile -d with 8 drops user pages
            problems.append(f"{where}: HPA {hpa:#x} not readable in this view")
    elif w["tag_at_hpa"] != page["tag"]:
        problems.append(f"{where}: {w['tag_at_hpa']:#x} at HPA, tag is {page['tag']:#x}")
    return problems


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


def check_whole_tables(result: Dict[str, Any]) -> List[str]:
    """--list, --map, --dump and --stats against the workload's own records.

    --list: the VM, its vCPUs with the root each walk started from, and its
    memslots exactly as the VMM created them.  --map: every range translates,
    byte for byte, as the guest's tables (shadow paging) and the host's
    pagemap say, and every tagged page is in a range.  --dump: the same
    leaves as --map, each inside its range.  --stats: the leaves counted in
    all of the VM's tables equal KVM's own counters.  --root prev: a guest
    that switched CR3 still translates through its first root.
    """
    problems: List[str] = []
    kind = result["addr_kind"]
    for view in VIEWS:
        v = result["views"].get(view)
        if v is None or "error" in v:
            continue  # check_cell reports it
        lst = v.get("list") or {}
        if lst.get("rc") != 0:
            problems.append(f"{view} --list failed: {lst.get('stderr')}")
            continue
        vms = {vm["pid"]: vm for vm in lst["vms"]}
        stats = v.get("stats") or {}
        if stats.get("rc") != 0 or stats.get("stderr"):
            problems.append(f"{view} --stats failed: {stats.get('stderr')}")
        by_pid = {r["vm"]: r for r in stats.get("records", [])}
        for name, truth in result["truth"].items():
            st = by_pid.get(truth["pid"])
            # Before Linux kernel commit 1699f65c8b65 (v5.13) KVM did not count
            # the TDP MMU's large pages in lpages: on Debian's 5.10 the tool
            # must flag that difference and explain it.
            old_lpages = result["suite"] == "bullseye" and result["mode"] == "tdp_mmu"
            if st is not None and old_lpages and name in ("thp", "1g"):
                if st["differences"] != ["lpages"] or len(st.get("notes") or []) != 1:
                    problems.append(
                        f"{view} {name} --stats: the 5.10 lpages gap is not "
                        f"flagged and explained: {st}"
                    )
            elif st is None or not st["match"]:
                problems.append(f"{view} {name} --stats: leaves and KVM's counters differ: {st}")
            # Every table page is counted, the TDP MMU's too: at least the
            # pages that hold --dump's leaves, and a root above them.
            leaf_tables = {
                rec["sptep"] >> 12
                for r in v["workloads"][name]["vcpus"].values()
                for rec in (r.get("dump") or {}).get("records", [])
            }
            if st is not None and st["tables"] < len(leaf_tables) + 1:
                problems.append(
                    f"{view} {name} --stats: {st['tables']} table pages read, but "
                    f"--dump's leaves lie in {len(leaf_tables)} table pages under "
                    "a root"
                )
            where = f"{view} {name}"
            vm = vms.get(truth["pid"])
            if vm is None:
                problems.append(f"{where} --list: no VM with pid {truth['pid']}")
                continue
            problems += _check_list(result, name, where, vm, truth, v["workloads"][name])
            wl = v["workloads"][name]
            for vcpu in truth["vcpus"]:
                r = wl["vcpus"].get(str(vcpu), {})
                problems += _check_annotated(
                    result, f"{where} vcpu {vcpu}", r.get("annotated"), truth
                )
                problems += _check_all_roots(
                    result, f"{where} vcpu {vcpu}", r.get("all_roots"), r.get("walks") or [], truth
                )
                problems += _check_prev_root(
                    f"{where} vcpu {vcpu}", r.get("prev_root"), r.get("walks") or [], truth, kind
                )
                problems += _check_map_annotated(
                    result, f"{where} vcpu {vcpu}", r.get("map_annotated"), r.get("map")
                )
                problems += _check_map(
                    result,
                    f"{where} vcpu {vcpu}",
                    r.get("map"),
                    r.get("dump"),
                    truth,
                    truth["pages"],
                    kind,
                    live=view == "live",
                )
    return problems


def _sp_level_ok(result: Dict[str, Any], sp: Dict[str, Any], level: int, root: bool) -> bool:
    """The kvm_mmu_page of a level-``level`` table has that level; except that
    before Linux kernel commit f1b832550832 ("KVM: x86/mmu: Fix TDP MMU page
    table level") (v5.14) a TDP MMU child page got its parent's level, which
    Debian's 5.10 shows."""
    if sp["level"] == level:
        return True
    return result["suite"] == "bullseye" and sp["tdp_mmu"] and not root and sp["level"] == level + 1


def _check_annotated(
    result: Dict[str, Any], where: str, ann: Any, truth: Dict[str, Any]
) -> List[str]:
    """--annotate: every table on the path has its struct kvm_mmu_page, of the
    step's level; under TDP it maps the GFN range the step covers, under
    shadow paging it shadows one of the guest's own page-table pages."""
    if not ann or ann["rc"] != 0:
        return [f"{where} --annotate failed: {ann and ann['stderr']}"]
    problems = []
    guest_tables = {gpa >> 12 for gpa in truth["guest_pt_pages"]}
    for w in ann["records"]:
        for i, step in enumerate(w["steps"]):
            if step["kind"] == "pae_root":
                continue
            sp = step.get("sp")
            at = f"{where} --annotate {w['addr']:#x} level {step['level']}"
            if sp is None:
                problems.append(f"{at}: no kvm_mmu_page")
                continue
            if not _sp_level_ok(result, sp, step["level"], i == 0) or sp["invalid"]:
                problems.append(f"{at}: kvm_mmu_page {sp}")
            if result["addr_kind"] == "gpa":
                span = 9 * step["level"]
                if not sp["direct"] or sp["gfn"] != (w["addr"] >> 12) >> span << span:
                    problems.append(
                        f"{at}: kvm_mmu_page gfn {sp['gfn']:#x}, direct "
                        f"{sp['direct']}: not the GFNs the table maps"
                    )
            elif not sp["direct"] and sp["gfn"] not in guest_tables:
                problems.append(
                    f"{at}: kvm_mmu_page shadows gfn {sp['gfn']:#x}, not a guest page table"
                )
            if i == 0 and sp["root_count"] < 1:
                problems.append(f"{at}: the root's kvm_mmu_page has root_count {sp['root_count']}")
    return problems


def _check_map_annotated(result: Dict[str, Any], where: str, ann: Any, mp: Any) -> List[str]:
    """--map --annotate: the same addresses as --map, each range with the
    struct kvm_mmu_page of its table, of the range's level."""
    if not ann or ann["rc"] != 0 or not mp:
        return [f"{where} --map --annotate failed: {ann and ann['stderr']}"]

    def covered(records: List[Dict[str, Any]]) -> List[List[int]]:
        out: List[List[int]] = []
        for r in records:
            if out and out[-1][1] == r["start"]:
                out[-1][1] = r["end"]
            else:
                out.append([r["start"], r["end"]])
        return out

    problems = []
    if covered(ann["records"]) != covered(mp["records"]):
        problems.append(f"{where} --map --annotate: covers other addresses than --map")
    for r in ann["records"]:
        sp = r.get("sp")
        if sp is None or not _sp_level_ok(result, sp, r["level"], False):
            problems.append(f"{where} --map --annotate: range {r['start']:#x}: sp {sp}")
            break
    return problems


def _check_all_roots(
    result: Dict[str, Any], where: str, ar: Any, walks: List[Dict[str, Any]], truth: Dict[str, Any]
) -> List[str]:
    """--root all: the current root is among the labelled roots and gives the
    same answer as the plain walk; every root is listed once."""
    if not ar or ar["rc"] != 0:
        return [f"{where} --root all failed: {ar and ar['stderr']}"]
    recs = ar["records"]
    labels = [r.get("root") for r in recs]
    problems = []
    if labels.count("current") != 1 or len({r["root_hpa"] for r in recs}) != len(recs):
        problems.append(f"{where} --root all: roots {labels}")
    cur = [r for r in recs if r.get("root") == "current"]
    first = walks[0] if walks else None
    if cur and first and (cur[0]["root_hpa"], cur[0]["hpa"]) != (first["root_hpa"], first["hpa"]):
        problems.append(f"{where} --root all: the current root's walk differs from --addr's")
    if _switched_cr3(truth) and not any(str(lb).startswith("prev[") for lb in labels):
        problems.append(f"{where} --root all: no previous root, though the guest switched CR3")
    return problems


def _switched_cr3(truth: Dict[str, Any]) -> bool:
    return bool(truth["first_cr3"] != truth["cr3"])


def _check_prev_root(
    where: str, pr: Any, walks: List[Dict[str, Any]], truth: Dict[str, Any], kind: str
) -> List[str]:
    """--root prev --annotate, for a guest that started on a copy of its
    top-level table and then loaded the real one (l2vmm --switch-cr3): KVM
    kept the first root in mmu->prev_roots (fast_pgd_switch()).  It is the
    one previous root, its kvm_mmu_page shadows the first CR3's table, it is
    not the current root, and through it every tagged page still reaches the
    pagemap HPA (the guest wrote every tag under both CR3s)."""
    if not _switched_cr3(truth):
        return []
    if not pr or pr["rc"] != 0 or pr["stderr"]:
        return [f"{where} --root prev failed: {pr and pr['stderr']}"]
    recs = pr["records"]
    labels = sorted({r.get("root") for r in recs})
    if len(labels) != 1 or not str(labels[0]).startswith("prev["):
        return [f"{where} --root prev: roots {labels}, expected the one the first CR3 had"]
    problems = []
    root_sp = recs[0]["steps"][0].get("sp") if recs and recs[0]["steps"] else None
    if root_sp is None or root_sp["gfn"] != truth["first_cr3"] >> 12 or root_sp["direct"]:
        problems.append(
            f"{where} --root prev: root kvm_mmu_page {root_sp}, expected one "
            f"shadowing gfn {truth['first_cr3'] >> 12:#x} (the first CR3)"
        )
    if walks and recs[0]["root_hpa"] == walks[0].get("root_hpa"):
        problems.append(f"{where} --root prev: the previous root is the current one")
    if len(recs) != len(truth["pages"]):
        problems.append(
            f"{where} --root prev: {len(recs)} walks for {len(truth['pages'])} addresses"
        )
    for rec, page in zip(recs, truth["pages"]):
        want = pagemap_hpa(page, kind)
        if rec["addr"] != page[kind] or rec["hpa"] != want:
            problems.append(
                f"{where} --root prev: {rec['addr']:#x} -> HPA {rec['hpa']}, pagemap says {want:#x}"
            )
            break
    return problems


def _check_list(
    result: Dict[str, Any],
    name: str,
    where: str,
    vm: Dict[str, Any],
    truth: Dict[str, Any],
    walked: Dict[str, Any],
) -> List[str]:
    problems = []
    want_mmu = "shadow" if result["addr_kind"] == "gva" else "npt"
    want_tdp_mmu = result["mode"] == "tdp_mmu"
    if (vm["mmu"], vm["tdp_mmu"]) != (want_mmu, want_tdp_mmu):
        problems.append(
            f"{where} --list: mmu {vm['mmu']} tdp_mmu {vm['tdp_mmu']}, expected "
            f"{want_mmu} {want_tdp_mmu}"
        )
    if vm["stats_id"] not in (None, f"kvm-{truth['pid']}"):
        problems.append(f"{where} --list: stats_id {vm['stats_id']}")
    if sorted(c["id"] for c in vm["vcpus"]) != sorted(truth["vcpus"]):
        problems.append(f"{where} --list: vCPUs {[c['id'] for c in vm['vcpus']]}")
    for c in vm["vcpus"]:
        walks = walked["vcpus"].get(str(c["id"]), {}).get("walks") or [{}]
        want = (walks[0].get("root_hpa"), result["root_levels"][name], result["addr_kind"] == "gpa")
        got = (c["root_hpa"], c["root_level"], c["direct"])
        if got != want:
            problems.append(f"{where} --list: vCPU {c['id']} root {got}, the walk used {want}")
    want_slots = sorted(
        (m["as_id"], m["slot"], m["gpa"] >> 12, m["size"] >> 12, m["hva"], m["flags"])
        for m in truth["memslots"]
    )
    got_slots = sorted(
        (m["as_id"], m["id"], m["base_gfn"], m["npages"], m["hva"], m["flags"])
        for m in vm["memslots"]
    )
    if got_slots != want_slots:
        problems.append(f"{where} --list: memslots {got_slots}, the VMM made {want_slots}")
    return problems


def _aged(dump_flags: List[str], map_flags: List[str]) -> bool:
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


def _check_map(
    result: Dict[str, Any],
    where: str,
    mp: Any,
    dump: Any,
    truth: Dict[str, Any],
    pages: List[Dict[str, Any]],
    kind: str,
    live: bool = False,
) -> List[str]:
    if not mp or mp["rc"] != 0 or mp["stderr"]:
        return [f"{where} --map failed: {mp and mp['stderr']}"]
    if not dump or dump["rc"] != 0 or dump["stderr"]:
        return [f"{where} --dump failed: {dump and dump['stderr']}"]
    problems: List[str] = []
    ranges = mp["records"]
    prev = -1
    for r in ranges:
        if r["start"] < prev or r["end"] <= r["start"]:
            problems.append(f"{where} --map: range {r['start']:#x}-{r['end']:#x} out of order")
        prev = r["end"]
        length = r["end"] - r["start"]
        if kind == "gpa":
            gpa_pieces = [[0, r["start"], length]]
        else:
            gpa_pieces = resolve(truth["guest_maps"], r["start"], length) or []
            if sum(p[2] for p in gpa_pieces) != length:
                problems.append(
                    f"{where} --map: GVA {r['start']:#x}-{r['end']:#x} is not "
                    f"(all) mapped by the guest's page tables"
                )
                continue
        for off, gpa, n in gpa_pieces:
            host = resolve(truth["host_runs"], gpa, n)
            if host is None:
                problems.append(
                    f"{where} --map: {r['start'] + off:#x} (GPA {gpa:#x}, "
                    f"{n:#x} bytes) is not all present in the host's pagemap"
                )
                break
            bad = [h for h in host if h[1] != r["hpa"] + off + h[0]]
            if bad:
                problems.append(
                    f"{where} --map: {r['start'] + off + bad[0][0]:#x} -> HPA "
                    f"{r['hpa'] + off + bad[0][0]:#x}, pagemap says {bad[0][1]:#x}"
                )
                break
    starts = [r["start"] for r in ranges]
    for page in pages:
        i = bisect.bisect_right(starts, page[kind]) - 1
        r = ranges[i] if i >= 0 else None
        if r is None or not r["start"] <= page[kind] < r["end"]:
            problems.append(f"{where} --map: tagged {kind} {page[kind]:#x} in no range")
        elif r["hpa"] + page[kind] - r["start"] != pagemap_hpa(page, kind):
            problems.append(f"{where} --map: tagged {kind} {page[kind]:#x} to the wrong HPA")
    leaves = dump["records"]
    if len(leaves) != sum((r["end"] - r["start"]) >> (12 + 9 * (r["level"] - 1)) for r in ranges):
        problems.append(f"{where} --dump: {len(leaves)} leaves, --map ranges hold another number")
    # check_views.py runs --dump before --map.
    for leaf in leaves:
        i = bisect.bisect_right(starts, leaf["addr"]) - 1
        r = ranges[i] if i >= 0 else None
        if (
            r is None
            or not r["start"] <= leaf["addr"] < r["end"]
            or r["level"] != leaf["level"]
            or r["hpa"] + leaf["addr"] - r["start"] != leaf["hpa"]
        ):
            problems.append(f"{where} --dump: leaf {leaf['addr']:#x} disagrees with --map")
            break
        if r["flags"] != leaf["flags"] and not (live and _aged(leaf["flags"], r["flags"])):
            problems.append(
                f"{where} --dump: leaf {leaf['addr']:#x} has flags "
                f"{leaf['flags']}, its --map range {r['flags']}"
            )
            break
    return problems


def check_entry_points(result: Dict[str, Any]) -> List[str]:
    """The kvmwalk console script and %kvmwalk walked the first tagged page
    to the pagemap HPA."""
    page = next(iter(result["truth"].values()))["pages"][0]
    want = f"=> HPA {pagemap_hpa(page, result['addr_kind']):#x} "
    problems = []
    for what in ("console", "plugin"):
        for view, r in result.get(what, {}).items():
            if what == "plugin" and view == "kdump" and not result["libkdumpfile_reads"]:
                if KDUMP_REFUSED_HINT not in r.get("stderr", "") or want in r.get("stdout", ""):
                    problems.append(
                        f"kdump plugin: libkdumpfile refuses "
                        f"{result['release']}, but %kvmwalk did not say so: "
                        f"{r.get('stderr', '')[-300:]!r}"
                    )
                continue
            if r.get("rc") != 0 or want not in r.get("stdout", ""):
                problems.append(
                    f"{view} {what}: rc {r.get('rc')}, stdout "
                    f"{r.get('stdout', '')[-300:]!r}, stderr "
                    f"{r.get('stderr', '')[-300:]!r}"
                )
    return problems


def use_project_venv() -> None:
    """Run this script again under the project's .venv Python (vm-test/setup
    makes it, with drgn, virtme-ng and the tool) when another Python started
    it: the cell runs drgn and the tool from the same environment, in L1 too."""
    venv = TOP / ".venv"
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"{sys.argv[0]}: {venv} is missing: run vm-test/setup first")
    os.execv(str(python), [str(python), *sys.argv])


def main() -> int:
    use_project_venv()
    ap = argparse.ArgumentParser(description="Run one (kernel, MMU mode) cell of the VM tests.")
    ap.add_argument("suite", choices=sorted(kernels.SUITES), help="Debian suite of the L1 kernel")
    ap.add_argument("mode", choices=sorted(MODES), help="KVM MMU mode in L1")
    ap.add_argument("--workdir", type=Path, help="default: build/vm/<suite>-<mode>")
    ap.add_argument("--keep-dumps", action="store_true", help="keep l1.elf and l1.kdump")
    args = ap.parse_args()
    workdir = args.workdir or TOP / "build" / "vm" / f"{args.suite}-{args.mode}"
    result = run_cell(
        args.suite,
        args.mode,
        workdir.resolve(),
        log=lambda m: print(m, file=sys.stderr),
        keep_dumps=args.keep_dumps,
    )
    problems = (
        check_cell(result)
        + check_whole_tables(result)
        + check_entry_points(result)
        + check_kdump_views(result)
    )
    for view, w in result["one_walk"].items():
        print(f"--- {view}: one whole-process walk, {w.get('seconds')} s, rc {w.get('rc')}")
        print(w.get("stdout", "").rstrip())
    pages = sum(len(t["pages"]) * len(t["vcpus"]) for t in result["truth"].values())
    print(
        f"{args.suite}/{args.mode}: {pages} (page, vCPU) walks x {len(VIEWS)} views, "
        f"{len(problems)} problems, {result['seconds']} s (details: {workdir}/cell.json)"
    )
    for p in problems[:50]:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
