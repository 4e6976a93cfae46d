# SPDX-License-Identifier: LGPL-2.1-or-later
"""The ``kvmwalk`` command line: argument parsing, exit codes, output choice.

``main(prog, argv)`` holds all of it, so the contrib script, tests and (later)
the drgn command run the very same code.  Exit status: 0 when every address
was walked (mapped or not), 2 for bad input or a target that lacks what the
walk needs, with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    NoReturn,
    Optional,
    Sequence,
    TextIO,
    Tuple,
    Union,
)

from drgn import FaultError, Object, Program, ProgramFlags

from .errors import CorruptList, KvmWalkError, NoRoot, NoSuchVm
from .gmem import MAX_READ
from .gwalk import GuestAddressError
from .kvm import find_vcpu, find_vm, for_each_vm, vm_pid
from .mmu import DrgnPhysMem, ShadowPage, to_shadow_page
from .render import (
    FlagCache,
    dump_block,
    dump_header,
    dump_lines,
    guest_regs_text,
    gva_json,
    gva_text,
    header_text,
    hpa_json,
    hpa_none_json,
    hpa_none_text,
    hpa_table_json,
    hpa_table_text,
    hpa_text,
    list_json,
    list_text,
    map_block,
    map_header,
    map_line,
    problem_json,
    problem_text,
    read_json,
    read_text,
    stats_json,
    stats_text,
    unreadable_line,
    verify_summary_json,
    verify_summary_text,
    walk_json,
    walk_text,
)
from .spte import SpteFormat
from .sptefmt import spte_format
from .views import ROOT_CHOICES, LabelledRoot, select_roots, vm_summary
from .walk import (
    MAX_TABLES,
    AddressError,
    PhysMem,
    ReadChange,
    ReadWatch,
    Root,
    TableCache,
    walk_addr,
)

if TYPE_CHECKING:
    from .leaves import LeafColumns  # numpy: imported only by the whole-table views

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "parse_addr",
    "parse_args",
    "parse_range",
    "run",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1  # --verify found a problem (as fsck says it)
EXIT_USAGE = 2

DESCRIPTION = """\
Walk KVM's own page tables (SPTEs) for a vCPU of a VM on this host, exactly as
KVM's for_each_shadow_entry() does, and print every level's entry and the host
physical address (HPA) the address lands on; or list the VMs, or dump or map
every leaf SPTE under a vCPU's root."""

EPILOG = """\
what to do (one of them):
  --addr X     walk one address (repeatable)
  --gva X      translate a guest virtual address through the guest's page
               tables and KVM's SPTEs, as the CPU's two-dimensional walk does
  --read X     guest memory from X through the walk, as a hexdump (--length N
               bytes; X a GVA through the guest's page tables with --gva)
  --dump       every leaf SPTE under the vCPU's current root, in address order
  --map        the same, merged into ranges of one page size and one set of
               flags that are contiguous in both address and HPA
  --list       the VMs, their vCPUs (root, level) and memslots
  --stats      leaf SPTEs per page size over all of a VM's tables, beside
               KVM's own counters
  --verify     every leaf SPTE and table page of a VM (or of every VM)
               against the memslots, the VMM's own page tables and KVM's
               struct kvm_mmu_page books; one line per problem, then a summary
  --hpa X      which VMs, roots, guest addresses and SPTEs map host physical
               address X, and whether X is a KVM table page (repeatable)

addresses: under TDP (Intel EPT, AMD NPT) the root translates guest physical
addresses (GPA); under shadow paging it translates guest virtual addresses
(GVA) of the guest's current page tables.

JSON (--json): --addr, --gva, --read, --dump, --map and --stats print JSON
Lines, one object per address, read, leaf, range or VM; --verify one object
per problem, then one summary per VM; --hpa one object per mapping (an HPA
nothing maps gets one with "vm": null); --list prints one object {"vms": [...]}.

exit status: 0 the walk was done (an unmapped address is an answer; table pages
that cannot be read or that corrupt tables repeat are named on stderr);
1 --verify found a problem; 2 bad arguments, the target lacks the VM, vCPU,
kvm module or debug info, or kernel state the action needs is corrupt (one
line naming it; whole-VM actions name a corrupt part on stderr and go on).

examples:
  drgn -k contrib/kvmwalk.py --vcpu 0 --addr 0x1000
  drgn -c vmcore -s kvm.ko contrib/kvmwalk.py --vm 4242 --vcpu 1 --addr 0x40000000 --json
  drgn --qemu /run/qmp.sock -s vmlinux -s kvm.ko contrib/kvmwalk.py --vcpu 0 --addr 4096
  drgn -k contrib/kvmwalk.py --list
  drgn -k contrib/kvmwalk.py --vcpu 0 --read 0x7f0000001000 --gva --length 64
  drgn -k contrib/kvmwalk.py --vcpu 0 --map --range 0x0-0x100000000
  drgn -c vmcore -s kvm.ko contrib/kvmwalk.py --verify --json
  drgn -c vmcore -s kvm.ko contrib/kvmwalk.py --hpa 0x52f0000"""


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
            f"invalid address {text!r}: use hex (0x1000) or decimal (4096)"
        ) from None
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


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if not value:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_range(text: str) -> Tuple[int, int]:
    """START-END (END exclusive), each hex or decimal."""
    start, sep, end = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"invalid range {text!r}: use START-END, e.g. 0x0-0x40000000 (END exclusive)"
        )
    lo, hi = parse_addr(start.strip()), parse_addr(end.strip())
    if hi <= lo:
        raise argparse.ArgumentTypeError(f"invalid range {text!r}: END must be above START")
    return lo, hi


