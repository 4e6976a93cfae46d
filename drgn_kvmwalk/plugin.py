"""drgn plugin: the ``kvmwalk`` command in drgn's REPL (``%kvmwalk ...``).

Registered through the ``drgn.plugins`` entry point: drgn calls
:func:`drgn_prog_set`, which registers the command.  The walk's modules are
imported when the command first runs.  The options are the command line's (see ``%kvmwalk
--help``), plus drgn's ``--drgn``: print the equivalent Python instead of
running it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Sequence

from drgn import Program
from drgn.commands import DrgnCodeBuilder, custom_command, parse_shell_command

__all__ = ["drgn_code", "drgn_prog_set", "register"]


def drgn_code(prog: Program, args: argparse.Namespace) -> str:
    """The Python that does what ``args`` ask, with the package's helpers."""
    code = DrgnCodeBuilder(prog)
    if args.list:
        code.add_from_import("drgn_kvmwalk", "for_each_vm", "vm_summary")
        code.append("for vm in for_each_vm(prog):\n"
                    "    summary = vm_summary(prog, vm)\n"
                    "    print(summary.pid, summary.mmu, summary.tdp_mmu)\n"
                    "    for vcpu in summary.vcpus:\n"
                    "        print(vcpu.id, vcpu.root)\n"
                    "    for memslot in summary.memslots:\n"
                    "        print(memslot)\n")
        return code.get()
    if args.stats:
        code.add_from_import("drgn_kvmwalk", "find_vm", "for_each_vm")
        code.add_from_import("drgn_kvmwalk.verify", "vm_stats")
        vms = "for_each_vm(prog)" if args.vm is None else f"[find_vm(prog, {args.vm})]"
        code.append(f"for vm in {vms}:\n"
                    "    stats = vm_stats(prog, vm)\n"
                    "    # leaves per page size, beside kvm->stat.pages_4k/2m/1g (or lpages)\n"
                    "    print(stats.pid, stats.leaves, stats.kvm, stats.differences)\n")
        return code.get()
    code.add_from_import("drgn_kvmwalk", "find_vm", "find_vcpu", "mmu_info", "spte_format",
                         "DrgnPhysMem")
    code.append(f"vm = find_vm(prog, {args.vm!r})\n"
                f"vcpu = find_vcpu(vm.kvm, {args.vcpu})\n"
                "info = mmu_info(vcpu)  # root: HPA, level, direct; kind; tdp_mmu\n"
                "fmt = spte_format(prog, vm.kvm)\n")
    if args.addr:
        code.add_from_import("drgn_kvmwalk", "TableCache", "walk_addr")
        if args.annotate:
            code.add_from_import("drgn_kvmwalk", "shadow_page")
        code.append("mem = TableCache(DrgnPhysMem(prog))\n")
        code.append(f"for addr in [{', '.join(hex(a) for a in args.addr)}]:\n")
        code.append("    walk = walk_addr(mem, fmt, info.root, addr)\n"
                    "    for step in walk.steps:\n"
                    "        print(step.level, hex(step.sptep), hex(step.spte), step.info.flags)\n")
        if args.annotate:
            code.append("        print('  ', shadow_page(prog, step.table))  # struct kvm_mmu_page\n")
        code.append("    print(hex(addr), walk.hpa, walk.page_size, walk.stop)\n")
        return code.get()
    code.add_from_import("drgn_kvmwalk", "iter_leaves", "LeafRun")
    start, end = args.range if args.range else (0, None)
    end_text = "None" if end is None else hex(end)
    code.append(f"for run in iter_leaves(DrgnPhysMem(prog), fmt, info.root, {start:#x}, "
                f"{end_text}):\n"
                "    if not isinstance(run, LeafRun):\n"
                "        print('not accessible:', run)\n"
                "        continue\n"
                "    # numpy arrays: one entry per leaf SPTE of one table page\n"
                "    for addr, spte, hpa in zip(run.addrs().tolist(), run.sptes.tolist(),\n"
                "                               run.hpas(fmt).tolist()):\n"
                "        print(hex(addr), run.level, hex(spte), hex(hpa))\n")
    return code.get()


def _cmd_kvmwalk(prog: Program, name: str, args: Sequence[str], *,
                 parser: argparse.ArgumentParser, globals: Dict[str, Any],
                 **kwargs: Any) -> None:
    from .cli import UsageError, build_parser, parse_args, run

    own = build_parser(name)
    own.add_argument("--drgn", action="store_true",
                     help="print how to do the same with drgn_kvmwalk's Python API")
    try:
        parsed = parse_args(own, list(args), name)
    except UsageError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return
    except SystemExit:  # --help was printed; the REPL goes on
        return
    if parsed.drgn:
        sys.stdout.write(drgn_code(prog, parsed))
        return
    run(prog, parsed, prog_name=name, out=sys.stdout, err=sys.stderr)


_registered = False


def register() -> None:
    """Register ``kvmwalk`` in drgn's command namespace (once)."""
    global _registered
    if _registered:
        return
    custom_command(
        name="kvmwalk",
        description="walk KVM's page tables (SPTEs) of a VM's vCPU",
        usage="**kvmwalk** [--vm PID] (--vcpu N (--addr X... | --dump | --map) | --list) "
              "[--range START-END] [--json] [--drgn]",
        long_description="Walk KVM's own page tables for a vCPU of a VM, as KVM's "
                         "for_each_shadow_entry() does; or list the VMs, or dump or map every "
                         "leaf SPTE under a vCPU's root.  '%kvmwalk --help' shows every option.",
        parse=parse_shell_command,
    )(_cmd_kvmwalk)
    _registered = True


def drgn_prog_set(prog: Program) -> None:
    """drgn's plugin hook, called for each new Program: registers the command."""
    register()
