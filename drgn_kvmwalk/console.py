# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``kvmwalk`` console script: the same command line as the drgn script,
with the target chosen on it and the drgn Program built here.

    kvmwalk [-k | -c VMCORE | --qemu SOCKET] [-s SYMBOLS]... --vcpu N --addr X ...

Only the debug info the walk needs is loaded: vmlinux and the kvm modules
(kvm, kvm_amd, kvm_intel), first from the ``-s`` files, then from drgn's
standard places (/usr/lib/debug, debuginfod if drgn has it enabled), never
for the other loaded modules; that is most of drgn's start-up time on a
distribution kernel.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, TextIO

from drgn import FaultError, MainModule, MissingDebugInfoError, Program

from .cli import EXIT_USAGE, UsageError, build_parser, parse_args, run
from .kdump import KdumpError, KdumpFile, is_kdump, kdump_program

__all__ = [
    "KVM_MODULES",
    "build_program",
    "console_parser",
    "load_kvm_debug_info",
    "main",
    "open_core",
]

KVM_MODULES = frozenset({"kvm", "kvm_amd", "kvm_intel"})


def console_parser(prog_name: str = "kvmwalk") -> argparse.ArgumentParser:
    parser = build_parser(prog_name)
    target = parser.add_argument_group("target (default: the running kernel, like drgn)")
    which = target.add_mutually_exclusive_group()
    which.add_argument(
        "-k", "--kernel", action="store_true", help="the running kernel (/proc/kcore; needs root)"
    )
    which.add_argument(
        "-c", "--core", metavar="VMCORE", help="a crash dump: ELF or makedumpfile/kdump-compressed"
    )
    which.add_argument(
        "--qemu",
        metavar="SOCKET",
        help="a QEMU guest's kernel through its QMP socket (the guest needs "
        "-device vmcoreinfo and qemu_fw_cfg loaded)",
    )
    target.add_argument(
        "-s",
        "--symbols",
        metavar="PATH",
        action="append",
        default=[],
        help="a debug info file for vmlinux or a kvm module (repeatable); "
        "the rest is looked for in the standard places",
    )
    return parser


def load_kvm_debug_info(prog: Program, paths: Sequence[str]) -> None:
    """Debug info for the kernel and the kvm modules only: ``paths`` first,
    then drgn's enabled finders for what is still missing.  What cannot be
    found is left to the walk, whose error names the file to load."""
    if paths:
        try:
            prog.load_debug_info(paths)
        except MissingDebugInfoError:
            pass  # files for other modules are ignored; missing ones come next
    wanted = [
        module
        for module, _ in prog.loaded_modules()
        if isinstance(module, MainModule) or module.name in KVM_MODULES
    ]
    missing = [module for module in wanted if module.wants_debug_file()]
    if missing:
        prog.load_module_debug_info(*missing)


def open_core(path: str) -> Program:
    """A Program of the crash dump at ``path``: drgn's own reader, or for a
    kdump-compressed dump that libkdumpfile cannot read (a kernel release
    without a sublevel, such as Debian experimental's ``7.3-amd64``), this
    package's :mod:`~drgn_kvmwalk.kdump` reader.

    :raises OSError: the file cannot be opened
    :raises ValueError: it is not a dump drgn or this package can read
    """
    prog = Program()
    kdump = is_kdump(path)
    try:
        prog.set_core_dump(path)
    except Exception as e:
        # libkdumpfile's own errors come as plain Exceptions; for anything
        # but a kdump-compressed file, drgn's word is the last.
        if not kdump:
            raise
        return _own_reader(path, None, str(e))
    if not kdump:
        return prog
    try:
        dump = KdumpFile(path)
    except KdumpError:
        return prog  # libkdumpfile's word on it comes with the first read
    pfn = dump.first_pfn()
    try:
        if pfn is not None:
            prog.read(pfn * dump.page_size, 1, True)
    except FaultError as e:
        return _own_reader(path, dump, str(e))
    dump.close()
    return prog


def _own_reader(path: str, dump: Optional[KdumpFile], refused: str) -> Program:
    """This package's reader of ``path`` (on ``dump`` when it is open)."""
    try:
        return kdump_program(dump or path)  # the header is read once
    except KdumpError as e:
        if dump is not None:
            dump.close()
        raise ValueError(
            f"libkdumpfile cannot read it ({refused}), nor can kvmwalk's own reader ({e})"
        ) from None


def build_program(args: argparse.Namespace) -> Program:
    """The target Program, with the debug info the walk needs.

    :raises UsageError: the target cannot be opened
    """
    prog = Program()
    try:
        if args.core is not None:
            prog = open_core(args.core)
        elif args.qemu is not None:
            prog.set_qemu_qmp(args.qemu)
        else:
            prog.set_kernel()
    except PermissionError as e:
        raise UsageError(f"cannot open the running kernel: {e} (run as root)") from None
    except (OSError, ValueError) as e:
        what = args.core or args.qemu or "/proc/kcore"
        raise UsageError(f"cannot open {what}: {e}") from None
    try:
        load_kvm_debug_info(prog, args.symbols)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load debug info: {e}") from None
    return prog


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Entry point of the ``kvmwalk`` console script."""
    prog_name = "kvmwalk"
    out = out or sys.stdout
    err = err or sys.stderr
    argv_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(console_parser(prog_name), argv_list, prog_name)
        prog = build_program(args)
    except UsageError as e:
        print(f"{prog_name}: error: {e}", file=err)
        return EXIT_USAGE
    return run(prog, args, prog_name=prog_name, out=out, err=err)


if __name__ == "__main__":
    sys.exit(main())
