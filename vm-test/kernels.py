#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fetch Debian kernels (image + modules + DWARF) into a private cache.

Uses apt with a private configuration: its own sources list, package lists and
archive cache under the cache directory, reusing the archive URIs that the host
already has configured.  Nothing is installed: the .deb files are unpacked into
the cache and the host's /boot, /lib/modules and apt configuration are never
touched.

Layout of one cached kernel (``<cache>/<suite>/``)::

    root/boot/vmlinuz-<release>          (bookworm and older)
    root/usr/lib/modules/<release>/...   (modules; vmlinuz there on sid and later)
    dbg/usr/lib/debug/lib/modules/<release>/vmlinux
    dbg/usr/lib/debug/lib/modules/<release>/kernel/arch/x86/kvm/kvm*.ko
    kernel.json                          (paths above; written last = complete)

Usage: kernels.py SUITE [--cache DIR]   (prints kernel.json)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

# Debian suites and the Linux series they carry.  Security updates come from
# <suite>-security, except for sid which has none.
SUITES = {
    "bullseye": ["bullseye", "bullseye-updates"],
    "bookworm": ["bookworm", "bookworm-updates"],
    "trixie": ["trixie", "trixie-updates"],
    "sid": ["sid"],
    "experimental": ["experimental"],
}
# Suites that carry a kernel only some of the time: Debian experimental has
# the next release candidates between a release and its upload to sid.  When
# one has no kernel with its -dbg package, its matrix cells are skipped with
# that reason (NoKernel); every other suite must have one.
OPTIONAL = {"experimental"}
SECURITY = {
    "bullseye": "bullseye-security",
    "bookworm": "bookworm-security",
    "trixie": "trixie-security",
}

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class NoKernel(RuntimeError):
    """The suite has no kernel image with its -dbg package (now)."""


def default_cache() -> Path:
    env = os.environ.get("KVMWALK_CACHE")
    if env:
        return Path(env) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "drgn-kvmwalk" / "kernels"


@dataclass
class Kernel:
    suite: str
    release: str  # uname -r
    version: str  # Debian package version
    vmlinuz: str
    moddir: str  # directory holding lib/modules/<release>
    vmlinux: str
    kvm_modules: list[str]  # kvm.ko, kvm-amd.ko, kvm-intel.ko with DWARF

    @property
    def symbols(self) -> list[str]:
        return [self.vmlinux, *self.kvm_modules]


def host_mirrors() -> tuple[str, str]:
    """The debian and debian-security URIs that the host's apt already uses."""
    texts = []
    for path in [
        "/etc/apt/sources.list",
        *glob.glob("/etc/apt/sources.list.d/*.list"),
        *glob.glob("/etc/apt/sources.list.d/*.sources"),
    ]:
        try:
            texts.append(Path(path).read_text())
        except OSError:
            pass
    uris = re.findall(r"(?:URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", "\n".join(texts), re.M)
    main = next((u for u in uris if u.rstrip("/").endswith("/debian")), DEFAULT_MIRROR)
    sec = next(
        (u for u in uris if u.rstrip("/").endswith("/debian-security")), DEFAULT_SECURITY_MIRROR
    )
    return main.rstrip("/"), sec.rstrip("/")


