# SPDX-License-Identifier: LGPL-2.1-or-later
"""--dump and --map rendering of leaf runs (no kernel needed)."""

import json

import drgn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_kvmwalk.leaves import RangeMerger, iter_leaves, iter_ranges, run_segments
from drgn_kvmwalk.render import (
    FlagCache,
    dump_lines,
    dump_text_row,
    map_line,
    page_size_name,
)
from drgn_kvmwalk.spte import x86_format

from .test_leaves import flatten
from .test_walk import X86, X86_LEAF, npt

NX = 1 << 63


def tables(leaves):
    """Tables holding (addr, level, hpa, extra bits) leaves: (memory, root)."""
    mem, t, root = npt(4)
    for addr, level, hpa, extra in leaves:
        t.map(addr, hpa, level=level, extra=extra)
    return mem, root


def build(leaves):
    """The runs over tables holding ``leaves``."""
    mem, root = tables(leaves)
    return list(iter_leaves(mem, X86, root))


def map_of(leaves, batched):
    """--map's JSON records for ``leaves``: from iter_ranges() (page tables
    cut into ranges together), or merged by hand from each run's segments."""
    if not batched:
        return ranges(build(leaves))
    flags = FlagCache(X86)
    return [json.loads(map_line(r, flags, 7, 1, True)) for r in iter_ranges(*_mr(leaves))]


def _mr(leaves):
    mem, root = tables(leaves)
    return mem, X86, root


def ranges(runs, as_json=True):
    """The ranges of ``runs``, merged by hand from the core's pieces."""
    flags = FlagCache(X86)
    merger = RangeMerger(X86)
    out = []
    for run in runs:
        for seg in run_segments(run, X86):
            done = merger.add(seg)
            if done:
                out.append(done)
    last = merger.flush()
    if last:
        out.append(last)
    return [json.loads(map_line(r, flags, 7, 1, True)) for r in out] if as_json else out


def test_iter_ranges_is_the_merge_of_the_leaves():
    """iter_ranges() gives what merging iter_leaves()' runs gives, batched or
    not, and stops at table pages when asked to."""
    leaves = [(0x1000 * i, 1, 0x10_0000 + 0x1000 * i, 0) for i in range(1, 5)]
    leaves += [(0x1F_F000, 1, 0x30_0000, 0), (0x20_0000, 1, 0x30_1000, 0)]
    leaves += [(0x40_0000, 2, 0x60_0000, NX)]
    mem, t, root = npt(4)
    for addr, level, hpa, extra in leaves:
        t.map(addr, hpa, level=level, extra=extra)
    seen = []
    got = list(iter_ranges(mem, X86, root, on_leaves=lambda n, addr: seen.append(n)))
    assert got == ranges(build(leaves), as_json=False)
    assert sum(seen) == len(leaves)
    per_table = list(iter_ranges(mem, X86, root, per_table=True))
    assert [(r.start, r.end) for r in per_table] == [
        (0x1000, 0x5000),
        (0x1F_F000, 0x20_0000),
        (0x20_0000, 0x20_1000),
        (0x40_0000, 0x60_0000),
    ]
    # The range across 0x200000 is cut there: its halves are in two page tables.
    assert per_table[1].table != per_table[2].table
    assert [(r.start, r.end) for r in got][1] == (0x1F_F000, 0x20_1000)


def test_dump_json_lines_are_the_contract():
    runs = build([(0x1000, 1, 0x5000, 0), (0x20_0000, 2, 0x40_0000, NX)])
    flags = FlagCache(X86)
    recs = [json.loads(line) for r in runs for line in dump_lines(r, X86, flags, 7, 1, True)]
    assert [list(r) for r in recs] == [
        ["vm", "vcpu", "addr", "level", "sptep", "spte", "hpa", "flags"]
    ] * 2
    assert [(r["addr"], r["level"], r["hpa"]) for r in recs] == [
        (0x1000, 1, 0x5000),
        (0x20_0000, 2, 0x40_0000),
    ]
    assert recs[0]["spte"] == 0x5000 | X86_LEAF
    assert recs[1]["flags"][-1:] != ["NX"] and "NX" in recs[1]["flags"] and "PS" in recs[1]["flags"]
    text = [line for r in runs for line in dump_lines(r, X86, flags, 7, 1, False)]
    assert text[0].startswith("0x0000000000001000    4K  ") and "P W U A D" in text[0]
    assert text[1].split()[1] == "2M"


