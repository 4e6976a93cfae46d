# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every leaf SPTE under a root, in address order, a table page at a time.

The whole-table views (--dump, --map, --stats) need every leaf, not one
address: this module descends the tables the way :func:`~drgn_kvmwalk.walk.walk_addr`
does (same special PAE roots, only present non-last SPTEs lead down), but
reads each table page once and tests its 512 entries at once with numpy.
It is a module of its own so that a single ``--addr`` walk does not pay for
importing numpy.

Nothing here imports drgn.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .spte import (
    ENTRIES_PER_TABLE,
    PAGE_SIZE,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    SpteFormat,
    decode_spte,
    level_shift,
    level_size,
)
from .walk import (
    PT32E_ROOT_LEVEL,
    AddressError,
    PhysMem,
    PhysMemError,
    Root,
    addr_bits,
    check_addr,
    root_start_level,
)

__all__ = [
    "LeafRun",
    "MapRange",
    "RangeMerger",
    "iter_ranges",
    "run_segments",
    "split_starts",
    "Unreadable",
    "canonical",
    "classify_table",
    "count_table_leaves",
    "iter_leaves",
    "raw_addr",
]

_U64 = np.dtype("<u8")


class LeafRun(NamedTuple):
    """Leaf SPTEs of one table page that lie next to each other in address
    order (no table entry of that page between them), ready for vector work.

    ``indexes`` and ``sptes`` are numpy arrays (entry indexes, ascending, and the
    SPTE values); entry ``i`` maps ``base + i * level_size(level)``.
    """

    level: int
    table: int  # HPA of the table page
    base: int  # the address entry 0 of the table translates (canonical)
    indexes: "np.ndarray[Any, Any]"
    sptes: "np.ndarray[Any, Any]"
    # With iter_leaves(segments=True), for runs of page tables tested together:
    # the run cut where a leaf does not continue the previous one's address,
    # host page and attributes, as (first entry index, leaves, first SPTE).
    segments: Optional[List[Tuple[int, int, int]]] = None

    def addrs(self) -> "np.ndarray[Any, Any]":
        """The address each leaf starts at (uint64)."""
        return np.uint64(self.base) + (
            self.indexes.astype(_U64) << np.uint64(level_shift(self.level))
        )

    def hpas(self, fmt: SpteFormat) -> "np.ndarray[Any, Any]":
        """The host physical address each leaf maps (its page's base)."""
        mask = fmt.base_addr_mask & ~(level_size(self.level) - 1)
        return self.sptes & np.uint64(mask)

    def spteps(self) -> "np.ndarray[Any, Any]":
        return np.uint64(self.table) + (self.indexes.astype(_U64) << np.uint64(3))


class Unreadable(NamedTuple):
    """A table page the walk could not read; what it maps is unknown."""

    level: int
    table: int
    base: int
    size: int  # bytes of address space the page translates
    error: str


def classify_table(
    fmt: SpteFormat, entries: "np.ndarray[Any, Any]", level: int
) -> Tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]:
    """Vector form of :func:`~drgn_kvmwalk.spte.decode_spte`'s present and
    leaf tests over a table's entries: ``(present, leaf)`` boolean arrays."""
    if fmt.mmu_present_mask:
        present = (entries & np.uint64(fmt.mmu_present_mask)) != 0
    else:
        present = entries != 0
    for value in fmt.frozen_values:
        present &= entries != np.uint64(value)
    if fmt.mmio_caching and fmt.mmio_value:
        present &= (entries & np.uint64(fmt.mmio_mask)) != np.uint64(fmt.mmio_value)
    if level == 1:
        return present, present
    return present, present & ((entries & np.uint64(PT_PAGE_SIZE_MASK)) != 0)


def canonical(root: Root, raw: int) -> int:
    """The address as KVM's callers see it: GVAs of a 4- or 5-level shadow
    root are sign-extended from their top translated bit."""
    bits = addr_bits(root)
    if not root.direct and bits < 64 and bits != 32 and raw >> (bits - 1) & 1:
        return raw | (((1 << 64) - 1) ^ ((1 << bits) - 1))
    return raw


def raw_addr(root: Root, addr: int) -> int:
    """The inverse of :func:`canonical`: the bits the root's indexes use."""
    return addr & ((1 << addr_bits(root)) - 1)


