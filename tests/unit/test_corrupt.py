# SPDX-License-Identifier: LGPL-2.1-or-later
"""Values read from a corrupt kernel that steer the walk: each refused where
it is read, with one line naming it, never a traceback or a loop that does
not end.  Each case failed before its fix (the fuzz runs of the robustness
issue found them: a root level of 15 overflowed, 0 tripped an assertion,
a vm_list entry linked to itself looped forever)."""

import io
import signal

import pytest

from drgn_kvmwalk.cli import EXIT_USAGE, main
from drgn_kvmwalk.errors import BadKernelValue, CorruptList
from drgn_kvmwalk.kvm import for_each_vm
from drgn_kvmwalk.leaves import count_leaves, iter_leaves
from drgn_kvmwalk.lists import list_entries
from drgn_kvmwalk.walk import Root, TableCache, walk_addr

from .fake_kernel import kvm_host
from .test_layouts import LAYOUTS
from .test_walk import X86, npt


@pytest.fixture
def deadline():
    """A test that would loop forever fails after 10 s instead."""

    def expired(signum, frame):
        raise TimeoutError("did not end")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run(prog, *argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main(prog, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("level", [0, 1, 6, 15])
def test_the_pure_walk_refuses_a_root_level_outside_2_to_5(level):
    mem, _, root = npt(4)
    bad = root._replace(level=level)
    with pytest.raises(BadKernelValue, match=f"the root's level is {level}, not a root level"):
        walk_addr(TableCache(mem), X86, bad, 0x1000)
    with pytest.raises(BadKernelValue):
        list(iter_leaves(mem, X86, bad))
    with pytest.raises(BadKernelValue):
        count_leaves(mem, X86, bad)


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_every_root_level_still_walks(level):
    mem, t, root = npt(4)
    t.map(0x1000, 0x5000)
    assert walk_addr(TableCache(mem), X86, root, 0x1000).hpa == 0x5000
    # (level 2 and 3 from the same tables: the walk starts lower down)
    lower = Root(t.root, level, True, level)
    walk_addr(TableCache(mem), X86, lower, 0x1000)


@pytest.mark.parametrize("level", [1, 6, 15])
def test_a_corrupt_root_level_is_one_line_and_list_goes_on(level):
    fields, values = LAYOUTS["v7.3"]
    k = kvm_host(fields, dict(values, **{"root_role.level": level}))
    line = f"kvmwalk: mmu->root_role.level is {level}, not a root level (2-5): "
    for argv in (["--addr", "0x1000"], ["--dump"], ["--map"]):
        rc, out, err = run(k.prog, "--vcpu", "0", *argv)
        assert (rc, out) == (EXIT_USAGE, "") and err.startswith(line) and err.count("\n") == 1
    rc, out, err = run(k.prog, "--list")
    assert rc == 0 and err == "" and line[len("kvmwalk: ") :] in out


def _vm_list_links(k):
    """The vm_list heads of the fake host's VMs (kvm->vm_list), in order."""
    head = k.objects["vm_list"]
    links, pos = [], head.next.value_()
    while pos != head.address_:
        links.append(pos)
        pos = k.prog.read_u64(pos)
    return links


def test_a_vm_list_that_loops_is_refused(deadline):
    k = kvm_host(*LAYOUTS["v7.3"], pids=(4242, 4343))
    second = _vm_list_links(k)[1]
    k.write(second, "<Q", second)  # kvm->vm_list.next points at itself
    with pytest.raises(
        CorruptList, match=r"vm_list is corrupt: the entry at 0x[0-9a-f]+ is linked to twice"
    ):
        list(for_each_vm(k.prog))
    rc, out, err = run(k.prog, "--list")
    assert (rc, out) == (EXIT_USAGE, "")
    assert (
        err
        == f"kvmwalk: vm_list is corrupt: the entry at {second:#x} is linked to twice (a cycle)\n"
    )


def test_a_list_longer_than_its_bound_is_refused(deadline):
    k = kvm_host(*LAYOUTS["v7.3"], pids=(4242, 4343, 4444))
    head = k.objects["vm_list"].address_of_()
    assert len(list(list_entries(head, "struct kvm", "vm_list", "vm_list", limit=3))) == 3
    with pytest.raises(CorruptList, match="past 2 entries"):
        list(list_entries(head, "struct kvm", "vm_list", "vm_list", limit=2))
