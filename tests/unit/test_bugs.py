# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bugs found by trying the tool as a new user would, each pinned by a test
that failed before its fix (a synthetic host from fake_kernel)."""

import io
import json

import pytest
from drgn.commands import CommandError, run_command

from drgn_kvmwalk import plugin
from drgn_kvmwalk.cli import EXIT_USAGE, main

from .fake_kernel import kernel_program, kvm_host
from .test_layouts import LAYOUTS


def two_vms():
    return kvm_host(*LAYOUTS["v7.3"], pids=(4242, 4343))


def run(prog, *argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main(prog, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_list_of_a_pid_without_a_vm_is_refused():
    rc, out, err = run(two_vms().prog, "--vm", "9999", "--list")
    assert rc == EXIT_USAGE and out == ""
    assert err == ("kvmwalk: process 9999 has no VM; VMs: pid 4242 (1 vCPUs), pid 4343 (1 vCPUs)\n")


def test_list_of_one_vm_lists_only_that_vm():
    prog = two_vms().prog
    rc, out, err = run(prog, "--list", "--json")
    assert rc == 0 and [vm["pid"] for vm in json.loads(out)["vms"]] == [4242, 4343]
    rc, out, err = run(prog, "--vm", "4343", "--list", "--json")
    assert rc == 0 and [vm["pid"] for vm in json.loads(out)["vms"]] == [4343], err
    rc, out, err = run(prog, "--vm", "4343", "--list")
    assert rc == 0 and "4242" not in out and "4343" in out


def test_drgn_command_raises_command_error_on_failure():
    """A script running %kvmwalk through run_command can tell that it failed."""
    plugin.register()
    prog = two_vms().prog
    with pytest.raises(CommandError, match="process 9999 has no VM"):
        run_command(prog, "kvmwalk --vm 9999 --list")
    with pytest.raises(CommandError, match="missing --vcpu"):
        run_command(prog, "kvmwalk --addr 0x1000")


@pytest.mark.parametrize("argv", ["--vcpu 0 --map --json", "--list --json"])
def test_drgn_code_refuses_what_it_cannot_print(capsys, argv):
    """--drgn never prints code that does something else than the command."""
    plugin.register()
    prog = kernel_program()
    with pytest.raises(CommandError, match="--drgn"):
        run_command(prog, f"kvmwalk {argv} --drgn")
    assert capsys.readouterr().out == ""


def test_helpers_speak_kvm_and_the_command_line_speaks_options():
    """The kernel tier's error names no option; the command line's does."""
    from drgn_kvmwalk.errors import NoSuchVm
    from drgn_kvmwalk.kvm import find_vm

    prog = two_vms().prog
    with pytest.raises(NoSuchVm) as e:
        find_vm(prog, None)
    assert "--vm" not in str(e.value) and e.value.count == 2
    rc, out, err = run(prog, "--vcpu", "0", "--addr", "0x1000")
    assert rc == EXIT_USAGE
    assert err == (
        "kvmwalk: 2 VMs exist; choose one with --vm PID: pid 4242 (1 vCPUs), pid 4343 (1 vCPUs)\n"
    )