def iter_leaves(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    start: int = 0,
    end: Optional[int] = None,
    segments: bool = False,
) -> Iterator[Union[LeafRun, Unreadable]]:
    """Every leaf SPTE under ``root`` whose page overlaps ``[start, end)``, in
    address order, as :class:`LeafRun` chunks; a table page that cannot be
    read is reported as :class:`Unreadable` and the walk goes on.

    The descent follows the shadow walk: the same special PAE root handling
    as :func:`walk_addr`, and only present, non-last SPTEs lead to a lower
    table.  Each table page is read once, 4096 bytes, and tested as a whole.
    ``start`` and ``end`` are addresses as for :func:`walk_addr` (checked
    with :func:`check_addr`); ``end`` defaults to the end of what the root
    translates.

    With ``segments``, runs of page tables that were tested together also
    carry :attr:`LeafRun.segments` (for --map), computed for all of them at
    once.

    :raises AddressError: the range is outside what the root translates
        (raised at once, before any table is read)
    """
    lo, hi = _raw_range(root, start, end)
    return _iter_leaves(mem, fmt, root, lo, hi, segments)


def _raw_range(root: Root, start: int, end: Optional[int]) -> Tuple[int, int]:
    bits = addr_bits(root)
    check_addr(root, start)
    lo = raw_addr(root, start)
    if end is None:
        hi = 1 << bits
    else:
        if end <= start:
            raise AddressError(f"empty range {start:#x}-{end:#x}")
        check_addr(root, end - 1)
        hi = raw_addr(root, end - 1) + 1
        if hi - lo != end - start:
            raise AddressError(f"range {start:#x}-{end:#x} crosses the non-canonical hole")
    return lo, hi


def _iter_leaves(
    mem: PhysMem, fmt: SpteFormat, root: Root, lo: int, hi: int, segments: bool
) -> Iterator[Union[LeafRun, Unreadable]]:
    level = root_start_level(root)
    if level != PT32E_ROOT_LEVEL:
        yield from _leaves_in(
            mem, fmt, root, root.hpa & fmt.base_addr_mask, level, 0, lo, hi, segments
        )
        return
    if root.pae_root_hpa is None:
        return
    try:
        data = mem.read(root.pae_root_hpa, 32)
    except PhysMemError as e:
        yield Unreadable(level, root.pae_root_hpa, 0, 1 << 32, str(e))
        return
    for i, entry in enumerate(np.frombuffer(data, dtype=_U64).tolist()):
        base = i << 30
        table = entry & fmt.base_addr_mask
        if base + (1 << 30) <= lo or base >= hi:
            continue
        if entry & PT_PRESENT_MASK and entry != (1 << 64) - 1 and table:
            yield from _leaves_in(mem, fmt, root, table, level - 1, base, lo, hi, segments)


def _leaves_in(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    table: int,
    level: int,
    base: int,
    lo: int,
    hi: int,
    segments: bool,
) -> Iterator[Union[LeafRun, Unreadable]]:
    shift = level_shift(level)
    size = 1 << shift
    first = max(0, (lo - base) >> shift) if lo > base else 0
    last = min(ENTRIES_PER_TABLE, ((hi - 1 - base) >> shift) + 1)
    try:
        entries = np.frombuffer(mem.read(table, PAGE_SIZE), dtype=_U64)
    except PhysMemError as e:
        yield Unreadable(level, table, canonical(root, base), size * ENTRIES_PER_TABLE, str(e))
        return
    present, leaf = classify_table(fmt, entries, level)
    if first or last < ENTRIES_PER_TABLE:
        window = np.zeros(ENTRIES_PER_TABLE, dtype=bool)
        window[first:last] = True
        present &= window
        leaf &= window
    cbase = canonical(root, base)
    if level == 1:
        index = np.flatnonzero(leaf)
        if index.size:
            yield LeafRun(level, table, cbase, index, entries[index])
        return
    children = np.flatnonzero(present & ~leaf).tolist()
    leaves = np.flatnonzero(leaf)
    # Page tables under a level-2 table are read and tested together: one
    # numpy pass for all of them instead of one per table page.
    batch = (
        _page_tables(mem, fmt, root, entries, children, base, lo, hi, segments)
        if level == 2
        else {}
    )
    done = 0
    for child in children:
        # The leaves before this child come first, in address order.
        cut = int(np.searchsorted(leaves, child))
        if cut > done:
            index = leaves[done:cut]
            yield LeafRun(level, table, cbase, index, entries[index])
            done = cut
        run = batch.get(child)
        if run is not None:
            if len(run.indexes):
                yield run
            continue
        yield from _leaves_in(
            mem,
            fmt,
            root,
            int(entries[child]) & fmt.base_addr_mask,
            level - 1,
            base + child * size,
            lo,
            hi,
            segments,
        )
    if leaves.size > done:
        index = leaves[done:]
        yield LeafRun(level, table, cbase, index, entries[index])


