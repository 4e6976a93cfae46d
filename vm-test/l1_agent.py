#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Agent run INSIDE the L1 guest (as root, by ``vng --exec``); stdlib only.

    l1_agent.py --shared DIR --workload CMD [--workload CMD ...]
                [--check NAME=CMD ...] [--timeout S] [--ready-timeout S]
                [--check-timeout S]

1. ``modprobe qemu_fw_cfg`` (so that QEMU's vmcoreinfo device gets the guest's
   VMCOREINFO, which ``drgn --qemu`` and makedumpfile need); a failure is
   recorded, not fatal.  Records ``uname -r`` and the kvm / kvm_amd /
   kvm_intel module parameters that matter for page-table walking.
2. Starts each workload (a shell command) in the background and waits for a
   stdout line starting with ``L2VMM READY`` (``--ready-timeout``, default
   120 s).  A workload that exits first fails with its stderr.  A simple
   command (no ; & | ( ) ` or newline) is exec'd by the shell, so the
   recorded pid is the workload process itself; otherwise it is the shell's.  The rest of
   its stdout goes to DIR/workload-N.out, its stderr to DIR/workload-N.err.
3. Runs each check (a shell command) in turn, stdout/stderr to
   DIR/check-NAME.out / .err; rc and wall seconds go into the ready JSON.
   Checks see the workloads in the environment: L2VMM_PIDS (space separated),
   L2VMM_PID_<i> and L2VMM_READY_<i> (the ready line), L1_SHARED=DIR.
4. Writes DIR/ready atomically (JSON: "ok", kernel release, module params,
   workloads, checks, errors), then waits for DIR/release (polled every
   0.2 s; the whole run is bounded by --timeout, default 900 s), SIGTERMs the
   workloads (SIGKILL after 10 s), writes DIR/agent-rc and exits with it:
   0 when every workload got ready, every check exited 0 and release came in
   time; 1 otherwise; 3 when --timeout expired before release.

The agent always writes DIR/ready, even when something failed ("ok": false
and "errors"), so that the host learns about a failure at once and can still
inspect L1 before releasing it.  A log goes to DIR/agent.log and stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any

READY_PREFIX = "L2VMM READY"
POLL = 0.2

PARAMS = [
    "/sys/module/kvm_amd/parameters/npt",
    "/sys/module/kvm_amd/parameters/nested",
    "/sys/module/kvm_intel/parameters/ept",
    "/sys/module/kvm/parameters/tdp_mmu",
]

_log_file = None
_t0 = time.monotonic()


def log(msg: str) -> None:
    line = f"[l1-agent {time.monotonic() - _t0:7.2f}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _log_file is not None:
        _log_file.write(line + "\n")
        _log_file.flush()


def write_atomic(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_param(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class Workload:
    def __init__(self, index: int, cmd: str, shared: str) -> None:
        self.index = index
        self.cmd = cmd
        self.out_path = os.path.join(shared, f"workload-{index}.out")
        self.err_path = os.path.join(shared, f"workload-{index}.err")
        self.ready_line: str | None = None
        self.ready_event = threading.Event()
        self.eof_event = threading.Event()
        self._err = open(self.err_path, "wb")
        # A simple command is exec'd by the shell, so that the recorded pid is
        # the workload's own; a compound one keeps its shell (pid = the shell).
        run = cmd if re.search(r"[;&|()`\n]", cmd) else "exec " + cmd
        # Own session/process group, so that SIGTERM reaches the whole shell
        # pipeline and nothing else.
        self.proc = subprocess.Popen(
            run,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        with open(self.out_path, "wb") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                if self.ready_line is None:
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line.startswith(READY_PREFIX):
                        self.ready_line = line
                        self.ready_event.set()
        self.eof_event.set()

    def wait_ready(self, deadline: float) -> str | None:
        """The error, or None once the ready line was seen."""
        while time.monotonic() < deadline:
            if self.ready_event.wait(POLL):
                return None
            if self.proc.poll() is not None:
                # Give the reader a moment to see a ready line printed last.
                self.eof_event.wait(1.0)
                if self.ready_event.is_set():
                    return None
                return (
                    f"workload {self.index} exited with {self.proc.returncode} before "
                    f"{READY_PREFIX!r}; stderr:\n{tail(self.err_path)}"
                )
        return f"workload {self.index}: no {READY_PREFIX!r} line in time"

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"workload {self.index} ignored SIGTERM; SIGKILL")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._thread.join(2.0)
        self._err.close()
        return self.proc.returncode

    def info(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "cmd": self.cmd,
            "pid": self.proc.pid,
            "ready_line": self.ready_line,
            "returncode": self.proc.poll(),
        }


