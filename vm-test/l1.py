#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run one L1 guest (virtme-ng + QEMU) and everything done against it.

The L1 guest boots a cached Debian kernel (see kernels.py) with the host's
root file system shared read-only (virtme-ng), runs ``l1_agent.py`` as root
through ``vng --exec`` and talks to the host through a private shared
directory.  QEMU gets, through ``--qemu-opts``:

* ``-device vmcoreinfo``: the guest's VMCOREINFO reaches QEMU (the agent
  loads ``qemu_fw_cfg``), which ``drgn --qemu`` and the ELF dump notes need;
* two QMP unix sockets: ``qmp-ctl.sock`` (used by this module: dumps, quit)
  and ``qmp-drgn.sock`` (reserved for ``drgn --qemu``; QMP serves one client
  per socket at a time, so nobody else connects to it);
* ``-pidfile`` so that QEMU itself can be killed by pid;
* ``-cpu max`` with TCG (gives L1 AMD SVM + NPT, so KVM works inside L1), or
  ``-cpu host`` when the host's KVM can run a nested hypervisor
  (:func:`kvm_usable`);
* with ``tcg_threads="single"``, ``-accel tcg,thread=single``: one host
  thread runs every vCPU (see matrix.TCG_SINGLE_CELLS for why).

Every run has its own work directory (``tempfile.mkdtemp`` unless one is
given)::

    <workdir>/console.log     vng -v output: serial console + agent output
    <workdir>/qmp-ctl.sock    control QMP socket
    <workdir>/qmp-drgn.sock   QMP socket for drgn --qemu
    <workdir>/qemu.pid
    <workdir>/shared/         --rwdir: ready, release, agent-rc, agent.log,
                              check-NAME.out/.err, workload-N.out/.err

Library use::

    k = kernels.fetch("bookworm")
    with L1(k, workdir=wd, agent_cmd=agent_command(workloads=[...], checks={...})) as l1:
        info = l1.wait_ready(600)          # the agent's ready JSON
        # drgn --qemu l1.qmp_drgn -s k.vmlinux ...
        l1.dump_elf(wd / "dump.elf")
        rc = l1.release(120)               # the agent's exit code
    compress_dump(wd / "dump.elf", wd / "dump.kdump", vmlinux=k.vmlinux)

No QEMU is left behind: ``__exit__`` releases the agent, then quits QEMU over
QMP, then kills vng's process group and QEMU's pid; and a tiny reaper process
(started with the VM, holding the read end of a pipe) does the kill if this
Python process dies without getting to ``__exit__`` (SIGKILL, crash).

CLI (manual use; prints the ready JSON, waits for Enter or --hold seconds)::

    l1.py [--suite bookworm] [--append 'kvm_amd.npt=0'] [--workload CMD]
          [--check NAME=CMD] [--dump PATH [--compress PATH]] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
AGENT = HERE / "l1_agent.py"
QEMU = "qemu-system-x86_64"

# vng builds a shell command line from --rwdir and --qemu-opts without quoting
# them, so every path that ends up there must be shell-safe.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+=,:@-]+$")
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCK = 100


class L1Error(RuntimeError):
    pass