# --gva without an address: --read's addresses are GVAs.
GVA_FLAG = -1
DEFAULT_READ_LENGTH = 256


def _read_length(text: str) -> int:
    value = _nonneg_int(text)
    if not 0 < value <= MAX_READ:
        raise argparse.ArgumentTypeError(
            f"invalid length {text!r}: 1 to {MAX_READ} bytes ({MAX_READ >> 20} MiB)"
        )
    return value


@functools.lru_cache(maxsize=4)
def _parser(prog_name: str) -> argparse.ArgumentParser:
    """:func:`build_parser`'s parser for :func:`main`, made once per name
    (parsing does not change it; other callers add options to their own)."""
    return build_parser(prog_name)


def build_parser(prog_name: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog_name,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--vm",
        metavar="PID",
        type=_nonneg_int,
        help="the VM created by process PID (QEMU's pid); may be left out "
        "when the host has exactly one VM",
    )
    p.add_argument(
        "--vcpu",
        metavar="N",
        type=_nonneg_int,
        help="the vCPU whose vcpu_id is N (debugfs vcpuN, QEMU's cpu index)",
    )
    p.add_argument(
        "--addr",
        metavar="X",
        type=parse_addr,
        action="append",
        help="address to walk: GPA under TDP, GVA under shadow paging; hex or "
        "decimal; repeat for several addresses in one run",
    )
    p.add_argument(
        "--gva",
        metavar="X",
        type=parse_addr,
        action="append",
        nargs="?",
        const=GVA_FLAG,
        help="guest virtual address to translate as the CPU does: the guest's own "
        "page tables from its CR3 (each table page's GPA and HPA), then KVM's "
        "SPTEs (under shadow paging, the shadow root's walk beside the guest's "
        "answer, and any difference); repeatable.  With --read and no X: "
        "--read's addresses are GVAs, read through the guest's page tables",
    )
    p.add_argument(
        "--read",
        metavar="X",
        type=parse_addr,
        action="append",
        help="read guest memory from X through the walk (X as --addr takes it, "
        "or a GVA with --gva), across page boundaries, as a hexdump; pages "
        "that are not mapped or not in the dump are named, never filled in; "
        "repeatable",
    )
    p.add_argument(
        "--length",
        metavar="N",
        type=_read_length,
        help=f"with --read: how many bytes (default {DEFAULT_READ_LENGTH}, at most "
        f"{MAX_READ >> 20} MiB)",
    )
    p.add_argument(
        "--cr3",
        metavar="X",
        type=parse_addr,
        help="with --gva: walk the guest's page tables from this CR3 (another "
        "address space of the guest, or when KVM holds no current CR3) instead "
        "of the vCPU's",
    )
    p.add_argument(
        "--dump",
        action="store_true",
        help="print every leaf SPTE under the vCPU's current root, in address "
        "order: address, size, SPTE address and value, HPA, flags",
    )
    p.add_argument(
        "--map",
        action="store_true",
        help="like --dump, merged into ranges of one page size and one set of "
        "flags that are contiguous in address and in HPA",
    )
    p.add_argument(
        "--range",
        metavar="START-END",
        type=parse_range,
        help="with --dump or --map: only leaves whose pages overlap "
        "[START, END) (GPAs or GVAs, as for --addr)",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="per VM: leaf SPTEs per page size over all its live tables (TDP MMU "
        "roots, legacy shadow pages) beside KVM's own counters "
        "(kvm->stat.pages_4k/2m/1g, or lpages); differences are flagged",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every present leaf SPTE of every root of the VM (--vm, or "
        "every VM; with --vcpu only the roots --root names for it) against the "
        "memslots (its GFN is in one), the VMM's page tables (same host page, "
        "at least as large, writable where the SPTE is) and KVM's books (each "
        "table page's struct kvm_mmu_page points back at it, at its level); "
        "exit status 1 when a problem is found",
    )
    p.add_argument(
        "--hpa",
        metavar="X",
        type=parse_addr,
        action="append",
        help="host physical address to trace back: every VM, root, guest "
        "address and leaf SPTE that maps it (walking every root of every VM, "
        "or of --vm), and its struct kvm_mmu_page when X is a KVM table page; "
        "repeatable",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the VMs (pid, MMU kind), their vCPUs (current root and level) and memslots",
    )
    p.add_argument(
        "--root",
        choices=ROOT_CHOICES,
        default="current",
        help="with --addr, --dump or --map: which roots to walk: the vCPU's "
        "current root (default), the MMU's cache of previous roots "
        "(prev_roots), or all: those, the nested guest MMU's root and every "
        "other top-level root of the VM (SMM, invalid); each root's output is "
        'labelled, and JSON records get a "root" key',
    )
    p.add_argument(
        "--annotate",
        action="store_true",
        help="with --addr, --dump or --map: name the struct kvm_mmu_page behind "
        "each table page (role: level, direct, access, address space, guest "
        "mode, invalid; GFN; root count); --map ranges then stop at table "
        "page boundaries",
    )
    p.add_argument(
        "--max-tables",
        metavar="N",
        type=_positive_int,
        default=MAX_TABLES,
        help="with --dump, --map, --stats, --verify or --hpa: read at most N table "
        f"pages under one root (default {MAX_TABLES}: 16 GiB of table pages, more "
        "than any real root has); a walk that reaches N says so on stderr and "
        "goes on with the next root, so that tables a corrupt kernel made to "
        "repeat cannot keep it going for hours",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON instead of text: JSON Lines for --addr, --gva, --read, --dump, "
        "--map and --stats, one object for --list",
    )
    return p


def main(
    prog: Program,
    argv: Optional[Sequence[str]] = None,
    *,
    prog_name: str = "kvmwalk",
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Run the command line on ``prog`` and return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser(prog_name)
    try:
        args = parse_args(parser, list(sys.argv[1:] if argv is None else argv), prog_name)
    except UsageError as e:
        print(f"{prog_name}: error: {e}", file=err)
        return EXIT_USAGE
    return run(prog, args, prog_name=prog_name, out=out, err=err)


# The options given thousands of times (one per address, from xargs or a
# script).  argparse's time is quadratic in the number of options (for each
# one it scans the positions of all the others: CPython 3.11's
# _parse_known_args), so their "OPT X" and "OPT=X" are taken out first.
_REPEATED = {"--addr": "addr", "--gva": "gva", "--read": "read", "--hpa": "hpa"}


def _take_repeated(argv: Sequence[str]) -> Tuple[List[str], Dict[str, List[int]]]:
    """(what argparse gets, the addresses of each option in :data:`_REPEATED`
    in their order).  Anything unusual (an abbreviation, a value that looks
    like an option, after ``--``) is left to argparse, which then words the
    error or takes the option as it always does; with an abbreviation of
    one of them, all of argv is (so that the order stays as given).

    :raises UsageError: an address that :func:`parse_addr` refuses
    """
    for a in argv:
        if a == "--":
            break
        name = a.partition("=")[0]
        if (
            len(name) > 2
            and name not in _REPEATED
            and any(opt.startswith(name) for opt in _REPEATED)
        ):
            return list(argv), {}
    rest: List[str] = []
    taken: Dict[str, List[int]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        name, eq, value = a.partition("=")
        if name in _REPEATED and (eq or (i + 1 < len(argv) and not argv[i + 1].startswith("-"))):
            if not eq:
                value = argv[i + 1]
            try:
                taken.setdefault(_REPEATED[name], []).append(parse_addr(value))
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"argument {name}: {e}") from None
            i += 1 if eq else 2
            continue
        rest.append(a)
        i += 1
    return rest, taken


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str], prog_name: str
) -> argparse.Namespace:
    """Parse and check the options that do not need the target.

    :raises UsageError: with the message for the user
    """
    rest, taken = _take_repeated(argv)
    args = parser.parse_args(rest)
    for dest, values in taken.items():
        setattr(args, dest, (getattr(args, dest) or []) + values)
    actions = [
        opt
        for opt, on in (
            ("--addr", args.addr),
            ("--gva", args.gva and not args.read),
            ("--read", args.read),
            ("--dump", args.dump),
            ("--map", args.map),
            ("--list", args.list),
            ("--stats", args.stats),
            ("--verify", args.verify),
            ("--hpa", args.hpa),
        )
        if on
    ]
    if len(actions) != 1:
        raise UsageError(
            (
                "choose one of --addr, --gva, --read, --dump, --map, --list, --stats, "
                "--verify and --hpa"
                if actions
                else "missing --addr (or --gva, --read, --dump, --map, --list, --stats, "
                "--verify, --hpa)"
            )
            + f" (see {prog_name} --help)"
        )
    if args.gva and GVA_FLAG in args.gva and not args.read:
        raise UsageError("--gva needs an address (or goes with --read)")
    if args.read and args.gva and args.gva != [GVA_FLAG]:
        raise UsageError(
            "with --read, --gva takes no address: it says that --read's addresses are GVAs"
        )
    if args.length is not None and not args.read:
        raise UsageError("--length goes with --read")
    if args.read:
        if args.length is None:
            args.length = DEFAULT_READ_LENGTH
        for addr in args.read:
            if addr + args.length > 1 << 64:
                raise UsageError(
                    f"--read {addr:#x} --length {args.length} passes the end of the address space"
                )
    if args.cr3 is not None and not args.gva:
        raise UsageError("--cr3 goes with --gva")
    if args.range is not None and not (args.dump or args.map):
        raise UsageError("--range goes with --dump or --map")
    if args.annotate and not (args.addr or args.dump or args.map):
        raise UsageError("--annotate goes with --addr, --dump or --map")
    if args.max_tables != MAX_TABLES and not (
        args.dump or args.map or args.stats or args.verify or args.hpa
    ):
        raise UsageError("--max-tables goes with --dump, --map, --stats, --verify or --hpa")
    if args.root != "current" and not (
        args.addr or args.dump or args.map or (args.verify and args.vcpu is not None)
    ):
        raise UsageError("--root goes with --addr, --dump, --map, or --verify with --vcpu")
    if args.verify:
        return args  # every VM, or the roots --root names for --vcpu
    whole_vm = args.list or args.stats or args.hpa
    if whole_vm and args.vcpu is not None:
        raise UsageError(f"{actions[0]} covers every vCPU; leave out --vcpu")
    if not whole_vm and args.vcpu is None:
        raise UsageError(f"missing --vcpu (see {prog_name} --help)")
    return args


