#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fuzz the walk: generated table trees, walked by drgn_kvmwalk and by a
reference walk of its own, written here from KVM's rules.

    python3 vm-test/fuzz.py                        # the long run: 20,000 trees
    python3 vm-test/fuzz.py --seed 7 --cases 1000  # what CI runs (tests/unit/test_fuzz.py)

Each case is a random tree in sparse memory for one SPTE format (x86 as
v5.13+ sets it up, the same with the L1TF masks and with 52 physical bits,
x86 as v5.10 did, EPT with and without A/D bits and execute-only, EPT with
SVE in the present mask) and one root shape (direct 4- and 5-level; shadow
4- and 5-level; a PAE root of a 32-bit or PAE guest under a 4- or 5-level
special root).  Entries are mostly what KVM makes (tables, leaves at levels
1-3, non-present values, MMIO and frozen SPTEs) and partly corrupt: random
values, leaves at level 4 and 5, links to memory that cannot be read, table
pages linked twice, at the same level or at another (a cycle).

The reference walk (this file, not the unit tests' table builder) follows
arch/x86/kvm/mmu: shadow_walk_init_using_root() (the PAE root entry is used
when its address bits are not zero), __shadow_walk_next() (stop at
!is_shadow_present_pte() or is_last_spte()), and the tool's documented
rules for what KVM never makes (a table page reached a second time under a
direct root, or again at another level, is not descended into; at most
``max_tables`` table pages per root).  For every case:

- iter_leaves, iter_leaf_columns and count_leaves give exactly the
  reference's leaves (canonical address, SPTE address, level), and its
  skipped table pages (unreadable, repeated, budget) by kind and place;
- iter_range_blocks covers exactly the leaves' pages;
- walk_addr of every leaf's address and of random addresses ends where the
  reference walk ends (HPA and page size, or the level it stopped at);
- the --dump and --map JSON renderings of it all parse as JSON;
- no exception but AddressError for addresses the root cannot translate,
  and no case over its time limit.

Prints one summary (JSON with --json), exit status 1 when anything failed.
Memory: the resident set after each tenth of the cases (flat: no growth
from case to case), and the peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections import Counter
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from drgn_kvmwalk.leaves import (  # noqa: E402
    LeafColumns,
    LeafRun,
    MapRanges,
    Unreadable,
    count_leaves,
    iter_leaf_columns,
    iter_leaves,
    iter_range_blocks,
)
from drgn_kvmwalk.render import FlagCache, dump_block, map_block  # noqa: E402
from drgn_kvmwalk.spte import SpteFormat, ept_format, x86_format  # noqa: E402
from drgn_kvmwalk.sptefmt import REMOVED_SPTE_5_12, SPTE_MMIO_MASK_5_8  # noqa: E402
from drgn_kvmwalk.walk import AddressError, PhysMemError, Root, TableCache, walk_addr  # noqa: E402

PAGE = 4096
MASK64 = (1 << 64) - 1
PS = 1 << 7


def formats() -> Dict[str, SpteFormat]:
    v5_10 = dataclasses.replace(
        x86_format(phys_bits=48),
        host_writable_mask=1 << 10,
        mmu_writable_mask=1 << 11,
        mmio_mask=SPTE_MMIO_MASK_5_8,
        mmio_value=SPTE_MMIO_MASK_5_8,
        mmu_present_mask=0,
        frozen_values=REMOVED_SPTE_5_12,
    )
    return {
        "x86": x86_format(phys_bits=48),
        "x86-l1tf": x86_format(phys_bits=46, l1tf=True),
        "x86-52": x86_format(phys_bits=52),
        "x86-5.10": v5_10,
        "ept": ept_format(phys_bits=46),
        "ept-noad": ept_format(phys_bits=46, ad_bits=False, exec_only=False),
        "ept-sve": ept_format(phys_bits=46, suppress_ve=True),
    }


# (name, root level, direct, guest paging level)
SHAPES = [
    ("direct-4", 4, True, 4),
    ("direct-5", 5, True, 5),
    ("shadow-4", 4, False, 4),
    ("shadow-5", 5, False, 5),
    ("pae-under-4", 4, False, 3),
    ("32bit-under-5", 5, False, 2),
]


class Mem:
    """Sparse host memory: pages never written cannot be read."""

    def __init__(self) -> None:
        self.pages: Dict[int, bytearray] = {}
        self.next = 0x10_0000

    def alloc(self) -> int:
        hpa = self.next
        self.next += PAGE
        self.pages[hpa] = bytearray(PAGE)
        return hpa

    def set(self, hpa: int, value: int) -> None:
        struct.pack_into("<Q", self.pages[hpa & ~(PAGE - 1)], hpa & (PAGE - 1), value)

    def get(self, hpa: int) -> int:
        return int(struct.unpack_from("<Q", self.pages[hpa & ~(PAGE - 1)], hpa & (PAGE - 1))[0])

    def read(self, address: int, size: int) -> bytes:
        page = self.pages.get(address & ~(PAGE - 1))
        off = address & (PAGE - 1)
        if page is None or off + size > PAGE:
            raise PhysMemError(address)
        return bytes(page[off : off + size])


# -- KVM's rules, as the reference walk applies them ----------------------------


def present(fmt: SpteFormat, spte: int) -> bool:
    """is_shadow_present_pte(): the MMU-present bit (v5.13+); before, any
    SPTE that is not 0, MMIO (is_mmio_spte()) or REMOVED_SPTE."""
    if fmt.mmu_present_mask:
        return bool(spte & fmt.mmu_present_mask)
    mmio = fmt.mmio_caching and fmt.mmio_value and spte & fmt.mmio_mask == fmt.mmio_value
    return spte != 0 and not mmio and spte not in fmt.frozen_values


def last(spte: int, level: int) -> bool:
    """is_last_spte()."""
    return level == 1 or bool(spte & PS)


def shift(level: int) -> int:
    return 12 + 9 * (level - 1)


def start_level(root: Root) -> int:
    """shadow_walk_init_using_root()'s level."""
    if root.level >= 4 and root.cpu_level < 4 and not root.direct:
        return 3
    return root.level


def canonical(root: Root, raw: int) -> int:
    level = start_level(root)
    bits = 32 if level == 3 else shift(level) + 9
    if not root.direct and bits != 32 and raw >> (bits - 1) & 1:
        return (raw | (MASK64 ^ ((1 << bits) - 1))) & MASK64
    return raw


def ref_walk(mem: Mem, fmt: SpteFormat, root: Root, addr: int) -> Tuple[Any, ...]:
    """("leaf", hpa, size) or ("stop", level): where for_each_shadow_entry ends."""
    level = start_level(root)
    table = root.hpa & fmt.base_addr_mask
    if level == 3:
        if root.pae_root_hpa is None:
            return ("stop", 3)
        entry = mem.get(root.pae_root_hpa + 8 * ((addr >> 30) & 3))
        table = entry & fmt.base_addr_mask
        if not table:
            return ("stop", 3)
        level = 2
    while True:
        try:
            spte = int.from_bytes(mem.read(table + 8 * ((addr >> shift(level)) & 511), 8), "little")
        except PhysMemError:
            return ("stop", level)
        if not present(fmt, spte):
            return ("stop", level)
        if last(spte, level):
            size = 1 << shift(level)
            base = spte & fmt.base_addr_mask & ~(size - 1)
            return ("leaf", base | (addr & (size - 1)), size)
        table = spte & fmt.base_addr_mask
        level -= 1


Leaf = Tuple[int, int, int]  # canonical address, SPTE address, level
Skip = Tuple[str, int, int]  # kind, table, canonical address of its entry 0


class _Over(Exception):
    pass


def ref_leaves(
    mem: Mem, fmt: SpteFormat, root: Root, max_tables: int
) -> Tuple[List[Leaf], List[Skip]]:
    """Every leaf in address order, and the table pages not descended into."""
    leaves: List[Leaf] = []
    skips: List[Skip] = []
    levels: Dict[int, int] = {}
    taken = [0]

    def table(hpa: int, level: int, base: int) -> None:
        seen = levels.get(hpa)
        if seen is not None and (root.direct or seen != level):
            skips.append(("repeated", hpa, canonical(root, base)))
            return
        if taken[0] >= max_tables:
            skips.append(("budget", hpa, canonical(root, base)))
            raise _Over
        taken[0] += 1
        levels.setdefault(hpa, level)
        try:
            data = mem.read(hpa, PAGE)
        except PhysMemError:
            skips.append(("unreadable", hpa, canonical(root, base)))
            return
        for i, spte in enumerate(struct.unpack("<512Q", data)):
            if not present(fmt, spte):
                continue
            addr = base + (i << shift(level))
            if last(spte, level):
                leaves.append((canonical(root, addr), hpa + 8 * i, level))
            else:
                table(spte & fmt.base_addr_mask, level - 1, addr)

    level = start_level(root)
    try:
        if level != 3:
            table(root.hpa & fmt.base_addr_mask, level, 0)
        elif root.pae_root_hpa is not None:
            for i in range(4):
                entry = mem.get(root.pae_root_hpa + 8 * i)
                if entry & fmt.base_addr_mask:
                    table(entry & fmt.base_addr_mask, 2, i << 30)
    except _Over:
        pass
    return leaves, skips


# -- Trees ---------------------------------------------------------------------


class Tree:
    def __init__(self, rng: random.Random, fmt: SpteFormat, shape: Tuple[str, int, bool, int]):
        self.rng, self.fmt = rng, fmt
        self.name, level, direct, cpu_level = shape
        self.mem = Mem()
        self.tables: List[Tuple[int, int]] = []  # (hpa, level) made so far
        self.budget = rng.choice([6, 20, 60])  # table pages to make
        if fmt.ept:
            self.table_bits = fmt.mmu_present_mask | 0x7  # RWX
            self.leaf_bits = fmt.mmu_present_mask | 0x7 | (6 << 3) | fmt.host_writable_mask
        else:
            self.table_bits = fmt.mmu_present_mask | 0x27 | fmt.me_value
            self.leaf_bits = fmt.mmu_present_mask | 0x67 | fmt.host_writable_mask | fmt.me_value
        top = self.mem.alloc()
        self.tables.append((top, level))
        pae = None
        start = 3 if level >= 4 and cpu_level < 4 and not direct else level
        if start == 3:
            pae = self.mem.alloc()
            for i in range(4):
                if rng.random() < 0.7:
                    child = self.mem.alloc()
                    self.tables.append((child, 2))
                    self.mem.set(pae + 8 * i, child | 1)
                    self.fill(child, 2)
                elif rng.random() < 0.3:
                    self.mem.set(pae + 8 * i, self.garbage())
        else:
            self.fill(top, level)
        self.root = Root(top, level, direct, cpu_level, pae)

    def garbage(self) -> int:
        rng = self.rng
        return rng.choice(
            [
                rng.getrandbits(64),
                rng.getrandbits(64) & ~self.fmt.mmu_present_mask,
                rng.getrandbits(64) | self.fmt.mmu_present_mask,
                MASK64,
            ]
        )

    def entry(self, level: int) -> int:
        rng, fmt = self.rng, self.fmt
        r = rng.random()
        hpa = rng.getrandbits(40) << 12 & fmt.base_addr_mask
        if r < 0.55:
            return rng.choice([0, 0, 0, 1 << 63, 0x5A0])  # not present, frozen
        if r < 0.62 and fmt.mmio_value:
            gfn = (rng.getrandbits(30) << 12) & fmt.nonpresent_or_rsvd_lower_gfn_mask
            return fmt.mmio_value | (gfn & ~fmt.mmio_mask)
        if r < 0.85 and level > 1:
            if self.budget > 0 and rng.random() < 0.8:
                self.budget -= 1
                child = self.mem.alloc()
                self.tables.append((child, level - 1))
                self.fill(child, level - 1)
                return child | self.table_bits
            if rng.random() < 0.5 and self.tables:
                # An existing table page: often at its own level (shared),
                # sometimes at another (a cycle or a wrong level).
                same = [t for t, lv in self.tables if lv == level - 1]
                pool = same if same and rng.random() < 0.7 else [t for t, _ in self.tables]
                return rng.choice(pool) | self.table_bits
            return hpa | self.table_bits  # memory that cannot be read
        if r < 0.97:
            if level > 3 and rng.random() < 0.9:
                return hpa | self.table_bits  # mostly a table that cannot be read
            size = 1 << shift(level)  # a leaf; at level 4 or 5 a corrupt one
            return (hpa & ~(size - 1)) | self.leaf_bits | (PS if level > 1 else 0)
        return self.garbage()

    def fill(self, table: int, level: int) -> None:
        n = self.rng.choice([1, 3, 8, 40, 512])
        for i in self.rng.sample(range(512), n):
            self.mem.set(table + 8 * i, self.entry(level))


# -- One case --------------------------------------------------------------------


class Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Timeout()


def tool_leaves(items: List[Any]) -> Tuple[List[Leaf], List[Skip]]:
    leaves: List[Leaf] = []
    skips: List[Skip] = []
    for item in items:
        if isinstance(item, Unreadable):
            skips.append((item.kind, item.table, item.base))
        elif isinstance(item, LeafRun):
            spteps = item.spteps().tolist()
            leaves += [(a, s, item.level) for a, s in zip(item.addrs().tolist(), spteps)]
        else:
            assert isinstance(item, LeafColumns)
            leaves += [
                (a, s, item.level) for a, s in zip(item.addrs.tolist(), item.spteps.tolist())
            ]
    return leaves, skips


def run_case(rng: random.Random, fmt: SpteFormat, shape: Any) -> Dict[str, Any]:
    tree = Tree(rng, fmt, shape)
    mem, root = tree.mem, tree.root
    max_tables = rng.choice([3, 10, 1000])
    want, want_skips = ref_leaves(mem, fmt, root, max_tables)
    problems: List[str] = []
    got, skips = tool_leaves(list(iter_leaves(mem, fmt, root, max_tables=max_tables)))
    if got != want:
        problems.append(
            f"iter_leaves: {len(got)} leaves, reference {len(want)}: "
            f"{sorted(set(got) ^ set(want))[:3]}"
        )
    if sorted(skips) != sorted(want_skips):
        problems.append(
            f"iter_leaves skipped {sorted(skips)[:3]}, reference {sorted(want_skips)[:3]}"
        )
    cols = list(iter_leaf_columns(mem, fmt, root, max_tables=max_tables))
    got_cols, skips_cols = tool_leaves(cols)
    if sorted(got_cols) != sorted(want) or sorted(skips_cols) != sorted(want_skips):
        problems.append("iter_leaf_columns differs from the reference")
    counts, holes = count_leaves(mem, fmt, root, max_tables=max_tables)
    if counts != dict(Counter(lv for _, _, lv in want)) or len(holes) != len(want_skips):
        problems.append(f"count_leaves {counts}, reference {dict(Counter(lv for *_, lv in want))}")
    blocks = list(iter_range_blocks(mem, fmt, root, max_tables=max_tables))
    covered = sum(int(b.pages.sum()) << shift(b.level) for b in blocks if isinstance(b, MapRanges))
    if covered != sum(1 << shift(lv) for *_, lv in want):
        problems.append(f"iter_range_blocks covers {covered:#x} bytes, not the leaves'")
    flags = FlagCache(fmt)
    for c in cols:
        if isinstance(c, LeafColumns):
            for line in dump_block([c], fmt, flags, 1, 0, True).splitlines():
                json.loads(line)
    for b in blocks:
        if isinstance(b, MapRanges):
            for line in map_block(b, flags, 1, 0, True).splitlines():
                json.loads(line)
    # Walks: every leaf's address, and random addresses.
    cache = TableCache(mem)
    bits = 32 if start_level(root) == 3 else shift(start_level(root)) + 9
    addrs = [a for a, _, _ in want[:200]] + [
        canonical(root, rng.getrandbits(bits)) for _ in range(50)
    ]
    walks = 0
    for a in addrs:
        w = walk_addr(cache, fmt, root, a)
        ref = ref_walk(mem, fmt, root, a)
        mine = ("leaf", w.hpa, w.page_size) if w.hpa is not None else ("stop", w.stop_level)
        walks += 1
        if mine != ref:
            problems.append(f"walk_addr({a:#x}) = {mine}, reference {ref}")
            break
    try:  # an address the root cannot translate is refused, not walked
        walk_addr(cache, fmt, root, 1 << bits if root.direct or bits == 32 else 1 << (bits - 1))
        problems.append("walk_addr took an address beyond the root")
    except AddressError:
        pass
    return {
        "leaves": len(want),
        "skipped": len(want_skips),
        "walks": walks,
        "tables": len(tree.tables),
        "problems": problems,
    }


def rss_kib() -> int:
    """Resident memory now, after a collection (not the peak)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def run(seed: int, cases: int, seconds: float, per_case: float = 30.0) -> Dict[str, Any]:
    rss_start = rss_kib()
    rss_tenths: List[int] = []
    fmts = formats()
    totals: Counter = Counter()
    failures: List[Dict[str, Any]] = []
    t0 = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    done = 0
    try:
        for case in range(cases):
            if time.monotonic() - t0 > seconds:
                break
            if case and case % max(1, cases // 10) == 0:
                rss_tenths.append(rss_kib())
            rng = random.Random(f"{seed}/{case}")
            fmt_name = rng.choice(sorted(fmts))
            shape = rng.choice(SHAPES)
            what = {"case": case, "format": fmt_name, "shape": shape[0]}
            signal.setitimer(signal.ITIMER_REAL, per_case)
            try:
                got = run_case(rng, fmts[fmt_name], shape)
            except Timeout:
                totals["hangs"] += 1
                failures.append({**what, "hang": f"over {per_case} s"})
                continue
            except Exception:
                totals["crashes"] += 1
                failures.append({**what, "traceback": traceback.format_exc()})
                continue
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            done += 1
            for key in ("leaves", "skipped", "walks", "tables"):
                totals[key] += got[key]
            if got["problems"]:
                totals["mismatches"] += 1
                failures.append({**what, "problems": got["problems"]})
    finally:
        signal.signal(signal.SIGALRM, old)
    rss_end = rss_kib()
    return {
        "seed": seed,
        "cases": done + totals["hangs"] + totals["crashes"],
        "seconds": round(time.monotonic() - t0, 1),
        "leaves_compared": totals["leaves"],
        "skipped_tables": totals["skipped"],
        "walks_compared": totals["walks"],
        "table_pages_made": totals["tables"],
        "crashes": totals["crashes"],
        "hangs": totals["hangs"],
        "mismatches": totals["mismatches"],
        "rss_kib": {
            "start": rss_start,
            "each_tenth": rss_tenths,
            "end": rss_end,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        },
        "failures": failures[:20],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    ap.add_argument("--cases", type=int, default=20_000, help="trees to make (default 20000)")
    ap.add_argument(
        "--seconds", type=float, default=3600, help="stop after this long (default 3600)"
    )
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    summary = run(args.seed, args.cases, args.seconds)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for key, value in summary.items():
            if key != "failures":
                print(f"{key}: {value}")
        for f in summary["failures"]:
            print(json.dumps(f))
    bad = summary["crashes"] + summary["hangs"] + summary["mismatches"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
