# SPDX-License-Identifier: LGPL-2.1-or-later
"""Values read from a corrupt kernel that steer the walk: each refused where
it is read, with one line naming it, never a traceback or a loop that does
not end.  Each case failed before its fix (the fuzz runs of the robustness
issue found them: a root level of 15 overflowed, 0 tripped an assertion,
a vm_list entry linked to itself looped forever)."""

import io

import pytest
from drgn import Object, TypeMember

from drgn_kvmwalk.cli import EXIT_USAGE, main
from drgn_kvmwalk.errors import BadKernelValue, CorruptList
from drgn_kvmwalk.kvm import for_each_vm
from drgn_kvmwalk.leaves import count_leaves, iter_leaves
from drgn_kvmwalk.lists import list_entries, rbtree_entries, until_corrupt
from drgn_kvmwalk.walk import Root, TableCache, walk_addr

from .fake_kernel import kvm_host
from .test_layouts import LAYOUTS
from .test_walk import X86, npt


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
    line = f"vm_list is corrupt: the entry at {second:#x} is linked to twice (a cycle)"
    # Finding one VM needs the whole list: nothing could be done.
    rc, out, err = run(k.prog, "--vcpu", "0", "--addr", "0x1000")
    assert (rc, out, err) == (EXIT_USAGE, "", f"kvmwalk: {line}\n")
    # A whole-host action goes on with the VMs before the break, and says so.
    rc, out, err = run(k.prog, "--list")
    assert rc == 0 and "VM pid 4242" in out and "VM pid 4343" in out
    assert err == f"warning: {line}; only the 2 VM(s) before it are read\n"


def test_a_list_longer_than_its_bound_is_refused(deadline):
    k = kvm_host(*LAYOUTS["v7.3"], pids=(4242, 4343, 4444))
    head = k.objects["vm_list"].address_of_()
    assert len(list(list_entries(head, "struct kvm", "vm_list", "vm_list", limit=3))) == 3
    with pytest.raises(CorruptList, match="past 2 entries"):
        list(list_entries(head, "struct kvm", "vm_list", "vm_list", limit=2))


def _rb_tree(k, keys):
    """A binary tree of ``struct item {rb_node node; int key}`` (rb_node as
    the kernel's: parent and colour, right, left), balanced by hand."""
    p = k.prog
    node_t = p.struct_type(
        "rb_node",
        24,
        [
            TypeMember(p.int_type("unsigned long", 8, False), "__rb_parent_color", 0),
            TypeMember(lambda: p.pointer_type(node_t), "rb_right", 64),
            TypeMember(lambda: p.pointer_type(node_t), "rb_left", 128),
        ],
    )
    k.types["struct rb_node"] = node_t
    root_t = k.struct("rb_root", [("rb_node", p.pointer_type(node_t))])
    item_t = k.struct("item", [("node", node_t), ("key", k.int)])
    nodes = {}
    for key in keys:
        at = k.alloc(item_t)
        k.write(k.member_address(item_t, at, "key"), "<i", key)
        nodes[key] = at  # node is at offset 0

    def build(lo, hi):
        if lo > hi:
            return 0
        mid = (lo + hi) // 2
        k.write(nodes[keys[mid]] + 8, "<QQ", build(mid + 1, hi), build(lo, mid - 1))
        return nodes[keys[mid]]

    root = k.alloc(root_t)
    k.write(root, "<Q", build(0, len(keys) - 1))
    return Object(p, p.pointer_type(root_t), root), nodes


def test_a_memslot_tree_walk_is_in_order_and_stops_at_a_cycle(deadline):
    k = kvm_host(*LAYOUTS["v7.3"])
    root, nodes = _rb_tree(k, list(range(7)))
    got = [int(e.key) for e in rbtree_entries(root, "struct item", "node", "a tree")]
    assert got == list(range(7))
    # The leftmost leaf's left child points back at the root: drgn's own
    # helper recursed until RecursionError.
    k.write(nodes[0] + 16, "<Q", nodes[3])
    with pytest.raises(CorruptList, match=r"a tree is corrupt: the entry at 0x[0-9a-f]+ is linked"):
        list(rbtree_entries(root, "struct item", "node", "a tree"))
    broken = []
    assert list(until_corrupt(iter(range(3)), broken)) == [0, 1, 2] and broken == []
    got = [
        int(e.key) for e in until_corrupt(rbtree_entries(root, "struct item", "node", "t"), broken)
    ]
    assert got == [] and broken == [
        f"t is corrupt: the entry at {nodes[3]:#x} is linked to twice (a cycle)"
    ]


def test_a_table_address_past_every_struct_page_is_no_shadow_page():
    """A flipped high bit in an SPTE gives a table HPA whose struct page
    would lie past 2**64: no shadow page, not an OverflowError (found by a
    bit flip in a 5.10 cell's dump, under --verify)."""
    from drgn_kvmwalk.mmu import to_shadow_page
    from drgn_kvmwalk.verify import _private_readable

    k = kvm_host(*LAYOUTS["v7.3"])
    # x86-64's vmemmap and 64-byte struct pages pass 2**64 at a 52-bit HPA;
    # the fake host's 16-byte pages need a larger one.
    far = 1 << 63
    assert to_shadow_page(k.prog, far) is None
    assert to_shadow_page(k.prog, 0x1000) is None  # an ordinary page, not in memory
    assert not _private_readable(k.prog, far)