def run(
    prog: Program, args: argparse.Namespace, *, prog_name: str = "kvmwalk", out: TextIO, err: TextIO
) -> int:
    """Do what checked ``args`` ask on ``prog``; errors become one line on
    ``err`` and exit status 2."""
    try:
        if args.list:
            return _list(prog, args, out, err)
        if args.stats:
            return _stats(prog, args, out, err)
        if args.verify:
            return _verify(prog, args, out, err)
        if args.hpa:
            return _hpa(prog, args, out, err)
        if args.addr:
            return _walk(prog, args, out, err)
        if args.read:
            return _read(prog, args, out)
        if args.gva:
            return _gva(prog, args, out)
        return _leaves(prog, args, out, err)
    except NoSuchVm as e:
        if e.choices:  # in the command line's words
            print(
                f"{prog_name}: {e.count} VMs exist; choose one with --vm PID: {e.choices}", file=err
            )
        else:
            print(f"{prog_name}: {e}", file=err)
    except (KvmWalkError, AddressError, GuestAddressError) as e:
        print(f"{prog_name}: {e}", file=err)
    except FaultError as e:
        hint = ""
        if "from kdump:" in str(e):
            # libkdumpfile, drgn's reader of kdump-compressed dumps, refused.
            hint = (
                "; the kvmwalk console script (kvmwalk -c DUMP) reads kdump-compressed "
                "dumps that libkdumpfile refuses with its own reader"
            )
        print(f"{prog_name}: cannot read the target's memory: {e}{hint}", file=err)
    except AttributeError as e:
        # drgn's word for a member this kernel's type lacks: a layout change
        # that no probe covers yet.  Any other AttributeError is a bug here.
        if not _NO_MEMBER.fullmatch(str(e)):
            raise
        print(
            f"{prog_name}: unknown kernel layout: {e}; this kvmwalk does not know this kernel yet",
            file=err,
        )
    return EXIT_USAGE


