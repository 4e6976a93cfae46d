# SPDX-License-Identifier: LGPL-2.1-or-later
"""The console script and the drgn command, without a kernel."""

import ast
import importlib
import io
import subprocess
import sys

import drgn
import pytest
from drgn.commands import CommandError, CommandNotFoundError, run_command

from drgn_kvmwalk import console, plugin

from .fake_kernel import kernel_program


def test_console_script_reports_a_bad_target_in_one_line():
    out, err = io.StringIO(), io.StringIO()
    rc = console.main(["-c", "/nonexistent/vmcore", "--list"], out=out, err=err)
    assert rc == 2 and out.getvalue() == ""
    assert err.getvalue().startswith("kvmwalk: error: cannot open /nonexistent/vmcore")
    assert len(err.getvalue().splitlines()) == 1


def test_console_script_checks_arguments_before_opening_the_target():
    out, err = io.StringIO(), io.StringIO()
    assert console.main(["-k", "--vcpu", "0"], out=out, err=err) == 2
    assert "missing --addr" in err.getvalue()
    assert console.main(["-k", "-c", "x", "--list"], out=out, err=io.StringIO()) == 2


def test_console_help_names_the_target_options(capsys):
    with pytest.raises(SystemExit):
        console.main(["--help"])
    text = capsys.readouterr().out
    for opt in ("-k, --kernel", "-c VMCORE, --core VMCORE", "--qemu SOCKET", "-s PATH"):
        assert opt in text


@pytest.mark.parametrize(
    "argv",
    [
        "--vcpu 1 --addr 0x1000 --addr 0x2000",
        "--vm 42 --vcpu 0 --dump --range 0x1000-0x2000",
        "--list",
        "--stats",
        "--vm 7 --stats",
        "--vcpu 0 --addr 1 --annotate",
        "--vcpu 0 --map --range 0x0-0x200000",
        "--vcpu 0 --map --annotate --root all",
        "--vcpu 0 --dump --annotate --root prev",
        "--vcpu 0 --addr 1 --addr 2 --root all",
        "--vm 7 --list",
        "--vcpu 0 --gva 0x7f0000001000 --gva 0x1000",
        "--vcpu 1 --gva 0x1000 --cr3 0x5000",
        "--vcpu 0 --read 0x1000 --length 64",
        "--vcpu 0 --read 0x1000 --gva --cr3 0x5000",
    ],
)
def test_drgn_command_prints_valid_python(capsys, argv):
    plugin.register()
    prog = kernel_program()
    run_command(prog, f"kvmwalk {argv} --drgn")
    code = capsys.readouterr().out
    assert "from drgn_kvmwalk import" in code
    assert "find_vcpu(kvm, None)" not in code
    tree = ast.parse(code, "<kvmwalk --drgn>")
    for node in ast.walk(tree):  # every name it imports exists
        if isinstance(node, ast.ImportFrom) and node.module.startswith("drgn_kvmwalk"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (node.module, alias.name)


def test_drgn_command_runs_the_command_line(capsys):
    plugin.register()
    prog = kernel_program()
    with pytest.raises(CommandError) as e:
        run_command(prog, "kvmwalk --vcpu 0 --addr 0x1000")
    assert str(e.value).startswith("kvmwalk: no debug info for vmlinux")
    assert capsys.readouterr().out == ""
    run_command(prog, "kvmwalk --help")  # argparse's exit must not end the REPL
    assert "--annotate" in capsys.readouterr().out


def test_drgn_command_is_for_kernels_only():
    """Registered as drgn registers its own kernel commands."""
    plugin.register()
    with pytest.raises(CommandNotFoundError):
        run_command(drgn.Program(drgn.host_platform), "kvmwalk --list")


def test_every_leaves_name_is_there_lazily():
    """The package's lazy names (numpy only on first use) are leaves.__all__."""
    import drgn_kvmwalk
    from drgn_kvmwalk import leaves

    assert drgn_kvmwalk._LAZY == frozenset(leaves.__all__)


def test_one_address_walk_does_not_import_numpy():
    code = "import sys, drgn_kvmwalk.cli, drgn_kvmwalk; print('numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