def run_check(
    name: str, cmd: str, shared: str, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    out = os.path.join(shared, f"check-{name}.out")
    err = os.path.join(shared, f"check-{name}.err")
    log(f"check {name}: {cmd}")
    t = time.monotonic()
    result: dict[str, Any] = {"name": name, "cmd": cmd}
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            cmd,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            env=env,
            start_new_session=True,
        )
        try:
            result["rc"] = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result["rc"] = None
            result["timeout"] = True
    result["seconds"] = round(time.monotonic() - t, 3)
    log(f"check {name}: rc={result['rc']} in {result['seconds']} s")
    return result


def main() -> int:
    global _log_file
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", required=True, help="directory shared with the host")
    ap.add_argument("--workload", action="append", default=[], metavar="CMD")
    ap.add_argument("--check", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="bound on the whole run, until release (default 900 s)",
    )
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="per workload, for its ready line (default 120 s)",
    )
    ap.add_argument(
        "--check-timeout", type=float, default=600.0, help="per check command (default 600 s)"
    )
    args = ap.parse_args()
    deadline = _t0 + args.timeout
    shared = args.shared
    os.makedirs(shared, exist_ok=True)
    _log_file = open(os.path.join(shared, "agent.log"), "a")

    checks = []
    for spec in args.check:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or "/" in name:
            ap.error(f"bad --check {spec!r}: want NAME=CMD")
        checks.append((name, cmd))

    # SIGTERM/SIGINT to the agent: clean up like a release.
    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)

    errors: list[str] = []
    ready: dict[str, Any] = {"ok": False, "errors": errors}
    workloads: list[Workload] = []
    rc = 1
    try:
        mp = subprocess.run(["modprobe", "qemu_fw_cfg"], capture_output=True, text=True)
        ready["modprobe_qemu_fw_cfg"] = {"rc": mp.returncode, "stderr": mp.stderr.strip()}
        if mp.returncode != 0:
            log(f"modprobe qemu_fw_cfg failed ({mp.returncode}): {mp.stderr.strip()}")
        ready["vmcoreinfo_fw_cfg"] = os.path.exists(
            "/sys/firmware/qemu_fw_cfg/by_name/etc/vmcoreinfo"
        )
        ready["kernel_release"] = os.uname().release
        ready["params"] = {
            p.split("/")[3] + "." + p.split("/")[5]: read_param(p)
            for p in PARAMS
            if os.path.exists(p)
        }
        log(f"kernel {ready['kernel_release']} params {ready['params']}")

        for i, cmd in enumerate(args.workload):
            log(f"workload {i}: {cmd}")
            workloads.append(Workload(i, cmd, shared))
        ready_deadline = min(deadline, time.monotonic() + args.ready_timeout)
        for w in workloads:
            err = w.wait_ready(ready_deadline)
            if err:
                log(err)
                errors.append(err)
            else:
                log(f"workload {w.index} ready (pid {w.proc.pid}): {w.ready_line}")
        ready["workloads"] = [w.info() for w in workloads]

        results = []
        if not errors:
            env = dict(
                os.environ,
                L1_SHARED=shared,
                L2VMM_PIDS=" ".join(str(w.proc.pid) for w in workloads),
            )
            for w in workloads:
                env[f"L2VMM_PID_{w.index}"] = str(w.proc.pid)
                env[f"L2VMM_READY_{w.index}"] = w.ready_line or ""
            for name, cmd in checks:
                left = deadline - time.monotonic()
                if left <= 0:
                    errors.append(f"check {name}: not run, --timeout expired")
                    continue
                r = run_check(name, cmd, shared, env, min(args.check_timeout, left))
                results.append(r)
                if r["rc"] != 0:
                    errors.append(f"check {name} failed: rc={r['rc']}")
        elif checks:
            errors.append("checks not run because a workload failed")
        ready["checks"] = results
        ready["seconds"] = round(time.monotonic() - _t0, 3)
        ready["ok"] = not errors
        write_atomic(os.path.join(shared, "ready"), json.dumps(ready, indent=1) + "\n")
        log(f"ready written (ok={ready['ok']}); waiting for release")

        release = os.path.join(shared, "release")
        while not os.path.exists(release):
            if time.monotonic() >= deadline:
                log("timeout waiting for release")
                errors.append("timeout waiting for release")
                rc = 3
                break
            time.sleep(POLL)
        else:
            log("release seen")
            rc = 0 if ready["ok"] else 1
    except KeyboardInterrupt as e:
        log(f"interrupted: {e}")
        errors.append(f"interrupted: {e}")
        rc = 1
    except Exception as e:  # noqa: BLE001 - report everything to the host
        log(f"agent error: {e!r}")
        errors.append(f"agent error: {e!r}")
        rc = 1
        if not os.path.exists(os.path.join(shared, "ready")):
            write_atomic(os.path.join(shared, "ready"), json.dumps(ready, indent=1) + "\n")
    finally:
        for w in workloads:
            wrc = w.stop()
            log(f"workload {w.index} stopped: returncode {wrc}")
        write_atomic(os.path.join(shared, "agent-rc"), f"{rc}\n")
        log(f"exit {rc}")
        os.sync()
    return rc


if __name__ == "__main__":
    sys.exit(main())
