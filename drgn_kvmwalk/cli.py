"""The ``kvmwalk`` command line: argument parsing, exit codes, output choice.

``main(prog, argv)`` holds all of it, so the contrib script, tests and (later)
the drgn command run the very same code.  Exit status: 0 when every address
was walked (mapped or not), 2 for bad input or a target that lacks what the
walk needs, with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, NoReturn, Optional, Sequence, TextIO

from drgn import FaultError, Program

from .errors import KvmWalkError
from .kvm import find_vcpu, find_vm
from .mmu import DrgnPhysMem, mmu_info, spte_format
from .render import header_text, walk_json, walk_text
from .walk import AddressError, TableCache, walk_addr

__all__ = ["EXIT_OK", "EXIT_USAGE", "UsageError", "main", "parse_addr"]

EXIT_OK = 0
EXIT_USAGE = 2

DESCRIPTION = """\
Walk KVM's own page tables (SPTEs) for a vCPU of a VM on this host, exactly as
KVM's for_each_shadow_entry() does, and print every level's entry and the host
physical address (HPA) the address lands on."""

EPILOG = """\
addresses: under TDP (Intel EPT, AMD NPT) the root translates guest physical
addresses (GPA); under shadow paging it translates guest virtual addresses
(GVA) of the guest's current page tables.

exit status: 0 every address was walked (an unmapped address is an answer);
2 bad arguments, or the target lacks the VM, vCPU, kvm module or debug info.

examples:
  drgn -k contrib/kvmwalk.py --vcpu 0 --addr 0x1000
  drgn -c vmcore -s kvm.ko contrib/kvmwalk.py --vm 4242 --vcpu 1 --addr 0x40000000 --json
  drgn --qemu /run/qmp.sock -s vmlinux -s kvm.ko contrib/kvmwalk.py --vcpu 0 --addr 4096"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_addr(text: str) -> int:
    """A hex (0x...) or decimal address, 0 <= addr < 2**64."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}: use hex (0x1000) or decimal (4096)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: negative")
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: more than 64 bits")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: negative")
    return value


def build_parser(prog_name: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog_name, description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vm", metavar="PID", type=_nonneg_int,
                   help="the VM created by process PID (QEMU's pid); may be left out "
                        "when the host has exactly one VM")
    p.add_argument("--vcpu", metavar="N", type=_nonneg_int,
                   help="the vCPU whose vcpu_id is N (debugfs vcpuN, QEMU's cpu index)")
    p.add_argument("--addr", metavar="X", type=parse_addr, action="append",
                   help="address to walk: GPA under TDP, GVA under shadow paging; hex or "
                        "decimal; repeat for several addresses in one run")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per address (JSON Lines) instead of text")
    return p


def main(prog: Program, argv: Optional[Sequence[str]] = None, *,
         prog_name: str = "kvmwalk", out: Optional[TextIO] = None,
         err: Optional[TextIO] = None) -> int:
    """Run the command line on ``prog`` and return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser(prog_name)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        missing = [opt for opt, val in (("--vcpu", args.vcpu), ("--addr", args.addr))
                   if val is None]
        if missing:
            raise UsageError("missing " + " and ".join(missing)
                             + f" (see {prog_name} --help)")
        return _walk(prog, args, out)
    except UsageError as e:
        print(f"{prog_name}: error: {e}", file=err)
    except (KvmWalkError, AddressError) as e:
        print(f"{prog_name}: {e}", file=err)
    except FaultError as e:
        print(f"{prog_name}: cannot read the target's memory: {e}", file=err)
    return EXIT_USAGE


def _walk(prog: Program, args: argparse.Namespace, out: TextIO) -> int:
    vm = find_vm(prog, args.vm)
    vcpu = find_vcpu(vm.kvm, args.vcpu)
    info = mmu_info(vcpu)
    fmt = spte_format(prog, vm.kvm)
    mem = TableCache(DrgnPhysMem(prog))
    # Check every address before printing anything, so that a bad one does not
    # leave half an answer behind.
    walks = [walk_addr(mem, fmt, info.root, addr) for addr in args.addr]
    if args.json:
        for w in walks:
            out.write(json.dumps(walk_json(w, vm.pid, args.vcpu, info.kind, info.tdp_mmu, fmt))
                      + "\n")
    else:
        lines: List[str] = [header_text(vm.pid, args.vcpu, info.kind, info.tdp_mmu, fmt,
                                        info.root)]
        for w in walks:
            lines += walk_text(w)
        out.write("\n".join(lines) + "\n")
    out.flush()
    return EXIT_OK