@pytest.mark.parametrize("batched", [False, True])
def test_map_merges_contiguous_leaves_only(batched):
    leaves = [(0x1000 * i, 1, 0x10_0000 + 0x1000 * i, 0) for i in range(1, 5)]  # one range
    leaves += [(0x5000, 1, 0x20_0000, 0)]  # HPA jumps
    leaves += [(0x6000, 1, 0x20_1000, NX)]  # other flags
    leaves += [(0x8000, 1, 0x20_3000, NX)]  # address gap
    leaves += [(0x20_0000, 2, 0x40_0000, 0), (0x40_0000, 2, 0x60_0000, 0)]  # 2M x 2
    got = [(r["start"], r["end"], r["hpa"], r["level"]) for r in map_of(leaves, batched)]
    assert got == [
        (0x1000, 0x5000, 0x10_1000, 1),
        (0x5000, 0x6000, 0x20_0000, 1),
        (0x6000, 0x7000, 0x20_1000, 1),
        (0x8000, 0x9000, 0x20_3000, 1),
        (0x20_0000, 0x60_0000, 0x40_0000, 2),
    ]


@pytest.mark.parametrize("batched", [False, True])
def test_map_joins_across_table_pages(batched):
    # 4K leaves at the end of one page table and the start of the next.
    leaves = [(0x1F_F000, 1, 0x30_0000, 0), (0x20_0000, 1, 0x30_1000, 0)]
    assert [(r["start"], r["end"]) for r in map_of(leaves, batched)] == [(0x1F_F000, 0x20_1000)]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2047), st.integers(0, 7), st.booleans()),
        max_size=60,
        unique_by=lambda x: x[0],
    ),
    st.booleans(),
)
def test_map_covers_exactly_the_dump(pages, batched):
    """Random 4K leaves (some with contiguous HPAs, some with NX): the ranges
    are sorted, disjoint, and cover exactly the leaves, each range's leaves
    contiguous in HPA and with the range's flags."""
    spec = [(i << 12, 1, (0x100000 + i + 7 * j) << 12, NX if nx else 0) for i, j, nx in pages]
    leaves, _ = flatten(build(spec), X86)
    nx = {i << 12: n for i, _, n in pages}
    covered = {}
    prev_end = -1
    for r in map_of(spec, batched):
        assert r["start"] >= prev_end and r["end"] > r["start"]
        prev_end = r["end"]
        for a in range(r["start"], r["end"], 0x1000):
            covered[a] = r["hpa"] + (a - r["start"])
            assert nx[a] == ("NX" in r["flags"])
    assert covered == {addr: hpa for addr, _, _, _, hpa in leaves}


def test_stats_rendering_flags_differences():
    from drgn_kvmwalk.render import stats_json, stats_text
    from drgn_kvmwalk.stats import VmStats, _differences, _notes

    leaves = {"4K": 10, "2M": 2, "1G": 1}
    assert _differences(leaves, {"pages_4k": 10, "pages_2m": 2, "pages_1g": 1}) == []
    assert _differences(leaves, {"pages_4k": 9, "pages_2m": 2, "pages_1g": 0}) == [
        "pages_4k",
        "pages_1g",
    ]
    assert _differences(leaves, {"lpages": 3}) == []
    assert _differences(leaves, {"lpages": 2}) == ["lpages"]
    by_mmu = {"tdp_mmu": {"4K": 10, "2M": 2, "1G": 0}, "legacy": {"4K": 0, "2M": 0, "1G": 1}}
    notes = _notes(by_mmu, {"lpages": 1}, ["lpages"])
    assert len(notes) == 1 and "1699f65c8b65" in notes[0]
    assert _notes(by_mmu, {"lpages": 2}, ["lpages"]) == []  # not that explanation
    st = VmStats(42, 1, 3, leaves, {"lpages": 2}, ["lpages"], [(0x5000, "gone")], by_mmu, notes, [])
    js = stats_json(st)
    assert js["match"] is False and js["vm"] == 42 and js["leaves"] == leaves
    text = stats_text(st)
    assert "DIFFERENT: lpages" in text and "0x5000 not accessible" in text
    assert "note: lpages counts only" in text