def _kernels() -> Any:
    """vm-test/kernels.py as a module (vm-test is not a package)."""
    mod = sys.modules.get("kernels")
    if mod is not None and getattr(mod, "__file__", None) == str(HERE / "kernels.py"):
        return mod
    spec = importlib.util.spec_from_file_location("kernels", HERE / "kernels.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = mod  # dataclasses needs the module registered
    spec.loader.exec_module(mod)
    return mod


def find_vng() -> str:
    """vng from the same bin directory as this Python (a venv), else PATH."""
    cand = Path(sys.executable).parent / "vng"
    if cand.exists() and os.access(cand, os.X_OK):
        return str(cand)
    found = shutil.which("vng")
    if not found:
        raise L1Error("vng (virtme-ng) not found next to sys.executable nor on PATH")
    return found


# ---------------------------------------------------------------------------
# KVM detection


def _nested_enabled() -> tuple[bool, str]:
    try:
        flags = set()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError as e:
        return False, f"/proc/cpuinfo: {e}"
    for flag, mod in (("vmx", "kvm_intel"), ("svm", "kvm_amd")):
        if flag in flags:
            try:
                val = Path(f"/sys/module/{mod}/parameters/nested").read_text().strip()
            except OSError:
                return False, f"cpu has {flag} but {mod} is not loaded"
            if val in ("1", "Y", "y"):
                return True, f"{flag}, {mod}.nested={val}"
            return False, f"{mod}.nested={val}"
    return False, "host cpu has neither vmx nor svm"


def _qemu_kvm_probe(timeout: float = 2.0) -> tuple[bool, str]:
    """Start a tiny KVM guest (q35, 16M, -cpu host), let it run briefly.

    QEMU aborts in vCPU set-up (e.g. "failed to set MSR") on hosts whose KVM
    is not fit for a real guest; ``query-kvm`` must say enabled and the guest
    must still be running after ~0.3 s.
    """
    qmp_in = '{"execute":"qmp_capabilities"}\n{"execute":"cont"}\n'
    qmp_tail = '{"execute":"query-kvm"}\n{"execute":"query-status"}\n{"execute":"quit"}\n'
    cmd = [
        QEMU,
        "-enable-kvm",
        "-cpu",
        "host",
        "-machine",
        "q35",
        "-m",
        "16",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
    ]
    try:
        p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as e:
        return False, f"{QEMU}: {e}"
    try:
        assert p.stdin is not None
        p.stdin.write(qmp_in)
        p.stdin.flush()
        time.sleep(0.3)
        try:
            p.stdin.write(qmp_tail)
            p.stdin.close()
        except BrokenPipeError:
            pass
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return False, "kvm probe timed out"
    if p.returncode != 0:
        return False, f"qemu -enable-kvm failed ({p.returncode}): {err.strip()[-300:]}"
    if '"enabled": true' not in out or '"running": true' not in out:
        return False, f"kvm probe: unexpected QMP output {out.strip()[-300:]!r}"
    return True, "qemu kvm probe ran"


@functools.lru_cache(maxsize=None)
def kvm_usable() -> tuple[bool, str]:
    """Whether L1 can use KVM (and -cpu host) and still run KVM inside.

    All of: the host CPU has vmx/svm with kvm_intel/kvm_amd ``nested``
    enabled, /dev/kvm opens, and a tiny ``qemu -enable-kvm -cpu host`` guest
    actually runs.  Cheap checks first; the QEMU probe takes ~0.5 s.  Cached
    for the process.  Set L1_ACCEL=tcg or L1_ACCEL=kvm to override.
    """
    force = os.environ.get("L1_ACCEL")
    if force in ("tcg", "kvm"):
        return force == "kvm", f"L1_ACCEL={force}"
    ok, why = _nested_enabled()
    if not ok:
        return False, why
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return False, f"/dev/kvm: {e}"
    ok, why2 = _qemu_kvm_probe()
    return ok, f"{why}; {why2}"


# ---------------------------------------------------------------------------
# QMP


async def _qmp_session(
    sock: Path, commands: Sequence[tuple[str, dict[str, Any] | None]], timeout: float
) -> list[Any]:
    from qemu.qmp import QMPClient  # only needed on the host side

    qmp = QMPClient("l1")
    await asyncio.wait_for(qmp.connect(str(sock)), timeout=min(timeout, 10))
    results = []
    try:
        for cmd, args in commands:
            results.append(await asyncio.wait_for(qmp.execute(cmd, args), timeout=timeout))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(qmp.disconnect(), timeout=5)
    return results


def qmp(
    sock: Path, commands: Sequence[tuple[str, dict[str, Any] | None]], timeout: float = 30
) -> list[Any]:
    """Run QMP commands on one connection; returns their results."""
    return asyncio.run(_qmp_session(sock, commands, timeout))


# ---------------------------------------------------------------------------

_REAPER = r"""
import os, signal, sys, time
pgid, pidfile = int(sys.argv[1]), sys.argv[2]
data = sys.stdin.buffer.read()          # EOF when the parent closes or dies
if data.strip() != b"done":
    try:
        pid = int(open(pidfile).read())
    except (OSError, ValueError):
        pid = None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for kill, target in ((os.killpg, pgid), (os.kill, pid)):
            if target:
                try:
                    kill(target, sig)
                except OSError:
                    pass
        time.sleep(2)
"""


def agent_command(
    workloads: Iterable[str] = (),
    checks: dict[str, str] | None = None,
    *,
    timeout: float | None = None,
    ready_timeout: float | None = None,
    check_timeout: float | None = None,
    python: str = "python3",
) -> list[str]:
    """The l1_agent.py command line for L1(agent_cmd=...) (without --shared)."""
    cmd = [python, str(AGENT)]
    for w in workloads:
        cmd += ["--workload", w]
    for name, c in (checks or {}).items():
        cmd += ["--check", f"{name}={c}"]
    for opt, val in (
        ("--timeout", timeout),
        ("--ready-timeout", ready_timeout),
        ("--check-timeout", check_timeout),
    ):
        if val is not None:
            cmd += [opt, str(val)]
    return cmd


class L1:
    """One L1 boot.  ``agent_cmd`` runs in L1 with ``--shared <shared dir>`` appended."""

    def __init__(
        self,
        kernel: Any,
        *,
        append: Iterable[str] = (),
        memory: str = "2G",
        cpus: int = 2,
        workdir: Path | None = None,
        agent_cmd: list[str],
        log: Callable[[str], None] = print,
        kvm: bool | None = None,
        exit_timeout: float = 60.0,
        vng: str | None = None,
        cpu_features: Iterable[str] = (),
        tcg_threads: str | None = None,
    ) -> None:
        self.kernel = kernel
        self.append = list(append)
        # Appended to -cpu (e.g. "la57=off" for 4-level host paging).
        self.cpu_features = list(cpu_features)
        # Under TCG: "single" runs every vCPU on one host thread
        # (-accel tcg,thread=single), "multi" or None one thread per vCPU
        # (QEMU's default).  Left out when the boot uses KVM.
        if tcg_threads not in (None, "single", "multi"):
            raise L1Error(f"tcg_threads must be 'single' or 'multi', not {tcg_threads!r}")
        self.tcg_threads = tcg_threads
        self.memory = memory
        self.cpus = cpus
        self.agent_cmd = list(agent_cmd)
        self.log = log
        self.exit_timeout = exit_timeout
        self.vng = vng or find_vng()
        if kvm is None:
            kvm, why = kvm_usable()
            log(f"l1: accel={'kvm' if kvm else 'tcg'} ({why})")
        self.kvm = kvm
        if kvm and tcg_threads:
            log(f"l1: tcg_threads={tcg_threads} left out: this boot uses KVM")
            self.tcg_threads = None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="l1-"))
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.shared = self.workdir / "shared"
        self.console_log = self.workdir / "console.log"
        self.pidfile = self.workdir / "qemu.pid"
        self.agent_script = self.workdir / "agent.sh"
        sockdir = self.workdir
        if len(str(sockdir / "qmp-drgn.sock")) > _MAX_SOCK:
            sockdir = Path(tempfile.mkdtemp(prefix="l1q-", dir="/tmp"))
        self._sockdir = sockdir
        self.qmp_ctl = sockdir / "qmp-ctl.sock"
        self.qmp_drgn = sockdir / "qmp-drgn.sock"
        for p in (self.shared, self.qmp_ctl, self.qmp_drgn, self.pidfile, self.agent_script):
            if not _SAFE_PATH.match(str(p)):
                raise L1Error(f"path not shell-safe (vng does not quote it): {p}")
        self.proc: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._console: BinaryIO | None = None
        self._released = False
        self.agent_rc: int | None = None
        self.t_start: float = time.monotonic()  # set again at boot

    # -- boot ---------------------------------------------------------------

    def command(self) -> list[str]:
        qopts = [
            "-device",
            "vmcoreinfo",
            "-qmp",
            f"unix:{self.qmp_ctl},server=on,wait=off",
            "-qmp",
            f"unix:{self.qmp_drgn},server=on,wait=off",
            "-pidfile",
            str(self.pidfile),
            "-cpu",
            ",".join(["host" if self.kvm else "max", *self.cpu_features]),
        ]
        if self.tcg_threads:
            qopts += ["-accel", f"tcg,thread={self.tcg_threads}"]
        cmd = [
            self.vng,
            "-v",
            "-r",
            str(self.kernel.vmlinuz),
            "--name",
            "l1",
            "--memory",
            self.memory,
            "--cpus",
            str(self.cpus),
            f"--rwdir={self.shared}",
        ]
        if not self.kvm:
            cmd.append("--disable-kvm")
        for a in self.append:
            cmd += ["--append", a]
        # The agent's command line goes in a file: vng passes --exec on the
        # kernel command line, which Linux caps at 2048 bytes (a longer one
        # panics early, in a fortified strcpy).
        cmd += ["--exec", f"sh {self.agent_script}", f"--qemu-opts={' '.join(qopts)}"]
        return cmd

    def __enter__(self) -> "L1":
        for p in (self.qmp_ctl, self.qmp_drgn, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if self.shared.exists():
            shutil.rmtree(self.shared)
        self.shared.mkdir()
        self.agent_script.write_text(
            "#!/bin/sh\nexec " + shlex.join([*self.agent_cmd, "--shared", str(self.shared)]) + "\n"
        )
        cmd = self.command()
        env = dict(os.environ)
        # vng runs "virtme-run" through the shell: its bin dir must be on PATH.
        env["PATH"] = f"{Path(self.vng).parent}{os.pathsep}{env.get('PATH', '')}"
        self._console = open(self.console_log, "wb")
        self._console.write(f"$ {shlex.join(cmd)}\n".encode())
        self._console.flush()
        self.log(f"l1: booting {self.kernel.vmlinuz} in {self.workdir}")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.shared,
            env=env,
            start_new_session=True,
        )
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER, str(self.proc.pid), str(self.pidfile)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            self._kill()
            raise
        return self

    # -- state ----------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, n: int = 4000) -> str:
        try:
            data = self.console_log.read_bytes()[-n:]
        except OSError:
            return ""
        # The serial console is full of terminal control sequences.
        text = data.decode(errors="replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)

    def qemu_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait for <shared>/ready (written by the agent); return its JSON."""
        ready = self.shared / "ready"
        deadline = time.monotonic() + timeout
        while True:
            if ready.exists():
                info: dict[str, Any] = json.loads(ready.read_text())
                self.log(
                    f"l1: ready after {time.monotonic() - self.t_start:.1f} s (ok={info.get('ok')})"
                )
                return info
            if not self.alive():
                raise L1Error(
                    f"L1 exited ({self.proc.returncode if self.proc else None}) "
                    f"before ready; console tail:\n{self.console_tail()}"
                )
            if time.monotonic() > deadline:
                raise L1Error(
                    f"L1 not ready after {timeout} s; console tail:\n{self.console_tail()}"
                )
            time.sleep(0.2)

    # -- QMP --------------------------------------------------------------

    def _wait_socket(self, sock: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if not self.alive() or time.monotonic() > deadline:
                raise L1Error(f"QMP socket {sock} did not appear")
            time.sleep(0.1)

    def qmp(
        self, commands: Sequence[tuple[str, dict[str, Any] | None]], timeout: float = 30
    ) -> list[Any]:
        """Commands over the control QMP socket."""
        self._wait_socket(self.qmp_ctl, 10)
        return qmp(self.qmp_ctl, commands, timeout)

    def dump_elf(self, path: Path, timeout: float = 600) -> float:
        """dump-guest-memory (ELF, paging=false) into ``path``; returns seconds.

        detach=false: QEMU 7.2 answers the command only when the dump file is
        complete (the guest is paused meanwhile), so success of the command is
        success of the dump and no query-dump polling / DUMP_COMPLETED event
        handling is needed.  The control socket's monitor is blocked during
        the dump, which does not matter here (drgn --qemu has its own socket,
        but it is blocked too while the main loop dumps).
        """
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        t = time.monotonic()
        _, status = self.qmp(
            [
                (
                    "dump-guest-memory",
                    {"paging": False, "protocol": f"file:{path}", "detach": False, "format": "elf"},
                ),
                ("query-dump", None),
            ],
            timeout=timeout,
        )
        secs = time.monotonic() - t
        if status.get("status") != "completed":
            raise L1Error(f"dump-guest-memory: query-dump says {status}")
        if not path.exists() or path.stat().st_size == 0:
            raise L1Error(f"dump-guest-memory produced no file at {path}")
        self.log(f"l1: dumped {path.stat().st_size >> 20} MiB to {path} in {secs:.1f} s")
        return secs

    # -- shutdown -----------------------------------------------------------

    def release(self, timeout: float = 120) -> int:
        """Touch <shared>/release, wait for L1 to power off; the agent's rc."""
        (self.shared / "release").touch()
        self._released = True
        if self.proc is None:
            raise L1Error("L1 not started")
        try:
            vng_rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise L1Error(
                f"L1 still running {timeout} s after release; console tail:\n{self.console_tail()}"
            ) from None
        self._finish()
        rc_file = self.shared / "agent-rc"
        try:
            self.agent_rc = int(rc_file.read_text())
        except (OSError, ValueError):
            raise L1Error(
                f"no agent-rc (vng exited {vng_rc}); console tail:\n{self.console_tail()}"
            ) from None
        self.log(
            f"l1: powered off, agent rc {self.agent_rc} (vng rc {vng_rc}), "
            f"{time.monotonic() - self.t_start:.1f} s after boot"
        )
        return self.agent_rc

    def _kill(self) -> None:
        """Kill vng's process group and QEMU (by its pidfile), then reap."""
        if self.proc is None:
            return
        pid = self.qemu_pid()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            try:
                self.proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def _finish(self) -> None:
        """Tell the reaper that all is well, close the console log."""
        if self._reaper is not None:
            with contextlib.suppress(Exception):
                assert self._reaper.stdin is not None
                self._reaper.stdin.write(b"done")
                self._reaper.stdin.close()
            with contextlib.suppress(Exception):
                self._reaper.wait(5)
            self._reaper = None
        if self._console is not None:
            self._console.close()
            self._console = None

    def stop(self) -> None:
        """Stop L1 however necessary: release (if the agent is ready), then QMP
        quit, then kill vng's process group and QEMU's pid."""
        try:
            # Before <shared>/ready the agent does not look for release (it is
            # still booting or running workloads/checks): go straight to quit.
            if self.alive() and not self._released and (self.shared / "ready").exists():
                try:
                    self.release(self.exit_timeout)
                except L1Error as e:
                    self.log(f"l1: release failed: {str(e).splitlines()[0]}")
            if self.alive():
                self.log("l1: still alive; QMP quit")
                with contextlib.suppress(Exception):
                    qmp(self.qmp_ctl, [("quit", None)], timeout=5)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self.proc is not None:
                        self.proc.wait(10)
            if self.alive():
                self.log("l1: still alive; kill")
        finally:
            self._kill()  # also reaps leftovers of a vng that already exited
            self._finish()
            if self._sockdir != self.workdir:
                shutil.rmtree(self._sockdir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fix_elf_layout(elf: Path) -> bool:
    """Move an ELF core's program headers right after the ELF header, in place.

    QEMU >= 7.2 writes dump-guest-memory ELFs with the section header table at
    offset 64 and the program headers after it (e_phoff = 192).  makedumpfile
    1.7.2 (Debian bookworm) ignores e_phoff and reads the program headers at
    64 + i * 56, so it finds no PT_LOAD ("get_elf_info: Can't get the number
    of PT_LOAD").  The section headers of an x86 dump are only the null
    section and .shstrtab (they matter only when e_phnum >= PN_XNUM), so they
    are dropped: program headers go to offset 64, e_shoff/e_shnum/e_shstrndx
    to 0.  The result is the classic layout that every reader, drgn included,
    accepts.  Returns whether the file was changed.
    """
    import struct

    with open(elf, "r+b") as f:
        ehdr = bytearray(f.read(64))
        if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
            raise L1Error(f"{elf}: not a little-endian ELF64 file")
        phoff, shoff = struct.unpack_from("<QQ", ehdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        if phoff == 64:
            return False
        if phnum == 0xFFFF or phentsize != 56:
            raise L1Error(f"{elf}: unexpected program header table (phnum={phnum})")
        f.seek(phoff)
        phdrs = f.read(phnum * phentsize)
        first_data = min(struct.unpack_from("<Q", phdrs, i * 56 + 8)[0] for i in range(phnum))
        if 64 + len(phdrs) > first_data:
            raise L1Error(f"{elf}: no room for the program headers at offset 64")
        struct.pack_into("<QQ", ehdr, 0x20, 64, 0)  # e_phoff, e_shoff
        struct.pack_into("<HHH", ehdr, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
        f.seek(64)
        f.write(phdrs)
        f.seek(0)
        f.write(ehdr)
    return True


def compress_dump(
    elf: Path,
    out: Path,
    dump_level: int = 31,
    vmlinux: str | Path | None = None,
    timeout: float = 600,
) -> float:
    """makedumpfile -c (zlib kdump-compressed) from a QEMU ELF dump; seconds.

    The ELF holds the VMCOREINFO note (vmcoreinfo device), which gives
    makedumpfile what -d 31 needs; ``vmlinux`` (-x) is optional and only adds
    time (2 GiB dump: ~1 s without -x, ~14 s with it, mostly reading DWARF).  The ELF is
    first rewritten in place by :func:`fix_elf_layout` (a few hundred bytes)
    because makedumpfile 1.7.2 cannot read QEMU 7.2's layout.
    """
    out = Path(out)
    fix_elf_layout(Path(elf))
    with contextlib.suppress(FileNotFoundError):
        out.unlink()  # makedumpfile refuses to overwrite
    cmd = ["makedumpfile", "-c", "-d", str(dump_level)]
    if vmlinux:
        cmd += ["-x", str(vmlinux)]
    cmd += [str(elf), str(out)]
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise L1Error(f"{shlex.join(cmd)} timed out after {timeout} s") from None
    secs = time.monotonic() - t
    if r.returncode != 0 or not out.exists():
        raise L1Error(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return secs


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Boot one L1 guest (manual use).")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--append", action="append", default=[], help="kernel command line")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument(
        "--workload",
        action="append",
        default=[],
        help="default: a dummy that prints L2VMM READY and sleeps",
    )
    ap.add_argument("--check", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--dump", type=Path, help="dump-guest-memory ELF to this path")
    ap.add_argument("--compress", type=Path, help="makedumpfile -c -d 31 the dump to this path")
    ap.add_argument(
        "--hold",
        type=float,
        default=None,
        help="keep L1 up this many seconds (default: until Enter)",
    )
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    args = ap.parse_args(argv)

    # SIGTERM (e.g. from timeout(1)) unwinds like Ctrl-C, so L1 gets stopped.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    kernel = _kernels().fetch(args.suite)
    workloads = args.workload or ["sh -c 'echo L2VMM READY pid=$$; exec sleep 100000'"]
    checks = dict(c.split("=", 1) for c in args.check)
    kvm = None if args.accel == "auto" else args.accel == "kvm"
    with L1(
        kernel,
        append=args.append,
        memory=args.memory,
        cpus=args.cpus,
        workdir=args.workdir,
        kvm=kvm,
        agent_cmd=agent_command(workloads, checks),
    ) as l1:
        info = l1.wait_ready(args.ready_timeout)
        print(json.dumps(info, indent=1))
        print(
            f"drgn --qemu {l1.qmp_drgn} -s {kernel.vmlinux}"
            + "".join(f" -s {m}" for m in kernel.kvm_modules)
        )
        if args.dump:
            l1.dump_elf(args.dump)
        if args.hold is not None:
            time.sleep(args.hold)
        elif sys.stdin.isatty():
            input("L1 is up; Enter to release it ")
        rc = l1.release()
    print(f"console log: {l1.console_log}")
    if args.dump and args.compress:
        secs = compress_dump(args.dump, args.compress)  # VMCOREINFO suffices
        print(f"compressed to {args.compress} in {secs:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
