# SPDX-License-Identifier: LGPL-2.1-or-later
"""Running one cell of the matrix: one L1 boot of one kernel in one MMU mode.

In that boot:
1. the L2 workloads (build/l2vmm) start in L1 and record their ground truth
   (memslots, GVA -> GPA -> HVA, HVA -> host PFN from /proc/self/pagemap, tags);
2. live view: inside L1, one ``drgn -k`` process walks every tagged address of
   both vCPUs (vm-test/check_views.py), and one whole ``drgn -k
   contrib/kvmwalk.py`` run walks one address (timed);
3. from the host while L1 runs: the same over QMP (``drgn --qemu``), the
   error cases, %kvmwalk --drgn's code and README's Python API block;
4. an ELF dump of L1 (QMP dump-guest-memory) and a kdump-compressed dump made
   from it by makedumpfile (matrix.dump_level), each walked the same way.

The result (records.CellResult) goes to ``<workdir>/cell.json``; checks/
compares it with the truth.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import kernels
from l1 import L1, L1Error, agent_command, compress_dump

from . import HERE, TOP
from .churn import read_churn_log
from .matrix import (
    CHURN_CELLS,
    CHURN_OPTS,
    CHURN_SECONDS,
    MODES,
    TCG_SINGLE_CELLS,
    addr_kind,
    dump_level,
)
from .records import (
    AddrKind,
    CellResult,
    KdumpReaderResult,
    ProcRun,
    Truth,
    ViewResult,
    load_json,
    load_truth,
    load_view,
)
from .workload import l2vmm_command


def drgn_bin() -> str:
    cand = Path(sys.executable).parent / "drgn"
    return str(cand) if cand.exists() else "drgn"


def symbol_args(kernel: kernels.Kernel) -> List[str]:
    """drgn options that load vmlinux, kvm.ko and kvm-amd.ko and nothing else
    (--gva reads the guest's CR3 from AMD's VMCB, a kvm-amd.ko type);
    searching debug info for every loaded module costs start-up time (much of
    it under TCG)."""
    kvm = [
        m
        for m in kernel.kvm_modules
        if Path(m).name.startswith(("kvm.ko", "kvm-amd.ko", "kvm_amd.ko"))
    ]
    args = ["--no-default-symbols"]
    for path in [kernel.vmlinux, *kvm]:
        args += ["-s", path]
    return args


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


def run_command(cmd: List[str], timeout: float) -> ProcRun:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return {
        "cmd": shlex.join(cmd),
        "rc": p.returncode,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _view_result(r: ProcRun, out: Path) -> ViewResult:
    return load_view(out) if r["rc"] == 0 else {"error": r}


def run_cell(
    suite: str,
    mode: str,
    workdir: Path,
    log: Callable[[str], None] = print,
    keep_dumps: bool = False,
    churn_seconds: Optional[float] = None,
    tcg_threads: Optional[str] = None,
) -> CellResult:
    """One cell; its result is also written to ``<workdir>/cell.json``.

    ``churn_seconds``: the live-change run's time per loop (live, then QMP),
    in any cell; by default matrix.CHURN_SECONDS in matrix.CHURN_CELLS and
    none elsewhere (0: none).  ``tcg_threads``: "single" or "multi" under
    TCG; by default "single" in matrix.TCG_SINGLE_CELLS, else QEMU's
    default (multi)."""
    kernel = kernels.fetch(suite, log=log)
    spec = MODES[mode]
    workdir.mkdir(parents=True, exist_ok=True)
    shared = workdir / "shared"
    truths = {name: shared / f"truth-{name}.json" for name in spec.workloads}
    first = truths[next(iter(truths))]
    drgn = drgn_bin()
    syms = symbol_args(kernel)
    kind = addr_kind(mode)
    workloads = [
        l2vmm_command(truths[name], shared / "release", 1800, wl.opts)
        for name, wl in spec.workloads.items()
    ]
    truth_args = [arg for name, path in truths.items() for arg in ("--truth", f"{name}={path}")]

    def views_args(view: str, out: Path) -> List[str]:
        # check_views.py's arguments after the script: the truths, the output.
        return [*truth_args, "--out", str(out), "--view", view, "--addr-kind", kind]

    def views_cmd(target: List[str], view: str, out: Path) -> List[str]:
        return [drgn, *target, *syms, str(HERE / "check_views.py"), *views_args(view, out)]

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
        page = load_truth(first)
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
    if churn_seconds is None:
        churn_seconds = CHURN_SECONDS if (suite, mode) in CHURN_CELLS else 0
    churn = churn_seconds > 0
    if churn:
        # Last of the checks in L1: the churn VM starts, the loop runs
        # live; the VM goes on changing for the QMP loop from here after.
        churn_vmm = l2vmm_command(
            shared / "truth-churn.json",
            shared / "churn-stop",
            int(1800 + 3 * churn_seconds),
            [*CHURN_OPTS, "--churn-log", str(shared / "churn.log")],
        )
        checks["live-churn"] = shlex.join(
            [
                sys.executable,
                str(HERE / "churn_live.py"),
                "--l2vmm",
                churn_vmm,
                "--truth",
                str(shared / "truth-churn.json"),
                "--addr-kind",
                kind,
                "--seconds",
                str(churn_seconds),
                "--out",
                str(shared / "churn-live.json"),
                "--",
                drgn,
                "-k",
                *syms,
            ]
        )
    if tcg_threads is None and (suite, mode) in TCG_SINGLE_CELLS:
        tcg_threads = "single"
    result: CellResult = {
        "suite": suite,
        "mode": mode,
        "tcg_threads": tcg_threads or "default",
        "release": kernel.release,
        "addr_kind": kind,
        "root_levels": {
            name: spec.expected_root_level(kernel.release, name) for name in spec.workloads
        },
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
        tcg_threads=tcg_threads,
        workdir=workdir,
        memory=spec.memory,
        log=log,
        agent_cmd=agent_command(
            workloads,
            checks,
            python=sys.executable,
            # the agent's defaults, and the live-change run's time on top
            timeout=900 + 3 * churn_seconds,
            check_timeout=600 + churn_seconds,
        ),
    ) as l1:
        ready = l1.wait_ready(900 + churn_seconds)
        result["ready"] = ready
        missing = [name for name, path in truths.items() if not path.exists()]
        if missing:
            raise RuntimeError(
                f"L2 workloads {missing} wrote no truth: {ready.get('errors')}; "
                f"see {shared}/workload-*.err and {l1.console_log}"
            )
        result["truth"] = {name: load_truth(path) for name, path in truths.items()}
        for name in ("live", "live-one", "live-console"):
            check = {c["name"]: c for c in ready.get("checks", [])}.get(name, {})
            out_file = shared / f"check-{name}.out"
            err_file = shared / f"check-{name}.err"
            entry: ProcRun = {
                "rc": check.get("rc"),
                "seconds": check.get("seconds"),
                "stdout": out_file.read_text() if out_file.exists() else "",
                "stderr": err_file.read_text() if err_file.exists() else "",
            }
            if name == "live":
                live = shared / "live.json"
                result["views"]["live"] = load_view(live) if live.exists() else {"error": entry}
            elif name == "live-one":
                result["one_walk"]["live"] = entry
            else:
                result["console"]["live"] = entry
        qmp = ["--qemu", str(l1.qmp_drgn)]
        if churn:
            result["churn"] = churn_phase(
                [drgn, *qmp, *syms], shared, workdir, kind, ready, churn_seconds, log
            )
        r = run_command(views_cmd(qmp, "qmp", workdir / "qmp.json"), 600)
        result["views"]["qmp"] = _view_result(r, workdir / "qmp.json")
        result["one_walk"]["qmp"] = run_command(one_walk_cmd(qmp), 600)
        result["console"]["qmp"] = run_command(console_cmd(qmp), 600)
        result["plugin"]["qmp"] = run_command(plugin_cmd(qmp), 600)
        result["errors"] = error_cases(drgn, qmp, syms, result["truth"], kind)
        # %kvmwalk --drgn's code beside the command; README's Python API block.
        first_truth = load_truth(first)
        result["drgn_code"] = first_page_script(
            drgn,
            qmp,
            syms,
            "drgn_code_check.py",
            first_truth,
            kind,
            workdir / "drgn_code.json",
            ["--gva", hex(first_truth["pages"][0]["gva"])],
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
    result["dump_level"] = dump_level(kernel.release)
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
                *views_args(view, out),
            ]
        else:
            cmd = views_cmd(["-c", str(path)], view, out)
        r = run_command(cmd, 600)
        result["views"][view] = _view_result(r, out)
        result["one_walk"][view] = run_command(one_walk_cmd(["-c", str(path)]), 600)
        result["console"][view] = run_command(console_cmd(["-c", str(path)]), 600)
        result["plugin"][view] = run_command(plugin_cmd(["-c", str(path)]), 600)
    result["fault_dumps"] = fault_dumps(elf, workdir, console_syms, result, log)
    if not keep_dumps:
        for path in (elf, kdump):
            path.unlink(missing_ok=True)
    result["seconds"] = round(time.monotonic() - t_cell, 1)
    (workdir / "cell.json").write_text(json.dumps(result, indent=1))
    return result


def churn_phase(
    qmp_drgn: List[str],
    shared: Path,
    workdir: Path,
    kind: AddrKind,
    ready: Dict[str, Any],
    seconds: float,
    log: Callable[[str], None],
) -> Dict[str, Any]:
    """The live-change run: the loop in L1 ran already (check live-churn);
    now the same loop over QMP while the churn VM goes on, then the VM is
    stopped and its log read.  Everything the checks judge is returned:
    each loop's runs, the VMM's log (the PFNs pagemap showed), KSM's
    counters."""
    got: Dict[str, Any] = {"seconds": seconds}
    check = {c["name"]: c for c in ready.get("checks", [])}.get("live-churn", {})
    err_file = shared / "check-live-churn.err"
    got["live_check"] = {
        "rc": check.get("rc"),
        "seconds": check.get("seconds"),
        "stderr": err_file.read_text()[-4000:] if err_file.exists() else "",
    }
    live = shared / "churn-live.json"
    got["live"] = load_json(live) if live.exists() else None
    truth = shared / "truth-churn.json"
    out = workdir / "churn-qmp.json"
    t0 = time.monotonic()
    if truth.exists():
        cmd = [*qmp_drgn, str(HERE / "live_loop.py"), "--truth", str(truth)]
        cmd += ["--addr-kind", kind, "--seconds", str(seconds), "--out", str(out)]
        r = run_command(cmd, seconds + 600)
        got["qmp_run"] = {k: r[k] for k in ("rc", "seconds")}
        got["qmp_run"]["stderr"] = r["stderr"][-4000:]
        got["qmp"] = load_json(out) if out.exists() else None
        got["truth"] = load_truth(truth)
    (shared / "churn-stop").touch()
    churn_log = shared / "churn.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if churn_log.exists() and '"end": true' in churn_log.read_text()[-4000:]:
            break
        time.sleep(0.5)
    got["log"] = read_churn_log(churn_log) if churn_log.exists() else None
    ksm = Path(str(live) + ".ksm")
    got["ksm"] = load_json(ksm) if ksm.exists() else None
    vmm_err = live.with_suffix(".vmm.err")
    got["vmm_stderr"] = vmm_err.read_text()[-4000:] if vmm_err.exists() else ""
    log(
        f"[cell] live-change run: live {got['live_check']['seconds']} s, "
        f"QMP {time.monotonic() - t0:.0f} s"
    )
    return got


def fault_dumps(
    elf: Path, workdir: Path, syms: List[str], result: CellResult, log: Callable[[str], None]
) -> Dict[str, Any]:
    """vm-test/fault_dumps.py on a copy of the ELF dump (sparse: it copies
    in seconds), for the first workload's VM; the copy is removed after."""
    name = "base" if "base" in result["truth"] else next(iter(result["truth"]))
    truth = workdir / f"fault-truth-{name}.json"
    truth.write_text(json.dumps(result["truth"][name]))
    copy = workdir / "l1-faults.elf"
    out = workdir / "faults.json"
    t0 = time.monotonic()
    try:
        subprocess.run(["cp", "--sparse=always", str(elf), str(copy)], check=True)
        cmd = [sys.executable, str(HERE / "fault_dumps.py"), "--core", str(copy), *syms]
        cmd += ["--truth", str(truth), "--addr-kind", result["addr_kind"], "--out", str(out)]
        r = run_command(cmd, 600)
        if r["rc"] != 0:
            return {"workload": name, "error": r}
        got: Dict[str, Any] = json.loads(out.read_text())
        got["workload"] = name
        got["seconds"] = round(time.monotonic() - t0, 1)
        log(f"[cell] faults made in a copy of the ELF dump: {got['made']} ({got['seconds']} s)")
        result["corrupt_dumps"] = corrupt_dumps(copy, workdir, syms, truth, result, log)
    finally:
        copy.unlink(missing_ok=True)
    return got