_NO_MEMBER = re.compile(r"'(?:struct|union|class) [A-Za-z_]\w*' has no member '[A-Za-z_]\w*'")


class _Vm(NamedTuple):
    kvm: Object  # struct kvm *
    pid: int


def _roots(prog: Program, args: argparse.Namespace) -> Tuple[_Vm, List[LabelledRoot]]:
    kvm = find_vm(prog, args.vm)
    vm = _Vm(kvm, vm_pid(kvm))
    vcpu = find_vcpu(kvm, args.vcpu)
    roots = select_roots(vcpu, args.root)
    if not roots:
        raise NoRoot(f"the vCPU has no {args.root} roots")
    return vm, roots


def _root_header(vm: _Vm, args: argparse.Namespace, lr: LabelledRoot, fmt: SpteFormat) -> str:
    head = header_text(vm.pid, args.vcpu, lr.kind, lr.tdp_mmu, fmt, lr.root)
    return head if args.root == "current" else f"[{lr.label}] {head}"


# Walks of --addr made again when a table page they read changed before it
# was read a second time (a live host), before the answer is given as changed.
_WALK_TRIES = 3


def _live(prog: Program) -> bool:
    """A running kernel: its tables change while they are read."""
    return bool(prog.flags & ProgramFlags.IS_LIVE)


