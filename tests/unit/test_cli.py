# SPDX-License-Identifier: LGPL-2.1-or-later
"""Command-line behaviour that needs no kernel: arguments, errors, exit codes."""

import io
import struct

import drgn
import pytest

from drgn_kvmwalk.cli import EXIT_USAGE, UsageError, main, parse_addr, parse_args
from drgn_kvmwalk.mmu import DrgnPhysMem
from drgn_kvmwalk.spte import x86_format
from drgn_kvmwalk.walk import PhysMemError, Root, TableCache, walk_addr

from .tables import FakeMem, Tables
from .test_walk import X86_LEAF, X86_TABLE


def run(prog, *argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main(prog, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def empty_prog():
    return drgn.Program(drgn.host_platform)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--addr", "0x1000"], "missing --vcpu"),
        (["--vcpu", "0"], "missing --addr"),
        ([], "missing --addr (or --gva, --read, --dump, --map, --list, --stats, --verify, --hpa)"),
        (["--dump"], "missing --vcpu"),
        (
            ["--vcpu", "0", "--addr", "0", "--dump"],
            "choose one of --addr, --gva, --read, --dump, --map, --list, --stats, "
            "--verify and --hpa",
        ),
        (["--verify", "--hpa", "0x1000"], "choose one of"),
        (["--hpa", "0x1000", "--vcpu", "0"], "covers every vCPU; leave out --vcpu"),
        (["--verify", "--root", "all"], "--root goes with --addr, --dump, --map, or --verify"),
        (["--hpa", "0x1000", "--root", "prev"], "--root goes with"),
        (["--hpa", "zz"], "invalid address 'zz'"),
        (["--vcpu", "0", "--read", "0", "--addr", "0"], "choose one of"),
        (["--vcpu", "0", "--gva"], "--gva needs an address (or goes with --read)"),
        (["--vcpu", "0", "--read", "0", "--gva", "0x10"], "--gva takes no address"),
        (["--vcpu", "0", "--addr", "0", "--length", "16"], "--length goes with --read"),
        (["--vcpu", "0", "--read", "0", "--length", "0"], "invalid length '0'"),
        (["--vcpu", "0", "--read", "0", "--length", str(2 << 20)], "1 to 1048576 bytes"),
        (
            ["--vcpu", "0", "--read", hex((1 << 64) - 8), "--length", "16"],
            "passes the end of the address space",
        ),
        (["--vcpu", "0", "--addr", "0", "--cr3", "0x1000"], "--cr3 goes with --gva"),
        (["--vcpu", "0", "--dump", "--map"], "choose one of"),
        (["--list", "--vcpu", "0"], "covers every vCPU; leave out --vcpu"),
        (
            ["--vcpu", "0", "--addr", "0", "--range", "0-0x1000"],
            "--range goes with --dump or --map",
        ),
        (["--vcpu", "0", "--map", "--range", "0x2000-0x1000"], "END must be above START"),
        (["--vcpu", "0", "--map", "--range", "0x2000"], "use START-END"),
        (["--vcpu", "0", "--addr", "zz"], "invalid address 'zz'"),
        (["--vcpu", "0", "--addr", "-5"], "negative"),
        (["--vcpu", "0", "--addr", hex(1 << 64)], "more than 64 bits"),
        (["--vcpu", "-1", "--addr", "0"], "invalid number '-1'"),
        (["--vcpu", "0", "--addr", "0", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments(empty_prog, argv, message):
    rc, out, err = run(empty_prog, *argv)
    assert rc == EXIT_USAGE and out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_target_without_kernel_debug_info(empty_prog):
    rc, out, err = run(empty_prog, "--vcpu", "0", "--addr", "0x1000")
    assert rc == EXIT_USAGE and out == ""
    assert err.startswith("kvmwalk: no debug info for vmlinux")
    assert len(err.strip().splitlines()) == 1


def test_help_explains_every_option(empty_prog, capsys):
    with pytest.raises(SystemExit) as e:
        main(empty_prog, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--vm PID",
        "--vcpu N",
        "--addr X",
        "--json",
        "exit status",
        "GVA",
        "--dump",
        "--map",
        "--list",
        "--stats",
        "--range START-END",
        "--read X",
        "--length N",
        "--gva [X]",
        "--verify",
        "--hpa X",
        "--max-tables N",
        "1 --verify found a problem",
    ):
        assert opt in text


@pytest.mark.parametrize(
    "text,value", [("0x1000", 0x1000), ("4096", 4096), ("0XFFFF_F000", 0xFFFFF000)]
)
def test_parse_addr(text, value):
    assert parse_addr(text) == value


def test_walk_through_drgn_physical_memory():
    """DrgnPhysMem reads a real drgn Program's physical address space."""
    mem = FakeMem()
    t = Tables(mem, 4, X86_TABLE, X86_LEAF)
    t.map(0x4000_0000, 0x1234_5000)
    prog = drgn.Program(drgn.host_platform)
    for hpa, page in mem.pages.items():
        prog.add_memory_segment(
            hpa,
            4096,
            lambda addr, count, offset, physical, p=page: bytes(p[offset : offset + count]),
            physical=True,
        )
    w = walk_addr(
        TableCache(DrgnPhysMem(prog)),
        x86_format(phys_bits=48),
        Root(t.root, 4, True, 4),
        0x4000_0123,
    )
    assert w.hpa == 0x1234_5123
    with pytest.raises(PhysMemError):
        DrgnPhysMem(prog).read(0xDEAD_0000, 8)
    assert struct.unpack("<Q", DrgnPhysMem(prog).read(t.root, 8))[0] & X86_TABLE == X86_TABLE


# -- Many addresses: taken out before argparse, with the same result --------

SAME_AS_ARGPARSE = [
    ["--vcpu", "0", "--addr", "0x1000", "--addr=4096", "--addr", "0x3000"],
    ["--vcpu", "0", "--gva", "0x7f0000000000", "--gva=0x1000", "--json"],
    ["--vcpu", "0", "--gva", "--read", "0x1000", "--read=0x2000", "--length", "16"],
    ["--vcpu", "0", "--read", "0x1000", "--gva"],
    ["--vcpu", "0", "--add", "0x1000", "--addr", "0x2000"],  # an abbreviation: all to argparse
    ["--vcpu", "0", "--addr", "0x1000", "--", "x"],
    ["--hpa", "0x1000", "--hpa=0x2000", "--json"],
    ["--verify", "--vcpu", "1", "--root", "all"],
]


@pytest.mark.parametrize("argv", SAME_AS_ARGPARSE)
def test_repeated_options_parse_as_argparse_does(argv):
    from drgn_kvmwalk.cli import _take_repeated, build_parser

    parser = build_parser("kvmwalk")
    try:
        want = vars(parser.parse_args(argv))
    except UsageError as e:
        want = str(e)
    rest, taken = _take_repeated(argv)
    try:
        got = vars(parser.parse_args(rest))
        for dest, values in taken.items():
            got[dest] = (got[dest] or []) + values
    except UsageError as e:
        got = str(e)
    assert got == want


@pytest.mark.parametrize("bad", ["0xZZ", "-1", str(1 << 64)])
def test_a_bad_repeated_address_is_worded_as_argparse_words_it(bad):
    from drgn_kvmwalk.cli import build_parser

    parser = build_parser("kvmwalk")
    with pytest.raises(UsageError) as plain:
        parser.parse_args(["--addr", bad])
    with pytest.raises(UsageError) as ours:
        parse_args(parser, ["--vcpu", "0", "--addr", "0x1000", "--addr", bad], "kvmwalk")
    assert str(ours.value) == str(plain.value)