def corrupt_dumps(
    copy: Path,
    workdir: Path,
    syms: List[str],
    truth: Path,
    result: CellResult,
    log: Callable[[str], None],
) -> Dict[str, Any]:
    """vm-test/corrupt_dumps.py on the copy fault_dumps.py put back."""
    out = workdir / "corrupt.json"
    t0 = time.monotonic()
    cmd = [sys.executable, str(HERE / "corrupt_dumps.py"), "--core", str(copy), *syms]
    cmd += ["--truth", str(truth), "--addr-kind", result["addr_kind"], "--out", str(out)]
    r = run_command(cmd, 600)
    if r["rc"] != 0:
        return {"error": r}
    got: Dict[str, Any] = json.loads(out.read_text())
    got["seconds"] = round(time.monotonic() - t0, 1)
    log(f"[cell] kernel state corrupted in the copy: {got['made']} ({got['seconds']} s)")
    return got


def libkdumpfile_reads(release: str) -> bool:
    """Whether libkdumpfile, drgn's reader of kdump-compressed dumps, reads a
    dump of kernel ``release``: its linux_ver_revalidate() (0.5.x,
    src/kdumpfile/util.c) wants VERSION.PATCHLEVEL.SUBLEVEL before it reads a
    page, which Debian experimental's release candidates (7.3-amd64) lack."""
    return re.match(r"\d+\.\d+\.\d", release) is not None


