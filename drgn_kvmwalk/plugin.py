# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn plugin: the ``kvmwalk`` command in drgn's REPL (``%kvmwalk ...``).

Registered through the ``drgn.plugins`` entry point: drgn calls
:func:`drgn_prog_set`, which registers the command.  The walk's modules are
imported when the command first runs.  The options are the command line's (see ``%kvmwalk
--help``), plus drgn's ``--drgn``: print the equivalent Python instead of
running it.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any, Optional, Sequence

from drgn import Program
from drgn.commands import CommandError, DrgnCodeBuilder, parse_shell_command
from drgn.commands.linux import linux_kernel_custom_command

__all__ = ["drgn_code", "drgn_code_refusal", "drgn_prog_set", "register"]


def drgn_code_refusal(args: argparse.Namespace) -> Optional[str]:
    """Why :func:`drgn_code` cannot print code for ``args``, or None: it never
    prints code that does something other than the command."""
    if args.json:
        return "--drgn prints Python that prints values, not JSON; leave out --json"
    return None


def _hex_or_none(value: Optional[int]) -> str:
    return "None" if value is None else hex(value)


def drgn_code(prog: Program, args: argparse.Namespace) -> str:
    """The Python that does what ``args`` ask, with the package's helpers:
    every action, with ``--range``, ``--root``, ``--annotate``, ``--cr3`` and
    ``--length``.

    :raises ValueError: with :func:`drgn_code_refusal`'s reason, for options
        it has no code for
    """
    refusal = drgn_code_refusal(args)
    if refusal is not None:
        raise ValueError(refusal)
    code = DrgnCodeBuilder(prog)
    if args.list:
        code.add_from_import("drgn_kvmwalk", "find_vm", "for_each_vm", "vm_summary")
        vms = "for_each_vm(prog)" if args.vm is None else f"[find_vm(prog, {args.vm})]"
        code.append(
            f"for kvm in {vms}:\n"
            "    summary = vm_summary(kvm)\n"
            "    print(summary.pid, summary.mmu, summary.tdp_mmu)\n"
            "    for vcpu in summary.vcpus:\n"
            "        print(vcpu.id, vcpu.root)\n"
            "        print(vcpu.state)  # run state, CPU, thread, last exit, registers, stat\n"
            "    for memslot in summary.memslots:\n"
            "        print(memslot)\n"
        )
        return code.get()
    if args.stats:
        code.add_from_import("drgn_kvmwalk", "find_vm", "for_each_vm")
        code.add_from_import("drgn_kvmwalk.stats", "vm_stats")
        vms = "for_each_vm(prog)" if args.vm is None else f"[find_vm(prog, {args.vm})]"
        code.append(
            f"for kvm in {vms}:\n"
            "    stats = vm_stats(kvm)\n"
            "    # leaves per page size, beside kvm->stat.pages_4k/2m/1g (or lpages)\n"
            "    print(stats.pid, stats.leaves, stats.kvm, stats.differences)\n"
        )
        return code.get()
    if args.verify:
        code.add_from_import("drgn_kvmwalk", "find_vm", "for_each_vm")
        code.add_from_import("drgn_kvmwalk.verify", "VerifySummary", "verify_vm")
        vms = "for_each_vm(prog)" if args.vm is None else f"[find_vm(prog, {args.vm})]"
        roots = "None"
        if args.vcpu is not None:
            code.add_from_import("drgn_kvmwalk", "find_vcpu", "select_roots")
            roots = (
                f"[lr.root.hpa for lr in select_roots(find_vcpu(kvm, {args.vcpu}), {args.root!r})]"
            )
        code.append(
            f"for kvm in {vms}:\n"
            f"    for record in verify_vm(kvm, {roots}):\n"
            "        # each Problem as it is found, then one VerifySummary\n"
            "        print(record)\n"
        )
        return code.get()
    if args.hpa:
        code.add_from_import("drgn_kvmwalk.verify", "find_hpa")
        kvms = "None" if args.vm is None else f"[find_vm(prog, {args.vm})]"
        if args.vm is not None:
            code.add_from_import("drgn_kvmwalk", "find_vm")
        hpas = ", ".join(hex(h) for h in args.hpa)
        code.append(
            f"for record in find_hpa(prog, [{hpas}], {kvms}):\n"
            "    # an HpaMapping per leaf SPTE that maps it, an HpaTable for a table page\n"
            "    print(record)\n"
        )
        return code.get()
    if args.read:
        gva = bool(args.gva)
        code.add_from_import("drgn_kvmwalk", "find_vm", "find_vcpu")
        code.add_from_import("drgn_kvmwalk.guest", "VcpuMemory")
        code.append(
            f"vcpu = find_vcpu(find_vm(prog, {args.vm!r}), {args.vcpu})\n"
            + (
                f"# GVAs through the guest's page tables (from CR3 {args.cr3:#x}), then KVM's\n"
                if gva and args.cr3 is not None
                else "# GVAs through the guest's page tables, then KVM's\n"
                if gva
                else "# addresses as the vCPU's root translates them (GPAs under TDP)\n"
            )
            + f"mem = VcpuMemory(vcpu, gva={gva}, cr3={_hex_or_none(args.cr3)})\n"
            f"for addr in [{', '.join(hex(a) for a in args.read)}]:\n"
            f"    r = mem.read(addr, {args.length})\n"
            "    for p in r.pieces:  # parts that land contiguously, or could not be read\n"
            "        print(hex(p.addr), p.length, p.gpa, p.hpa,\n"
            "              p.data.hex() if p.data is not None else p.error)\n"
        )
        return code.get()
    if args.gva:
        code.add_from_import("drgn_kvmwalk", "find_vm", "find_vcpu")
        code.add_from_import("drgn_kvmwalk.guest", "VcpuGva")
        code.append(
            f"vcpu = find_vcpu(find_vm(prog, {args.vm!r}), {args.vcpu})\n"
            f"g = VcpuGva(vcpu, cr3={_hex_or_none(args.cr3)})  # the guest's registers, "
            "KVM's root\n"
            "print(g.regs.mode().name, hex(g.cr3), g.regs.notes)\n"
            f"for gva in [{', '.join(hex(a) for a in args.gva)}]:\n"
            "    w = g.walk(gva)\n"
            "    for s in w.guest.steps:  # the guest's levels: entry GPA, HPA, value\n"
            "        print(s.level, hex(s.gpa), s.hpa, hex(s.pte), s.flags)\n"
            "    print(hex(gva), w.guest.gpa, w.hpa, w.page_size, w.stop, w.mismatch)\n"
        )
        return code.get()
    code.add_from_import(
        "drgn_kvmwalk", "find_vm", "find_vcpu", "select_roots", "spte_format", "DrgnPhysMem"
    )
    code.append(
        f"kvm = find_vm(prog, {args.vm!r})\n"
        f"vcpu = find_vcpu(kvm, {args.vcpu})\n"
        "fmt = spte_format(kvm)\n"
        f"for lr in select_roots(vcpu, {args.root!r}):  # label, root (HPA, level), kind\n"
        "    print(lr.label, lr.kind, hex(lr.root.hpa), lr.root.level)\n"
    )
    if args.annotate:
        code.add_from_import("drgn_kvmwalk", "to_shadow_page")
    if args.addr:
        code.add_from_import("drgn_kvmwalk", "TableCache", "walk_addr")
        code.append(
            "    mem = TableCache(DrgnPhysMem(prog))\n"
            f"    for addr in [{', '.join(hex(a) for a in args.addr)}]:\n"
            "        walk = walk_addr(mem, fmt, lr.root, addr)\n"
            "        for step in walk.steps:\n"
            "            print(step.level, hex(step.sptep), hex(step.spte), step.info.flags)\n"
        )
        if args.annotate:
            code.append(
                "            print('  ', to_shadow_page(prog, step.table))  # struct kvm_mmu_page\n"
            )
        code.append("        print(hex(addr), walk.hpa, walk.page_size, walk.stop)\n")
        return code.get()
    start, end = args.range if args.range else (0, None)
    end_text = "None" if end is None else hex(end)
    if args.map:
        code.add_from_import("drgn_kvmwalk.leaves", "MapRange", "iter_ranges")
        per_table = ", per_table=True" if args.annotate else ""
        code.append(
            f"    for r in iter_ranges(DrgnPhysMem(prog), fmt, lr.root, {start:#x}, {end_text}"
            f"{per_table}):\n"
            "        if not isinstance(r, MapRange):\n"
            "            print('not accessible:', r)\n"
            "            continue\n"
        )
        if args.annotate:
            code.append("        print(to_shadow_page(prog, r.table))  # struct kvm_mmu_page\n")
        code.append("        print(hex(r.start), hex(r.end), hex(r.hpa), r.level)\n")
        return code.get()
    code.add_from_import("drgn_kvmwalk", "iter_leaves", "LeafRun")
    code.append(
        f"    for run in iter_leaves(DrgnPhysMem(prog), fmt, lr.root, {start:#x}, "
        f"{end_text}):\n"
        "        if not isinstance(run, LeafRun):\n"
        "            print('not accessible:', run)\n"
        "            continue\n"
    )
    if args.annotate:
        code.append("        print(to_shadow_page(prog, run.table))  # struct kvm_mmu_page\n")
    code.append(
        "        # numpy arrays: one entry per leaf SPTE of one table page\n"
        "        for addr, spte, hpa in zip(run.addrs().tolist(), run.sptes.tolist(),\n"
        "                                   run.hpas(fmt).tolist()):\n"
        "            print(hex(addr), run.level, hex(spte), hex(hpa))\n"
    )
    return code.get()