def _page_tables(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    entries: "np.ndarray[Any, Any]",
    children: List[int],
    base: int,
    lo: int,
    hi: int,
    segments: bool,
) -> Dict[int, LeafRun]:
    """The leaves of the level-1 tables that ``children`` of a level-2 table
    point to, for those that lie wholly inside ``[lo, hi)`` and can be read:
    entry index -> its LeafRun (maybe empty).  The others are left to the
    one-table path (range edges, unreadable pages)."""
    span = level_size(2)
    inside = [c for c in children if base + c * span >= lo and base + (c + 1) * span <= hi]
    if len(inside) < 2:
        return {}
    tables = (entries[inside] & np.uint64(fmt.base_addr_mask)).tolist()
    data, kept = [], []
    for child, table in zip(inside, tables):
        try:
            data.append(mem.read(table, PAGE_SIZE))
        except PhysMemError:
            continue
        kept.append((child, table))
    if not kept:
        return {}
    pages = np.frombuffer(b"".join(data), dtype=_U64).reshape(len(kept), ENTRIES_PER_TABLE)
    leaf = classify_table(fmt, pages, 1)[1]
    rows, cols = np.nonzero(leaf)
    sptes = pages[rows, cols]
    ends = np.cumsum(np.count_nonzero(leaf, axis=1)).tolist()
    cuts = _segment_starts(kept, rows, cols, sptes, ends) if segments else None
    out = {}
    start = 0
    for (child, table), end in zip(kept, ends):
        segs = None
        if cuts is not None:
            pos, first_idx, first_spte = cuts
            a, b = bisect_left(pos, start), bisect_left(pos, end)
            nxt = pos[a + 1 : b] + [end]
            segs = [(first_idx[k], nxt[k - a] - pos[k], first_spte[k]) for k in range(a, b)]
        out[child] = LeafRun(
            1, table, canonical(root, base + child * span), cols[start:end], sptes[start:end], segs
        )
        start = end
    return out


def _segment_starts(
    kept: List[Tuple[int, int]],
    rows: "np.ndarray[Any, Any]",
    cols: "np.ndarray[Any, Any]",
    sptes: "np.ndarray[Any, Any]",
    ends: List[int],
) -> Tuple[List[int], List[int], List[int]]:
    """Where, in a batch of page tables' leaves (in address order), a leaf
    does not continue the previous one: not the next 4K of address, or not
    the next host page with the same attributes (``spte - address`` changes).
    Every table's first leaf starts one too.  Positions, and the entry index
    and SPTE of the leaf at each."""
    page = (np.array([child for child, _ in kept], dtype=np.int64)[rows] << 9) + cols
    pos = np.union1d(split_starts(page, sptes, 12), np.array([0, *ends[:-1]], dtype=np.int64))
    pos = pos[pos < len(cols)]
    return pos.tolist(), cols[pos].tolist(), sptes[pos].tolist()


def count_table_leaves(mem: PhysMem, fmt: SpteFormat, table: int, level: int) -> int:
    """The number of leaf SPTEs in one table page at ``level``.

    :raises PhysMemError: the page cannot be read
    """
    entries = np.frombuffer(mem.read(table, PAGE_SIZE), dtype=_U64)
    return int(np.count_nonzero(classify_table(fmt, entries, level)[1]))


# -- --map: leaves merged into ranges ---------------------------------------


def split_starts(
    pos: "np.ndarray[Any, Any]", sptes: "np.ndarray[Any, Any]", shift: int
) -> "np.ndarray[Any, Any]":
    """Where, in leaves in address order, a leaf does not continue the one
    before it: its position (address >> ``shift``) is not the next one, or it
    is not the next host page with the same attribute bits.  Both tests are
    one comparison each: leaf ``i`` continues leaf ``i-1``'s host page and
    attributes exactly when ``spte - pos << shift`` is the same for both (the
    address field only ever grows by the page size).  Indexes, 0 first.
    """
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64)
    key = sptes - (pos.astype(_U64) << np.uint64(shift))
    brk = np.flatnonzero((key[1:] != key[:-1]) | ((pos[1:] - pos[:-1]) != 1)) + 1
    return np.concatenate((np.zeros(1, dtype=np.int64), brk.astype(np.int64)))