class PrivateApt:
    """apt-get / apt-cache with a configuration that lives under ``root``."""

    def __init__(self, root: Path, suite: str) -> None:
        self.root = root
        for d in ["lists/partial", "archives/partial", "etc/preferences.d", "etc/sources.list.d"]:
            (root / d).mkdir(parents=True, exist_ok=True)
        main, sec = host_mirrors()
        stanzas = [
            f"Types: deb\nURIs: {main}\nSuites: {' '.join(SUITES[suite])}\n"
            f"Components: main\nSigned-By: {KEYRING}\n"
        ]
        if suite in SECURITY:
            stanzas.append(
                f"Types: deb\nURIs: {sec}\nSuites: {SECURITY[suite]}\n"
                f"Components: main\nSigned-By: {KEYRING}\n"
            )
        (root / "etc/sources.list.d/kernel.sources").write_text("\n".join(stanzas))
        (root / "status").touch()
        self.opts = [
            "-o",
            f"Dir::Etc::SourceList={root}/etc/none.list",
            "-o",
            f"Dir::Etc::SourceParts={root}/etc/sources.list.d",
            "-o",
            f"Dir::Etc::Preferences={root}/etc/none.pref",
            "-o",
            f"Dir::Etc::PreferencesParts={root}/etc/preferences.d",
            "-o",
            f"Dir::State::Lists={root}/lists",
            "-o",
            f"Dir::State::status={root}/status",
            "-o",
            f"Dir::Cache={root}/cache",
            "-o",
            f"Dir::Cache::Archives={root}/archives",
            "-o",
            "APT::Architecture=amd64",
            "-o",
            "APT::Architectures=amd64",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Debug::NoLocking=true",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.opts, *args]
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join([tool, *args])} failed:\n{r.stderr.strip()}")
        return r.stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def depends(self, package: str) -> list[str]:
        out = self.run(
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            package,
        )
        return re.findall(r"^\s+(?:\|)?(?:Pre)?Depends:\s+<?([^\s>]+)>?", out, re.M)

    def version(self, package: str) -> str:
        out = self.run("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s+(\S+)", out)
        if not m or m.group(1) == "(none)":
            raise RuntimeError(f"no candidate for {package}")
        return m.group(1)

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        self.run("apt-get", "-q", "download", *packages, cwd=dest)
        return sorted(dest.glob("*.deb"))


def kernel_packages(apt: PrivateApt, meta: str, release: str) -> list[str]:
    """The packages named after ``release`` that ``meta`` pulls in.

    bookworm and older: one linux-image-<release> package.  sid and later split
    the image into linux-base-*, linux-binary-* and linux-modules-* packages;
    following the dependencies of the versioned package finds all of them.
    """
    seen: set[str] = set()
    todo = [meta]
    while todo:
        pkg = todo.pop()
        for dep in apt.depends(pkg):
            if release in dep and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return sorted(seen)


def find_release(apt: PrivateApt, suite: str) -> str:
    """The release (uname -r) behind the suite's linux-image-amd64: with an
    ABI number (6.1.0-57-amd64), a Debian revision (7.2.13+deb14-amd64), or
    none (experimental's 7.3-amd64)."""
    try:
        deps = apt.depends("linux-image-amd64")
    except RuntimeError as e:
        raise NoKernel(f"Debian {suite} has no linux-image-amd64 now ({e})") from None
    for dep in deps:
        m = re.match(r"linux-image-(\d+\.\d+\S*-amd64)(?:-unsigned)?$", dep)
        if m:
            return m.group(1)
    raise NoKernel(f"Debian {suite}'s linux-image-amd64 depends on no kernel image")