def _mem(prog: Program) -> PhysMem:
    """The program's memory; on a live kernel, a :class:`ReadWatch` of it,
    to read again what an answer was made from."""
    mem = DrgnPhysMem(prog)
    return ReadWatch(mem) if _live(prog) else mem


def _recheck(mem: PhysMem) -> List[ReadChange]:
    return mem.recheck() if isinstance(mem, ReadWatch) else []


def changed_line(c: ReadChange, name: str) -> str:
    """One stderr line (after ``warning: ``) for memory that read differently
    the second time; ``name`` names the addresses (GPA, GVA, address)."""
    what = "table page" if c.size == 4096 else f"{c.size} bytes"
    now = "cannot be read now" if c.gone else "reads differently now"
    where = ""
    if c.places:
        plural = "addresses" if name == "address" else f"{name}s"
        spans = ", ".join(
            f"level {lv} every address"
            if end >= 1 << 64
            else f"level {lv} {plural} {s:#x}-{end:#x}"
            for lv, s, end in c.places
        )
        where = f" ({spans})"
    return (
        f"changed while read: {what} at host physical {c.address:#x}{where} {now}; "
        "what was made from it may mix old and new entries"
    )


def _walk(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    changes: List[ReadChange] = []
    for _ in range(_WALK_TRIES):
        vm, roots = _roots(prog, args)
        fmt = spte_format(vm.kvm)
        watch = _mem(prog)
        mem = TableCache(watch)
        # Check every address before printing anything, so that a bad one does
        # not leave half an answer behind.
        walks = [(lr, [walk_addr(mem, fmt, lr.root, addr) for addr in args.addr]) for lr in roots]
        changes = _recheck(watch)
        if not changes:
            break
    live = isinstance(watch, ReadWatch)
    sps: Optional[Dict[int, Optional[ShadowPage]]] = None
    if args.annotate:
        sps = {}
        for _, ws in walks:
            for w in ws:
                for step in w.steps:
                    if not step.pae_root and step.table not in sps:
                        sps[step.table] = to_shadow_page(prog, step.table)
    lines: List[str] = []
    warnings: List[str] = []
    for lr, ws in walks:
        if not args.json:
            lines.append(_root_header(vm, args, lr, fmt))
        for w in ws:
            pages = {st.table & ~0xFFF for st in w.steps}
            hit = [c for c in changes if c.address & ~0xFFF in pages]
            changed = bool(hit)
            if changed:
                name = "GPA" if w.root.direct else "GVA"
                warnings.append(
                    f"changed while read: the walk of {name} {w.addr:#x} read table pages "
                    f"({', '.join(f'{c.address:#x}' for c in hit)}) that read differently "
                    f"again, {_WALK_TRIES} times; its answer may mix old and new entries"
                )
            if args.json:
                record = walk_json(w, vm.pid, args.vcpu, lr.kind, lr.tdp_mmu, fmt, sps)
                if args.root != "current":
                    record["root"] = lr.label
                if live:
                    record["changed"] = changed
                lines.append(json.dumps(record))
            else:
                lines += walk_text(w, sps)
    out.write("\n".join(lines) + "\n")
    _warn(out, err, warnings)
    out.flush()
    return EXIT_OK


def _gva(prog: Program, args: argparse.Namespace, out: TextIO) -> int:
    """--gva: the guest's walk of each GVA, then KVM's."""
    from .guest import VcpuGva  # the guest's registers: only for --gva

    kvm = find_vm(prog, args.vm)
    vm = _Vm(kvm, vm_pid(kvm))
    g = VcpuGva(find_vcpu(kvm, args.vcpu), args.cr3)
    walks = [g.walk(gva) for gva in args.gva]  # every GVA is checked first
    lr = g.info
    if args.json:
        lines = [
            json.dumps(
                gva_json(
                    w, vm.pid, args.vcpu, lr.kind, lr.tdp_mmu, g.fmt, g.root, g.regs, g.cr3_given
                )
            )
            for w in walks
        ]
    else:
        lines = [
            header_text(vm.pid, args.vcpu, lr.kind, lr.tdp_mmu, g.fmt, g.root),
            guest_regs_text(g.regs, g.cr3, g.cr3_given),
        ]
        for w in walks:
            lines += gva_text(w)
    out.write("\n".join(lines) + "\n")
    out.flush()
    return EXIT_OK


def _read(prog: Program, args: argparse.Namespace, out: TextIO) -> int:
    """--read: guest memory through the walk, as a hexdump or JSON."""
    from .guest import VcpuMemory  # the guest's registers: only with --gva

    kvm = find_vm(prog, args.vm)
    vm = _Vm(kvm, vm_pid(kvm))
    m = VcpuMemory(find_vcpu(kvm, args.vcpu), gva=bool(args.gva), cr3=args.cr3)
    reads = [m.read(addr, args.length) for addr in args.read]  # all checked first
    if args.json:
        lines = [json.dumps(read_json(r, vm.pid, args.vcpu)) for r in reads]
    else:
        lines = [header_text(vm.pid, args.vcpu, m.info.kind, m.info.tdp_mmu, m.fmt, m.info.root)]
        for r in reads:
            lines += read_text(r)
    out.write("\n".join(lines) + "\n")
    out.flush()
    return EXIT_OK


def _leaves(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """--dump and --map: every leaf under the vCPU's root(s), or the ranges
    the core merges them into."""
    # numpy: only for whole-table views
    from .leaves import (
        LeafColumns,
        LeafRun,
        MapRange,
        MapRanges,
        Unreadable,
        iter_leaf_columns,
        iter_leaves,
        iter_range_blocks,
        iter_ranges,
    )

    vm, roots = _roots(prog, args)
    fmt = spte_format(vm.kvm)
    start, end = args.range if args.range else (0, None)
    progress = Progress(err, enabled=not args.json)

    def on_leaves(direct: bool) -> Callable[[int, int], None]:
        return lambda count, addr: progress.update(count, addr, direct)

    # Every range is checked before anything is printed.
    def view_items(
        root: Root, mem: PhysMem
    ) -> Iterator[Union[LeafRun, LeafColumns, MapRange, MapRanges, Unreadable]]:
        """What the view prints for ``root``, as the core gives it."""
        progress_of = on_leaves(root.direct)
        budget = args.max_tables
        if args.map and args.annotate:  # one struct kvm_mmu_page per range
            return iter_ranges(
                mem, fmt, root, start, end, per_table=True, on_leaves=progress_of, max_tables=budget
            )
        if args.map:
            return iter_range_blocks(
                mem, fmt, root, start, end, on_leaves=progress_of, max_tables=budget
            )
        if args.annotate:  # one struct kvm_mmu_page per table page
            return iter_leaves(mem, fmt, root, start, end, max_tables=budget)
        return iter_leaf_columns(mem, fmt, root, start, end, max_tables=budget)

    mems = [_mem(prog) for _ in roots]
    walks = [(lr, mem, view_items(lr.root, mem)) for lr, mem in zip(roots, mems)]
    flags = FlagCache(fmt)
    sps: Dict[int, Optional[ShadowPage]] = {}

    def annotation(table: int) -> Optional[Dict[int, Optional[ShadowPage]]]:
        if not args.annotate:
            return None
        if table not in sps:
            if len(sps) >= 2:
                sps.clear()  # the current tables' only: memory stays bounded
            sps[table] = to_shadow_page(prog, table)
        return sps

    output = _Output(out, progress.clear)
    for lr, mem, items in walks:
        direct = lr.root.direct
        label = None if args.root == "current" else lr.label
        if not args.json:
            output.line(_root_header(vm, args, lr, fmt))
            output.line(map_header(direct) if args.map else dump_header(direct))
        block = _LeafBlock(
            output,
            functools.partial(
                dump_block,
                fmt=fmt,
                flags=flags,
                vm_pid=vm.pid,
                vcpu_id=args.vcpu,
                as_json=args.json,
                root=label,
            ),
        )
        for item in items:
            if isinstance(item, Unreadable):
                block.flush()
                output.flush()
                progress.clear()
                err.write(f"warning: {unreadable_line(item, direct)}\n")
                continue
            if isinstance(item, LeafRun):
                progress.update(len(item.indexes), item.base, direct)
                table_sp = annotation(item.table)  # iter_leaves gives runs with --annotate only
                for line in dump_lines(
                    item, fmt, flags, vm.pid, args.vcpu, args.json, table_sp, label
                ):
                    output.line(line)
            elif isinstance(item, LeafColumns):
                if len(item.addrs):
                    progress.update(len(item.addrs), int(item.addrs[0]), direct)
                block.add(item)
            elif isinstance(item, MapRanges):
                for i in range(0, len(item.start), _BLOCK):  # bounded memory
                    part = item.rows(slice(i, i + _BLOCK))
                    output.text(map_block(part, flags, vm.pid, args.vcpu, args.json, label))
            else:
                output.line(
                    map_line(
                        item, flags, vm.pid, args.vcpu, args.json, annotation(item.table), label
                    )
                )
        block.flush()
        changes = _recheck(mem)
        if changes:
            output.flush()
            progress.clear()
            _warn(out, err, [changed_line(c, "GPA" if direct else "GVA") for c in changes])
    progress.clear()
    output.flush()
    out.flush()
    return EXIT_OK


# Leaves rendered together by --dump: its working set (digits, lines) stays
# in the CPU's caches, which makes it about twice as fast as 65536 here.
_BLOCK = 16384
_CHUNK_CHARS = 1 << 20  # characters per write: streamed output


class _LeafBlock:
    """Leaves of one level, gathered to be rendered together by ``render``,
    ``_BLOCK`` at a time (memory stays bounded)."""

    def __init__(self, output: _Output, render: Callable[[List[LeafColumns]], str]) -> None:
        self.output = output
        self.render = render
        self.parts: List[LeafColumns] = []
        self.leaves = 0

    def add(self, cols: LeafColumns) -> None:
        if self.parts and self.parts[0].level != cols.level:
            self.flush()
        while len(cols.addrs):
            room = _BLOCK - self.leaves
            part = (
                cols
                if len(cols.addrs) <= room
                else type(cols)(cols.level, *(c[:room] for c in cols[1:]))
            )
            cols = type(cols)(cols.level, *(c[len(part.addrs) :] for c in cols[1:]))
            self.parts.append(part)
            self.leaves += len(part.addrs)
            if self.leaves >= _BLOCK:
                self.flush()

    def flush(self) -> None:
        if self.parts:
            self.output.text(self.render(self.parts))
            self.parts = []
            self.leaves = 0


class _Output:
    """Text gathered for ``out`` and written in chunks of about
    ``_CHUNK_CHARS`` (memory stays bounded, writes stay few)."""

    def __init__(self, out: TextIO, before_write: Callable[[], None] = lambda: None) -> None:
        self.out = out
        self.before_write = before_write  # e.g. clear a progress line
        self.parts: List[str] = []
        self.size = 0

    def line(self, line: str) -> None:
        self.parts.append(line + "\n")
        self.size += len(line) + 1
        if self.size >= _CHUNK_CHARS:
            self.flush()

    def text(self, text: str) -> None:
        if len(text) >= _CHUNK_CHARS:  # a chunk of its own: no copy
            self.flush()
            self.before_write()
            self.out.write(text)
            return
        self.parts.append(text)
        self.size += len(text)
        if self.size >= _CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.before_write()
            self.out.write("".join(self.parts))
            self.parts = []
            self.size = 0


class Progress:
    """A one-line count of the leaves walked so far, redrawn on ``err`` at most
    twice a second, when ``err`` is a terminal (never into a pipe or a file,
    never mixed into JSON output)."""

    def __init__(self, err: TextIO, enabled: bool = True) -> None:
        isatty = getattr(err, "isatty", None)
        self.err = err
        self.on = enabled and bool(isatty and isatty())
        self.leaves = 0
        self.next = time.monotonic() + 0.5
        self.shown = False

    def update(self, leaves: int, addr: int, direct: bool) -> None:
        self.leaves += leaves
        if self.on and time.monotonic() >= self.next:
            self.err.write(
                f"\r{self.leaves} leaves so far, at {'GPA' if direct else 'GVA'} {addr:#x} "
            )
            self.err.flush()
            self.shown = True
            self.next = time.monotonic() + 0.5

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self.shown = False


def _every_vm(prog: Program, args: argparse.Namespace, err: TextIO) -> List[Object]:
    """--vm's VM, or every VM: those before the break of a corrupt vm_list,
    with a warning (raised when there are none before it)."""
    if args.vm is not None:
        return [find_vm(prog, args.vm)]
    vms: List[Object] = []
    try:
        for kvm in for_each_vm(prog):
            vms.append(kvm)
    except CorruptList as e:
        if not vms:
            raise
        err.write(f"warning: {e}; only the {len(vms)} VM(s) before it are read\n")
        err.flush()
    return vms


def _warn(out: TextIO, err: TextIO, lines: List[str]) -> None:
    """Warnings on stderr, after what stdout has so far."""
    if lines:
        out.flush()
        err.write("".join(f"warning: {line}\n" for line in lines))
        err.flush()


def _list(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """--list: VMs, vCPUs and memslots."""
    found = _every_vm(prog, args, err)
    vms = [vm_summary(kvm) for kvm in found]
    _warn(out, err, [f"VM pid {vm.pid}: {what}" for vm in vms for what in vm.broken])
    if args.json:
        out.write(json.dumps(list_json(vms)) + "\n")
    else:
        out.write("\n".join(list_text(vms)) + "\n")
    out.flush()
    return EXIT_OK


def _stats(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """--stats: leaf counts beside KVM's counters, for --vm or every VM."""
    from .stats import vm_stats  # numpy: only for whole-table views

    vms = _every_vm(prog, args, err)
    for kvm in vms:
        mem = _mem(prog)
        st = vm_stats(kvm, args.max_tables, mem)
        changes = _recheck(mem)
        warnings = [f"VM pid {st.pid}: {what}" for what in st.broken]
        warnings += [
            f"VM pid {st.pid}: {changed_line(c, 'address')} (the counts may be off by its leaves)"
            for c in changes
        ]
        _warn(out, err, warnings)
        if args.json:
            record = stats_json(st)
            if isinstance(mem, ReadWatch):
                record["changed_pages"] = len(changes)
            out.write(json.dumps(record) + "\n")
        else:
            out.write(stats_text(st) + "\n")
    if not vms and not args.json:
        out.write("no VMs\n")
    out.flush()
    return EXIT_OK


def _verify(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """--verify: every leaf SPTE and table page against the host and KVM's
    books; exit status 1 when something disagrees."""
    from .verify import Problem, verify_vm  # numpy: only for whole-table views

    vms = _every_vm(prog, args, err)
    roots_of: Dict[int, Optional[List[int]]] = {}
    for kvm in vms:  # every vCPU and root is looked up before anything is printed
        roots = None
        if args.vcpu is not None:
            roots = [lr.root.hpa for lr in select_roots(find_vcpu(kvm, args.vcpu), args.root)]
        roots_of[kvm.value_()] = roots
    found = False
    for kvm in vms:
        mem = _mem(prog)
        live = isinstance(mem, ReadWatch)
        records = verify_vm(kvm, roots_of[kvm.value_()], mem, max_tables=args.max_tables)
        changes: List[ReadChange] = []
        extra: Dict[str, object]
        if live:
            # Read again before anything is said: on a live kernel what
            # disagrees may be a change made while it was read.
            records = iter(list(records))
            changes = _recheck(mem)
        for rec in records:
            if isinstance(rec, Problem):
                found = True
                if not args.json:
                    out.write(problem_text(rec) + "\n")
                    continue
                record, extra = problem_json(rec), {"changed": bool(changes)}
            elif not args.json:
                out.write("\n".join(verify_summary_text(rec)) + "\n")
                continue
            else:
                record, extra = verify_summary_json(rec), {"changed_pages": len(changes)}
            if live:
                record.update(extra)
            out.write(json.dumps(record) + "\n")
        if live and changes:
            pid = vm_pid(kvm)
            _warn(
                out,
                err,
                [f"VM pid {pid}: {changed_line(c, 'address')}" for c in changes]
                + [
                    f"VM pid {pid}: changed while read: {len(changes)} pages read differently "
                    "the second time; the problems above may be changes made while reading"
                ],
            )
        out.flush()
    if not vms and not args.json:
        out.write("no VMs\n")
    out.flush()
    return EXIT_PROBLEMS if found else EXIT_OK


def _hpa(prog: Program, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """--hpa: every mapping of each host physical address, in the order given."""
    # numpy: only for whole-table views
    from .verify import HpaMapping, HpaSkipped, HpaTable, find_hpa

    found: List[Union[HpaMapping, HpaTable]] = []
    skipped: List[str] = []
    watch = _mem(prog)
    for r in find_hpa(prog, args.hpa, _every_vm(prog, args, err), args.max_tables, watch):
        if isinstance(r, HpaSkipped):
            skipped.append(f"VM pid {r.vm}: {r.what}")
        else:
            found.append(r)
    skipped += [changed_line(c, "address") for c in _recheck(watch)]
    _warn(out, err, skipped)
    lines: List[str] = []
    for x in dict.fromkeys(args.hpa):
        recs = [r for r in found if r.hpa == x]
        if not recs:
            lines.append(json.dumps(hpa_none_json(x)) if args.json else hpa_none_text(x))
        for r in recs:
            if isinstance(r, HpaMapping):
                lines.append(json.dumps(hpa_json(r)) if args.json else hpa_text(r))
            else:
                lines.append(json.dumps(hpa_table_json(r)) if args.json else hpa_table_text(r))
    out.write("\n".join(lines) + "\n")
    out.flush()
    return EXIT_OK