class MapRange(NamedTuple):
    """Leaves of one level, contiguous in address and in HPA, with the same
    attribute bits: ``[start, end)`` maps to ``hpa``."""

    start: int
    end: int  # exclusive
    hpa: int
    level: int
    spte: int  # of the range's first leaf
    table: int  # HPA of the table page of the range's first leaf


def run_segments(run: LeafRun, fmt: SpteFormat) -> List[MapRange]:
    """``run`` cut where :func:`split_starts` says; ranges of one table page."""
    shift = level_shift(run.level)
    mask = fmt.base_addr_mask & ~((1 << shift) - 1)
    if run.segments is not None:  # computed for a whole batch of tables
        triples = run.segments
    else:
        starts = split_starts(run.indexes, run.sptes, shift)
        ends = [*starts[1:].tolist(), len(run.indexes)]
        triples = [
            (i, e - st, v)
            for i, v, st, e in zip(
                run.indexes[starts].tolist(), run.sptes[starts].tolist(), starts.tolist(), ends
            )
        ]
    return [
        MapRange(
            run.base + (i << shift),
            run.base + ((i + n) << shift),
            v & mask,
            run.level,
            v,
            run.table,
        )
        for i, n, v in triples
    ]


class RangeMerger:
    """Joins consecutive segments into ranges of one level and one set of
    flags, contiguous in address and in HPA (like arm64's stage-2 dump)."""

    def __init__(self, fmt: SpteFormat) -> None:
        self.fmt = fmt
        self.attr_mask = ((1 << 64) - 1) ^ fmt.base_addr_mask
        self._flags: Dict[Tuple[int, int], Tuple[str, ...]] = {}
        self.pending: Optional[MapRange] = None

    def _flag_set(self, level: int, spte: int) -> Tuple[str, ...]:
        key = (level, spte & self.attr_mask)
        got = self._flags.get(key)
        if got is None:
            got = self._flags[key] = tuple(decode_spte(self.fmt, spte, level).flags)
        return got

    def add(self, seg: MapRange) -> Optional[MapRange]:
        """Feed one segment; returns a range once it is complete."""
        p = self.pending
        if (
            p is not None
            and p.end == seg.start
            and p.level == seg.level
            and p.hpa + (p.end - p.start) == seg.hpa
            and self._flag_set(p.level, p.spte) == self._flag_set(seg.level, seg.spte)
        ):
            self.pending = p._replace(end=seg.end)
            return None
        self.pending = seg
        return p

    def flush(self) -> Optional[MapRange]:
        p, self.pending = self.pending, None
        return p


def iter_ranges(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    start: int = 0,
    end: Optional[int] = None,
    *,
    per_table: bool = False,
    on_run: Optional[Callable[[LeafRun], None]] = None,
) -> Iterator[Union[MapRange, Unreadable]]:
    """The ranges ``--map`` prints for ``root``: its leaves (as
    :func:`iter_leaves` gives them, within ``[start, end)``) merged by
    :class:`RangeMerger`, in address order, with the table pages that could
    not be read in their place.

    :param per_table: ranges stop at table pages (``--annotate``: one
        ``struct kvm_mmu_page`` per range)
    :param on_run: called with each leaf run as it is read (progress)
    :raises AddressError: the range is beyond what the root translates
    """
    runs = iter_leaves(mem, fmt, root, start, end, segments=not per_table)
    return _ranges(runs, fmt, per_table, on_run)


def _ranges(
    runs: Iterator[Union[LeafRun, Unreadable]],
    fmt: SpteFormat,
    per_table: bool,
    on_run: Optional[Callable[[LeafRun], None]],
) -> Iterator[Union[MapRange, Unreadable]]:
    merger = RangeMerger(fmt)
    table = None
    for run in runs:
        if isinstance(run, Unreadable):
            yield run
            continue
        if on_run is not None:
            on_run(run)
        if per_table and run.table != table:
            done = merger.flush()
            if done is not None:
                yield done
            table = run.table
        for seg in run_segments(run, fmt):
            done = merger.add(seg)
            if done is not None:
                yield done
    last = merger.flush()
    if last is not None:
        yield last
