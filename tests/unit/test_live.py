# SPDX-License-Identifier: LGPL-2.1-or-later
"""A live kernel changes its tables while they are read: what the tool reads
is read again after the answer is made, and an answer made from memory that
reads differently the second time is given as changed (on stderr, and in the
JSON of --addr, --stats and --verify); on a dump nothing is read twice."""

import io
import json
import struct

import pytest

from drgn_kvmwalk import cli
from drgn_kvmwalk.leaves import iter_leaves
from drgn_kvmwalk.walk import ReadWatch, TableCache, placer, walk_addr

from .fake_kernel import kvm_host
from .test_layouts import LAYOUTS
from .test_walk import X86, X86_LEAF, npt


def test_a_page_read_the_same_twice_is_no_change():
    mem, t, root = npt(4)
    t.map(0x4000_0000, 0x1234_5000)
    watch = ReadWatch(mem)
    assert walk_addr(TableCache(watch), X86, root, 0x4000_0000).hpa == 0x1234_5000
    assert watch.reads == 4 and watch.recheck() == []


def test_a_page_that_changed_is_named_with_where_it_sits():
    mem, t, root = npt(4)
    t.map(0x4000_0000, 0x1234_5000)
    t.map(0x4000_1000, 0x1234_6000)
    watch = ReadWatch(mem)
    leaves = [lr for lr in iter_leaves(watch, X86, root)]
    assert sum(len(lr.indexes) for lr in leaves) == 2
    pt = t.table_for(0x4000_0000, 1)
    mem.set(pt + 8, 0)  # KVM zaps the second leaf after it was read
    (c,) = watch.recheck()
    assert (c.address, c.size, c.gone) == (pt, 4096, False)
    assert c.places == ((1, 0x4000_0000, 0x4020_0000),)
    # The root's own table translates every address.
    mem.set(t.root + 8 * 100, 0x7000 | X86_LEAF)
    changed = {c.address: c.places for c in watch.recheck()}
    assert changed[t.root] == ((4, 0, 1 << 64),)


def test_a_page_that_went_away_and_one_read_differently_within_the_walk():
    mem, t, root = npt(4)
    t.map(0x4000_0000, 0x1234_5000)
    watch = ReadWatch(mem)
    pt = t.table_for(0x4000_0000, 1)
    watch.read(pt, 4096)
    mem.set(pt, 0)
    watch.read(pt, 4096)  # differs already within the walk
    mem.set(pt, 0x1234_5000 | X86_LEAF)  # and reads as at first again
    (c,) = watch.recheck()
    assert c.address == pt and not c.gone
    watch = ReadWatch(mem)
    watch.read(pt, 4096)
    del mem.pages[pt]  # freed: the host's memory map no longer holds it
    (c,) = watch.recheck()
    assert c.address == pt and c.gone


def test_placer_finds_the_watch_under_a_table_cache():
    mem, _, _ = npt(4)
    watch = ReadWatch(mem)
    assert placer(TableCache(watch)) == watch.place
    assert placer(TableCache(mem)) is None and placer(mem) is None


class Drifting:
    """Host physical memory for a fake kernel: the tables of ``npt``, where
    the leaf of ``addr`` maps another page each time its table is read
    ``times`` times (KVM remapping it while the tool reads)."""

    def __init__(self, flips: int) -> None:
        self.mem, self.t, self.root = npt(4)
        self.addr = 0x4000_0000
        self.t.map(self.addr, 0x1234_5000)
        self.pt = self.t.table_for(self.addr, 1)
        self.flips = flips  # reads of the page that change it, then it stays

    def read(self, address, count, offset, physical):
        page = address & ~0xFFF
        data = bytes(self.mem.pages[page][address - page : address - page + count])
        if page == self.pt and self.flips:
            self.flips -= 1
            (old,) = struct.unpack_from("<Q", self.mem.pages[page], 0)
            self.mem.set(self.pt, old ^ 0x10_0000_0000)  # another host page
        return data


def host_with(tables, live, monkeypatch):
    fields, values = LAYOUTS["v7.3"]
    values = dict(values, **{"root.hpa": tables.root.hpa, "root_role.direct": 1})
    k = kvm_host(fields, dict(values, **{"w->cpu_role.base.level": 4}), live=live)
    for hpa in tables.mem.pages:
        k.prog.add_memory_segment(hpa, 4096, tables.read, physical=True)
    monkeypatch.setattr(cli, "spte_format", lambda kvm: X86)
    return k.prog