def _cmd_kvmwalk(prog: Program, name: str, args: Sequence[str], **kwargs: Any) -> None:
    """The command: the command line's ``run()``; a failure is drgn's
    :class:`~drgn.commands.CommandError` with the one line the command line
    would print, so that a script calling ``run_command()`` can tell."""
    from .cli import EXIT_OK, EXIT_PROBLEMS, UsageError, build_parser, parse_args, run

    own = build_parser(name)
    own.add_argument(
        "--drgn",
        action="store_true",
        help="print how to do the same with drgn_kvmwalk's Python API (every action "
        "and option but --json)",
    )
    try:
        parsed = parse_args(own, list(args), name)
    except UsageError as e:
        raise CommandError(f"{name}: error: {e}") from None
    except SystemExit:  # --help was printed; the REPL goes on
        return
    if parsed.drgn:
        try:
            sys.stdout.write(drgn_code(prog, parsed))
        except ValueError as e:
            raise CommandError(f"{name}: {e}") from None
        return
    err = io.StringIO()
    rc = run(prog, parsed, prog_name=name, out=sys.stdout, err=err)
    lines = err.getvalue().splitlines()
    if rc == EXIT_OK:
        sys.stderr.write(err.getvalue())  # warnings: table pages not readable
        return
    if rc == EXIT_PROBLEMS:  # --verify printed them
        sys.stderr.write(err.getvalue())
        raise CommandError(f"{name}: --verify found problems (exit status 1)")
    # run() ends a failure with one line; warnings before it still go to stderr.
    for line in lines[:-1]:
        print(line, file=sys.stderr)
    raise CommandError(lines[-1] if lines else f"{name}: failed")


_registered = False


def register() -> None:
    """Register ``kvmwalk`` in drgn's command namespace (once)."""
    global _registered
    if _registered:
        return
    # As drgn registers its own kernel commands: enabled for Linux kernel
    # programs only.
    linux_kernel_custom_command(
        name="kvmwalk",
        description="walk KVM's page tables (SPTEs) of a VM's vCPU",
        usage="**kvmwalk** [--vm PID] (--vcpu N (--addr X... | --gva X... [--cr3 X] | "
        "--read X... [--gva] [--length N] | --dump | --map) | --list | --stats | "
        "--verify [--vcpu N] | --hpa X...) "
        "[--range START-END] [--root current|prev|all] [--annotate] [--json] [--drgn]",
        long_description="Walk KVM's own page tables for a vCPU of a VM, as KVM's "
        "for_each_shadow_entry() does; or list the VMs, or dump or map every "
        "leaf SPTE under a vCPU's root.  '%kvmwalk --help' shows every option.",
        parse=parse_shell_command,
    )(_cmd_kvmwalk)
    _registered = True


def drgn_prog_set(prog: Program) -> None:
    """drgn's plugin hook, called for each new Program: registers the command."""
    register()