def compare_kdump_reader(
    elf: Path, kdump: Path, truths: Dict[str, Truth], sample: int = 512
) -> KdumpReaderResult:
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


def first_page_script(
    drgn: str,
    target: List[str],
    syms: List[str],
    script: str,
    truth: Truth,
    kind: AddrKind,
    out: Path,
    extra: Sequence[str] = (),
) -> Dict[str, object]:
    """Run the drgn script vm-test/``script`` on the target for the
    workload's VM and its first tagged page (``--pid``, ``--addr``); its
    JSON result, or the failed run."""
    page = truth["pages"][0]
    argv = [str(HERE / script), *extra, "--pid", str(truth["pid"]), "--addr", hex(page[kind])]
    r = run_command([drgn, *target, *syms, *argv, "--out", str(out)], 600)
    if r["rc"] != 0 or not out.exists():
        return {"error": json.dumps(r)[-3000:]}
    return load_json(out)


def error_case_argv(
    syms: List[str], truths: Dict[str, Truth], kind: AddrKind
) -> Dict[str, List[str]]:
    """contrib/kvmwalk.py with wrong or incomplete input (the drgn arguments
    after the target); checks.errors says what each must give."""
    truth = next(iter(truths.values()))
    script = str(TOP / "contrib" / "kvmwalk.py")
    pid = str(truth["pid"])
    addr = hex(truth["pages"][0][kind])
    vmlinux_only = syms[: syms.index("-s") + 2]  # --no-default-symbols -s vmlinux
    return {
        "not_a_vm": [*syms, script, "--vm", "1", "--vcpu", "0", "--addr", addr],
        "no_such_vcpu": [*syms, script, "--vm", pid, "--vcpu", "7", "--addr", addr],
        "beyond_root": [*syms, script, "--vm", pid, "--vcpu", "0", "--addr", hex(1 << 60)],
        "malformed": [*syms, script, "--vm", pid, "--vcpu", "0", "--addr", "0xZZ"],
        "gva_beyond": [*syms, script, "--vm", pid, "--vcpu", "0", "--gva", hex(1 << 60)],
        "no_kvm_debug_info": [*vmlinux_only, script, "--vm", pid, "--vcpu", "0", "--addr", addr],
        # Without --vm: fine with one VM, an error listing them with several.
        "vm_omitted": [*syms, script, "--vcpu", "1", "--addr", addr],
        # A GPA/GVA nobody touched: an answer, not an error.
        "unmapped": [*syms, script, "--vm", pid, "--vcpu", "1", "--addr", hex(0x3FFF_F000)],
    }


def error_cases(
    drgn: str, target: List[str], syms: List[str], truths: Dict[str, Truth], kind: AddrKind
) -> Dict[str, ProcRun]:
    """Run contrib/kvmwalk.py with wrong or incomplete input against the real
    kernel; checks.errors checks the exit status and the one-line message."""
    cases = error_case_argv(syms, truths, kind)
    return {name: run_command([drgn, *target, *argv], 300) for name, argv in cases.items()}