def test_annotation_text_names_the_role():
    from drgn_kvmwalk.mmu import ShadowPage
    from drgn_kvmwalk.render import sp_json, sp_text

    prog = drgn.Program(drgn.host_platform)
    ptr = drgn.Object(prog, prog.pointer_type(prog.void_type()), 0xFFFF888001234000)
    sp = ShadowPage(ptr, 4, True, 7, 0, False, False, 0, 0x0, 1, True)
    assert sp_text(sp) == (
        "kvm_mmu_page 0xffff888001234000: level 4, direct, gfn 0x0, "
        "access uwx, as 0, root_count 1, TDP MMU"
    )
    assert sp_json(sp)["root_count"] == 1 and sp_json(None) is None
    assert "special root" in sp_text(None)


class _Tty:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_only_on_a_terminal_and_never_with_json(monkeypatch):
    from drgn_kvmwalk import cli

    clock = iter(range(0, 100))
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    tty = _Tty(True)
    p = cli.Progress(tty)
    p.update(512, 0x200000, True)
    p.update(512, 0x400000, True)
    assert "1024 leaves so far, at GPA 0x400000" in tty.text
    p.clear()
    assert tty.text.endswith("\r\033[K")
    for stream, enabled in ((_Tty(False), True), (_Tty(True), False)):
        q = cli.Progress(stream, enabled=enabled)
        q.update(512, 0, True)
        q.update(512, 0, True)
        q.clear()
        assert stream.text == ""