def run(prog, *argv):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(prog, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_a_walk_is_made_again_until_its_tables_read_the_same(monkeypatch):
    tables = Drifting(flips=1)  # changes under the first walk only
    prog = host_with(tables, True, monkeypatch)
    rc, out, err = run(prog, "--vcpu", "0", "--addr", hex(tables.addr), "--json")
    record = json.loads(out)
    assert (rc, err, record["changed"]) == (0, "", False)
    assert record["hpa"] == 0x10_1234_5000  # what the tables hold now


def test_a_walk_whose_tables_keep_changing_is_given_as_changed(monkeypatch):
    tables = Drifting(flips=100)
    prog = host_with(tables, True, monkeypatch)
    rc, out, err = run(prog, "--vcpu", "0", "--addr", hex(tables.addr), "--json")
    assert rc == 0 and json.loads(out)["changed"] is True
    assert err == (
        f"warning: changed while read: the walk of GPA {tables.addr:#x} read table pages "
        f"({tables.pt:#x}) that read differently again, 3 times; its answer may mix old "
        "and new entries\n"
    )
    rc, out, err = run(prog, "--vcpu", "0", "--dump")
    assert rc == 0 and err.startswith(
        f"warning: changed while read: table page at host physical {tables.pt:#x} "
        "(level 1 GPAs 0x40000000-0x40200000) reads differently now; what was made from "
        "it may mix old and new entries\n"
    )


def test_a_dump_is_read_once(monkeypatch):
    tables = Drifting(flips=100)
    prog = host_with(tables, False, monkeypatch)
    rc, out, err = run(prog, "--vcpu", "0", "--addr", hex(tables.addr), "--json")
    assert (rc, err) == (0, "") and "changed" not in json.loads(out)
    rc, out, err = run(prog, "--vcpu", "0", "--dump")
    assert (rc, err) == (0, "")


@pytest.mark.parametrize("flips", [0, 100])
def test_stats_says_how_many_pages_changed(monkeypatch, flips):
    from drgn_kvmwalk import stats as stats_mod

    tables = Drifting(flips=flips)
    prog = host_with(tables, True, monkeypatch)
    root = tables.root.hpa
    sp = type("Sp", (), {"role": type("R", (), {"level": 4})(), "spt": root})()
    monkeypatch.setattr(stats_mod, "for_each_tdp_mmu_root", lambda kvm: iter([sp]))
    monkeypatch.setattr(stats_mod, "for_each_active_mmu_page", lambda kvm: iter([]))
    monkeypatch.setattr(stats_mod, "virt_to_phys", lambda prog, x: x)
    monkeypatch.setattr(stats_mod, "spte_format", lambda kvm: X86)
    monkeypatch.setattr(
        stats_mod, "kvm_page_counters", lambda kvm: {"pages_4k": 1, "pages_2m": 0, "pages_1g": 0}
    )
    rc, out, err = run(prog, "--stats", "--json")
    assert rc == 0 and json.loads(out)["changed_pages"] == (1 if flips else 0)
    assert ("changed while read" in err) == bool(flips)
    if flips:
        assert "(level 1 addresses 0x40000000-0x40200000)" in err


@pytest.mark.parametrize("flips", [0, 100])
def test_verify_flags_its_problems_when_pages_changed(monkeypatch, flips):
    from drgn_kvmwalk import verify as verify_mod

    tables = Drifting(flips=flips)
    prog = host_with(tables, True, monkeypatch)

    def verify_vm(kvm, roots, mem, *, max_tables):
        mem.read(tables.pt, 4096)  # what the problem was found in
        yield verify_mod.Problem(
            4242,
            tables.root.hpa,
            tables.addr,
            0x40000,
            1,
            tables.pt,
            0,
            0x1234_5000,
            "hpa_mismatch",
            0x7777_0000,
            "made up",
        )
        yield verify_mod.VerifySummary(4242, 1, 1, {}, 1, 0, [])

    monkeypatch.setattr(verify_mod, "verify_vm", verify_vm)
    rc, out, err = run(prog, "--verify", "--json")
    problem, summary = (json.loads(line) for line in out.splitlines())
    assert rc == 1 and problem["changed"] is bool(flips)
    assert summary["changed_pages"] == (1 if flips else 0)
    assert (
        err.endswith(
            "warning: VM pid 4242: changed while read: 1 pages read differently the second "
            "time; the problems above may be changes made while reading\n"
        )
        if flips
        else err == ""
    )


@pytest.mark.parametrize("live,flips", [(True, 0), (True, 100), (False, 100)])
def test_hpa_names_the_table_pages_that_changed(monkeypatch, live, flips):
    from drgn_kvmwalk import verify as verify_mod

    tables = Drifting(flips=flips)
    prog = host_with(tables, live, monkeypatch)

    def find_hpa(prog, hpas, kvms, max_tables, mem):
        mem.read(tables.pt, 4096)  # the leaf's table, as the search reads it
        yield verify_mod.HpaMapping(
            hpas[0], 4242, tables.root.hpa, tables.addr, 0x40000, 1, tables.pt, 0, False
        )

    monkeypatch.setattr(verify_mod, "find_hpa", find_hpa)
    rc, out, err = run(prog, "--hpa", "0x12345000", "--json")
    assert rc == 0 and json.loads(out)["addr"] == tables.addr
    if live and flips:
        assert err == (
            f"warning: changed while read: table page at host physical {tables.pt:#x} "
            "reads differently now; what was made from it may mix old and new entries\n"
        )
    else:
        assert err == ""