def extract(deb: Path, dest: Path, members: list[str] | None = None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    tar_cmd = ["tar", "-x", "-C", str(dest)]
    if members:
        tar_cmd += ["--wildcards", *members]
    p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    p2 = subprocess.run(tar_cmd, stdin=p1.stdout, capture_output=True, text=True)
    assert p1.stdout is not None
    p1.stdout.close()
    # With member patterns, tar exits 2 when one of them matched nothing; the
    # callers check for the files they need.
    missing_only = members and all(
        "Not found in archive" in line or "Exiting with failure" in line
        for line in p2.stderr.splitlines()
    )
    if p1.wait() != 0 or (p2.returncode != 0 and not missing_only):
        raise RuntimeError(f"extracting {deb.name} failed: {p2.stderr.strip()}")


def locate(root: Path, dbg: Path, release: str) -> tuple[str, str, str, list[str]]:
    candidates = [
        root / f"boot/vmlinuz-{release}",
        root / f"usr/lib/modules/{release}/vmlinuz",
        root / f"lib/modules/{release}/vmlinuz",
    ]
    vmlinuz = next((p for p in candidates if p.exists()), None)
    if vmlinuz is None:
        raise RuntimeError(f"no vmlinuz for {release} in {root}")
    moddir = next(
        p
        for p in [root / f"usr/lib/modules/{release}", root / f"lib/modules/{release}"]
        if p.exists()
    )
    dbgmods = dbg / f"usr/lib/debug/lib/modules/{release}"
    vmlinux = next(
        (
            p
            for p in [dbgmods / "vmlinux", dbg / f"usr/lib/debug/boot/vmlinux-{release}"]
            if p.exists()
        ),
        None,
    )  # exists() follows links: a dangling one is skipped
    if vmlinux is None:
        raise RuntimeError(f"no vmlinux in the -dbg package for {release}")
    kvm = sorted(str(p) for p in (dbgmods / "kernel/arch/x86/kvm").glob("kvm*.ko*"))
    return str(vmlinuz), str(moddir), str(vmlinux.resolve()), kvm


def fetch(suite: str, cache: Path | None = None, log: Callable[[str], None] = print) -> Kernel:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    cache = cache or default_cache()
    top = cache / suite
    stamp = top / "kernel.json"
    if stamp.exists():
        return Kernel(**json.loads(stamp.read_text()))
    top.mkdir(parents=True, exist_ok=True)
    apt = PrivateApt(top / "apt", suite)
    log(f"[kernels] {suite}: updating private package lists")
    apt.update()
    release = find_release(apt, suite)
    image_pkgs = kernel_packages(apt, "linux-image-amd64", release)
    try:
        dbg_pkgs = [
            p for p in kernel_packages(apt, "linux-image-amd64-dbg", release) if p.endswith("-dbg")
        ]
    except RuntimeError as e:
        raise NoKernel(f"Debian {suite} has no linux-image-amd64-dbg now ({e})") from None
    if not dbg_pkgs:
        raise NoKernel(f"Debian {suite} has {release} but no -dbg package for it")
    version = apt.version(image_pkgs[0])
    log(f"[kernels] {suite}: {release} ({version}): {' '.join(image_pkgs + dbg_pkgs)}")
    root, dbg = top / "root", top / "dbg"
    for d in (root, dbg):
        shutil.rmtree(d, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=top) as tmp:
        debs = apt.download(image_pkgs, Path(tmp))
        for deb in debs:
            extract(deb, root)
            deb.unlink()
        dbgdir = Path(tmp) / "dbg"
        dbgdir.mkdir()
        for deb in apt.download(dbg_pkgs, dbgdir):
            log(f"[kernels] {suite}: extracting vmlinux and kvm modules from {deb.name}")
            # vmlinux is /usr/lib/debug/boot/vmlinux-<release> up to trixie, with a
            # link in lib/modules; sid turns it round.  Take both.
            extract(
                deb,
                dbg,
                [
                    f"./usr/lib/debug/boot/vmlinux-{release}",
                    f"./usr/lib/debug/lib/modules/{release}/vmlinux",
                    f"./usr/lib/debug/lib/modules/{release}/kernel/arch/x86/kvm/*",
                ],
            )
            deb.unlink()
    vmlinuz, moddir, vmlinux, kvm = locate(root, dbg, release)
    # Debian generates modules.dep in postinst; we never run it, so do it here.
    # depmod -b expects <base>/lib/modules; usr-merged layouts need a lib link.
    if not (root / "lib").exists() and (root / "usr/lib/modules").exists():
        (root / "lib").symlink_to("usr/lib")
    subprocess.run(["depmod", "-b", str(root), release], check=True)
    k = Kernel(
        suite=suite,
        release=release,
        version=version,
        vmlinuz=vmlinuz,
        moddir=moddir,
        vmlinux=vmlinux,
        kvm_modules=kvm,
    )
    stamp.write_text(json.dumps(asdict(k), indent=1) + "\n")
    return k


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", choices=sorted(SUITES), help="Debian suite to take the kernel from")
    ap.add_argument(
        "--cache",
        type=Path,
        help="cache directory (default: $KVMWALK_CACHE/kernels or ~/.cache/drgn-kvmwalk/kernels)",
    )
    args = ap.parse_args()
    try:
        k = fetch(args.suite, args.cache, log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"kernels.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(k), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