X86_52 = x86_format(phys_bits=52)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 511),
            st.integers(1, 2),
            st.integers(0, (1 << 52) - 1),
            st.sampled_from([0, NX, 1 << 9, 1 << 10]),
        ),
        min_size=1,
        max_size=40,
        unique_by=lambda x: x[0],
    ),
    st.booleans(),
)
def test_dump_text_block_equals_line_by_line(entries, big_hpas):
    """The text --dump lines made as one character matrix are the lines
    dump_text_row formats one at a time (HPAs of 13 digits take the
    line-by-line path)."""
    mem, t, root = npt(4)
    for index, level, hpa, extra in entries:
        size = 0x1000 if level == 1 else 0x20_0000
        hpa &= ~(size - 1) & ((1 << (52 if big_hpas else 48)) - 1)
        addr = index * 0x20_0000 if level == 2 else 0x4000_0000 + index * 0x1000
        t.map(addr, hpa, level=level, extra=extra)
    runs = list(iter_leaves(mem, X86_52, root))
    flags = FlagCache(X86_52)
    got = [line for r in runs for line in dump_lines(r, X86_52, flags, 7, 1, False)]
    want = [
        dump_text_row(
            a, page_size_name(1 << (12 + 9 * (r.level - 1))), p, s, h, flags.get(r.level, s)[0]
        )
        for r in runs
        for a, p, s, h in zip(
            r.addrs().tolist(), r.spteps().tolist(), r.sptes.tolist(), r.hpas(X86_52).tolist()
        )
    ]
    assert got == want
    assert len(got) == len(entries)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1023),
            st.sampled_from([1, 1, 1, 2]),
            st.integers(0, (1 << 52) - 1),
            st.sampled_from([0, NX, 1 << 9, NX | (1 << 52)]),
        ),
        min_size=1,
        max_size=60,
        unique_by=lambda x: (x[0], x[1]),
    ),
    st.booleans(),
    st.sampled_from([None, "prev 0x1234"]),
)
def test_dump_block_is_dump_lines_of_every_run(entries, as_json, label):
    """--dump's block renderer (runs of one level at once) writes exactly the
    lines dump_lines() writes run by run, text and JSON, with a root label."""
    from drgn_kvmwalk.render import dump_block

    mem, t, root = npt(4)
    for index, level, hpa, extra in entries:
        size = 0x1000 if level == 1 else 0x20_0000
        addr = index * 0x20_0000 if level == 2 else 0x8000_0000 + index * 0x1000
        t.map(addr, hpa & ~(size - 1), level=level, extra=extra)
    runs = list(iter_leaves(mem, X86_52, root))
    flags = FlagCache(X86_52)
    for level in (1, 2):
        same = [r for r in runs if r.level == level]
        want = "".join(
            line + "\n"
            for r in same
            for line in dump_lines(r, X86_52, flags, 7, 1, as_json, root=label)
        )
        assert dump_block(same, X86_52, FlagCache(X86_52), 7, 1, as_json, label) == want


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4 * 512 - 1),  # 4K page, or 2M page when the level is 2
            st.sampled_from([1, 1, 1, 1, 2]),
            st.integers(0, 40),  # HPA: small numbers make neighbours likely
            st.sampled_from([0, 0, NX, 1 << 9]),  # bit 9 (ignored): same flags, other bits
        ),
        max_size=120,
        unique_by=lambda x: x[0] >> 9 if x[1] == 2 else x[0],
    )
)
def test_iter_ranges_blocks_join_as_range_merger_does(entries):
    """iter_ranges() (page tables cut and joined as column blocks) gives the
    ranges RangeMerger makes from each run's segments, one at a time, for
    page tables with 2M leaves and holes between them, and SPTEs whose
    attribute bits differ but decode to the same flags."""
    seen2m = {page >> 9 for page, level, _, _ in entries if level == 2}
    leaves = []
    for page, level, hpa, extra in entries:
        if level == 2:
            leaves.append(((page >> 9) << 21, 2, 0x4000_0000 + (hpa << 21), extra))
        elif page >> 9 not in seen2m:
            leaves.append((page << 12, 1, 0x10_0000 + (hpa << 12), extra))
    mem, root = tables(leaves)
    assert list(iter_ranges(mem, X86, root)) == ranges(build(leaves), as_json=False)


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("label", [None, "all 0x1000"])
def test_map_block_is_map_line_of_every_range(as_json, label):
    """--map's block renderer writes the lines map_line() writes range by
    range, also for a range that ends at the top of the address space."""
    from drgn_kvmwalk.leaves import iter_range_blocks
    from drgn_kvmwalk.render import map_block

    leaves = [(0x1000 * i, 1, 0x10_0000 + 0x1000 * (i % 7), NX * (i % 3 == 0)) for i in range(600)]
    leaves += [(0x40_0000, 2, 0x60_0000, 0), (0x60_0000, 2, 0x80_0000, 0)]
    mem, root = tables(leaves)
    top = [(0xFFFF_FFFF_FFFF_F000, 1, 0x9000, 0)]  # a GVA root: the last page of the space
    gva_mem, gva_root = tables([(0xFFFF_FFFF_FFFF_F000 & ((1 << 48) - 1), 1, 0x9000, 0)])
    gva_root = gva_root._replace(direct=False)
    for m, r in ((mem, root), (gva_mem, gva_root)):
        blocks = list(iter_range_blocks(m, X86, r))
        flags = FlagCache(X86)
        got = "".join(map_block(b, flags, 7, 1, as_json, label) for b in blocks)
        want = "".join(
            map_line(x, FlagCache(X86), 7, 1, as_json, None, label) + "\n"
            for b in blocks
            for x in b.ranges()
        )
        assert got == want
    assert [x.end for b in blocks for x in b.ranges()] == [1 << 64]
    assert top[0][0] == blocks[0].ranges()[0].start
