# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every leaf SPTE under a root, in address order, a table page at a time.

The whole-table views (--dump, --map, --stats) need every leaf, not one
address: this module descends the tables the way :func:`~drgn_kvmwalk.walk.walk_addr`
does (same special PAE roots, only present non-last SPTEs lead down), but
reads each table page once and tests its 512 entries at once with numpy; the
page tables under one page directory are read and tested as one block.  It
gives the leaves (:func:`iter_leaves`), their counts (:func:`count_leaves`)
and the ranges ``--map`` merges them into (:func:`iter_ranges`,
:func:`iter_range_blocks`).  It is a module of its own so that a single
``--addr`` walk does not pay for importing numpy.

Nothing here imports drgn.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .spte import (
    ENTRIES_PER_TABLE,
    PAGE_SIZE,
    PT_PAGE_SIZE_MASK,
    SpteFormat,
    decode_spte,
    level_shift,
    level_size,
)
from .walk import (
    MAX_TABLES,
    PT32E_ROOT_LEVEL,
    AddressError,
    PhysMem,
    PhysMemError,
    Root,
    addr_bits,
    check_addr,
    placer,
    root_start_level,
)

__all__ = [
    "LeafColumns",
    "LeafRun",
    "MapRange",
    "MapRanges",
    "RangeMerger",
    "iter_range_blocks",
    "iter_ranges",
    "run_segments",
    "split_starts",
    "Unreadable",
    "canonical",
    "classify_table",
    "count_leaves",
    "count_table_leaves",
    "iter_leaf_columns",
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


class LeafColumns(NamedTuple):
    """Leaf SPTEs of one level in address order, as uint64 numpy columns:
    what --dump prints, for many table pages at once."""

    level: int
    addrs: "np.ndarray[Any, Any]"
    spteps: "np.ndarray[Any, Any]"
    sptes: "np.ndarray[Any, Any]"
    hpas: "np.ndarray[Any, Any]"

    @classmethod
    def of_run(cls, run: LeafRun, fmt: SpteFormat) -> "LeafColumns":
        return cls(run.level, run.addrs(), run.spteps(), run.sptes, run.hpas(fmt))


class Unreadable(NamedTuple):
    """A table page the walk did not descend into; what it maps is unknown.

    ``kind`` says why: ``"unreadable"``, it could not be read (``error`` says
    what the reader said); ``"repeated"``, the walk reached it a second time
    where KVM never puts one table page twice (a corrupt table: it is not
    walked again); ``"budget"``, the walk stopped there because it had read
    ``max_tables`` table pages under the root (``base`` and ``size`` then
    cover the rest of the range asked for, ``table`` is the page it did not
    read).
    """

    level: int
    table: int
    base: int
    size: int  # bytes of address space the page translates
    error: str
    kind: str = "unreadable"


def classify_table(
    fmt: SpteFormat, entries: "np.ndarray[Any, Any]", level: int
) -> Tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]:
    """Vector form of :func:`~drgn_kvmwalk.spte.decode_spte`'s present and
    leaf tests over a table's entries: ``(present, leaf)`` boolean arrays.
    Present is is_shadow_present_pte(): the MMU-present bit since v5.13
    (whatever else the SPTE holds, as KVM's walks decide); before, any
    non-zero entry that is neither MMIO nor REMOVED_SPTE."""
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


def _top_runs(
    root: Root,
    level: int,
    table: int,
    base: int,
    index: "np.ndarray[Any, Any]",
    sptes: "np.ndarray[Any, Any]",
) -> Iterator[LeafRun]:
    """The :class:`LeafRun` of leaves ``index`` of a table page whose entry 0
    translates raw address ``base``.  The top table of a 4- or 5-level GVA
    root spans the non-canonical hole: its upper half gets a run of its own,
    whose base is such that ``base + i * size`` (mod 2**64) is entry ``i``'s
    canonical address (KVM makes no leaf there, but a corrupt table can)."""
    cbase = canonical(root, base)
    if level >= 4 and not root.direct and index.size and int(index[-1]) >= _HALF:
        shift = level_shift(level)
        upper = canonical(root, base + (_HALF << shift)) - (_HALF << shift)
        if upper != cbase:
            cut = int(np.searchsorted(index, _HALF))
            if cut:
                yield LeafRun(level, table, cbase, index[:cut], sptes[:cut])
            yield LeafRun(level, table, upper & _MASK64, index[cut:], sptes[cut:])
            return
    yield LeafRun(level, table, cbase, index, sptes)


_HALF = ENTRIES_PER_TABLE // 2
_MASK64 = (1 << 64) - 1


class _OverBudget(Exception):
    def __init__(self, table: int, level: int, base: int) -> None:
        self.table, self.level, self.base = table, level, base


class _Reads:
    """The table pages a walk has read under one root.

    Under a direct (TDP) root KVM never links one table page twice: a page
    reached again is corruption, reported, and not walked again.  Under
    shadow paging one shadow page may have several parents, always at its
    own role.level: a page reached again at another level is corruption (a
    cycle is always so: it comes back to a page at a lower level), one
    reached again at the same level is walked again.  At most ``limit``
    pages are read."""

    __slots__ = ("root", "top", "direct", "levels", "left", "limit", "place")

    def __init__(
        self, root: Root, limit: int, place: Optional[Callable[[int, int, int, int], None]] = None
    ) -> None:
        self.root = root
        self.top = root_start_level(root)
        self.direct = root.direct
        self.levels: Dict[int, int] = {}
        self.left = limit
        self.limit = limit
        self.place = place  # a ReadWatch's: where each page read sits

    def take(self, table: int, level: int, base: int) -> Optional[str]:
        """None when the page is to be read now (it is counted), else why
        not (the text of an :class:`Unreadable` of kind ``repeated``).

        :raises _OverBudget: ``limit`` pages are read already
        """
        seen = self.levels.get(table)
        if seen is not None and (self.direct or seen != level):
            if self.direct:
                return (
                    "reached a second time: KVM never links a TDP table page twice, "
                    "the tables are corrupt; not walked again"
                )
            return (
                f"reached again at level {level}, first at level {seen}: a shadow page "
                "has one level, the tables are corrupt; not walked again"
            )
        if self.left <= 0:
            raise _OverBudget(table, level, base)
        self.left -= 1
        if seen is None:
            self.levels[table] = level
        if self.place is not None:
            if level == self.top:  # the root's own table: every address
                self.place(table, level, 0, 1 << 64)
            else:
                start = canonical(self.root, base)
                self.place(table, level, start, start + (level_size(level) << 9))
        return None


class _PageTables(NamedTuple):
    """Page tables (level 1) under one level-2 table, next to each other in
    address order (no leaf of the level-2 table between them), read and
    tested together: one numpy pass for all of them."""

    base: int  # raw address that entry 0 of the level-2 table translates
    children: "np.ndarray[Any, Any]"  # their entry indexes there (int64)
    tables: List[int]  # their HPAs
    pages: "np.ndarray[Any, Any]"  # (n, 512) entries
    leaf: "np.ndarray[Any, Any]"  # (n, 512) bool

    def leaves(self) -> int:
        return int(np.count_nonzero(self.leaf))

    def columns(self, root: Root, fmt: SpteFormat) -> LeafColumns:
        """Every leaf of the block, in address order, as columns."""
        leaf = self.leaf.reshape(-1)
        if leaf.all():  # page tables full of leaves: no gather
            sptes = self.pages.reshape(-1)
            rows = np.repeat(np.arange(len(self.tables)), ENTRIES_PER_TABLE)
            index = np.tile(np.arange(ENTRIES_PER_TABLE, dtype=np.int64), len(self.tables))
        else:
            pos = np.flatnonzero(leaf)
            sptes = self.pages.reshape(-1)[pos]
            rows, index = pos >> 9, pos & (ENTRIES_PER_TABLE - 1)
        page = ((self.children[rows] << 9) + index).astype(_U64)
        tables = np.array(self.tables, dtype=_U64)[rows]
        return LeafColumns(
            1,
            np.uint64(canonical(root, self.base)) + (page << np.uint64(12)),
            tables + (index.astype(_U64) << np.uint64(3)),
            sptes,
            sptes & np.uint64(fmt.base_addr_mask & ~(PAGE_SIZE - 1)),
        )

    def runs(self, root: Root) -> Iterator[LeafRun]:
        """One :class:`LeafRun` per page table that has leaves."""
        span = level_size(2)
        every = np.arange(ENTRIES_PER_TABLE)
        counts = np.count_nonzero(self.leaf, axis=1).tolist()
        for row, (child, table, n) in enumerate(zip(self.children.tolist(), self.tables, counts)):
            if not n:
                continue
            base = canonical(root, self.base + child * span)
            if n == ENTRIES_PER_TABLE:
                yield LeafRun(1, table, base, every, self.pages[row])
            else:
                index = np.flatnonzero(self.leaf[row])
                yield LeafRun(1, table, base, index, self.pages[row][index])

    def ranges(self, root: Root, fmt: SpteFormat) -> "MapRanges":
        """The leaves cut where :func:`split_starts`'s rule cuts them, across
        the page tables: contiguous in address and host page, same attribute
        bits (the rule applied to the matrices as they are, with no gather)."""
        # Flat over the block.  Leaf k continues leaf k-1 when both are
        # leaves, the next SPTE is 4096 more (next host page, same attribute
        # bits: split_starts()'s test, with no gather) and they are
        # neighbours: in one page table, or at the edge of two tables whose
        # entries in the level-2 table are neighbours.
        leaf = self.leaf.reshape(-1)
        sptes = self.pages.reshape(-1)
        cont = np.zeros(len(leaf), dtype=bool)
        cont[1:] = (sptes[1:] - sptes[:-1]) == np.uint64(PAGE_SIZE)
        if len(self.children) > 1:
            gap = np.flatnonzero(np.diff(self.children) != 1) + 1
            cont[gap * ENTRIES_PER_TABLE] = False
        cont[1:] &= leaf[:-1]
        cont &= leaf
        starts = np.flatnonzero(leaf & ~cont)
        last = np.ones(len(leaf), dtype=bool)
        last[:-1] = ~cont[1:]
        ends = np.flatnonzero(leaf & last)
        rows = starts >> 9
        page = (self.children[rows] << 9) + (starts & (ENTRIES_PER_TABLE - 1))
        first = sptes[starts]
        return MapRanges(
            1,
            np.uint64(canonical(root, self.base)) + (page.astype(_U64) << np.uint64(12)),
            (ends - starts + 1).astype(_U64),
            first & np.uint64(fmt.base_addr_mask & ~(PAGE_SIZE - 1)),
            first,
            np.array(self.tables, dtype=_U64)[rows],
        )


_Item = Union[LeafRun, Unreadable, _PageTables]


# Called with (table HPA, level, canonical address its entry 0 translates,
# its 512 entries) for every table page the walk reads, before its leaves.
OnTable = Callable[[int, int, int, "np.ndarray[Any, Any]"], None]


def iter_leaf_columns(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    start: int = 0,
    end: Optional[int] = None,
    on_table: Optional[OnTable] = None,
    *,
    max_tables: int = MAX_TABLES,
) -> Iterator[Union[LeafColumns, Unreadable]]:
    """The leaves of :func:`iter_leaves`, as :class:`LeafColumns` (the page
    tables under one page directory in one piece): for renderers that make
    many lines at once.  ``on_table``, when given, sees every table page
    read (not ``pae_root``, which is no table page of KVM's).

    :raises AddressError: the range is outside what the root translates
    """
    lo, hi = _raw_range(root, start, end)
    return _leaf_columns(_walk(mem, fmt, root, lo, hi, on_table, max_tables), fmt, root)


def _leaf_columns(
    items: Iterator[_Item], fmt: SpteFormat, root: Root
) -> Iterator[Union[LeafColumns, Unreadable]]:
    for item in items:
        if isinstance(item, _PageTables):
            if item.leaves():
                yield item.columns(root, fmt)
        elif isinstance(item, LeafRun):
            yield LeafColumns.of_run(item, fmt)
        else:
            yield item


def iter_leaves(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    start: int = 0,
    end: Optional[int] = None,
    *,
    max_tables: int = MAX_TABLES,
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

    :raises AddressError: the range is outside what the root translates
        (raised at once, before any table is read)
    """
    lo, hi = _raw_range(root, start, end)
    return _runs(_walk(mem, fmt, root, lo, hi, None, max_tables), root)


def _runs(items: Iterator[_Item], root: Root) -> Iterator[Union[LeafRun, Unreadable]]:
    for item in items:
        if isinstance(item, _PageTables):
            yield from item.runs(root)
        else:
            yield item


def count_leaves(
    mem: PhysMem, fmt: SpteFormat, root: Root, *, max_tables: int = MAX_TABLES
) -> Tuple[Dict[int, int], List[Unreadable]]:
    """The number of leaf SPTEs under ``root`` per level, and the table pages
    that could not be read; the same leaves :func:`iter_leaves` gives."""
    counts: Dict[int, int] = {}
    unreadable: List[Unreadable] = []
    for item in _walk(mem, fmt, root, *_raw_range(root, 0, None), None, max_tables):
        if isinstance(item, Unreadable):
            unreadable.append(item)
            continue
        level, n = (
            (1, item.leaves()) if isinstance(item, _PageTables) else (item.level, len(item.indexes))
        )
        if n:
            counts[level] = counts.get(level, 0) + n
    return counts, unreadable


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


def _walk(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    lo: int,
    hi: int,
    on_table: Optional[OnTable] = None,
    max_tables: int = MAX_TABLES,
) -> Iterator[_Item]:
    reads = _Reads(root, max_tables, placer(mem))
    try:
        yield from _walk_root(mem, fmt, root, lo, hi, on_table, reads)
    except _OverBudget as e:
        start = max(lo, e.base)
        yield Unreadable(
            e.level,
            e.table,
            canonical(root, start),
            hi - start,
            f"stopped after {reads.limit} table pages under this root (--max-tables "
            f"{reads.limit}); raise --max-tables to read the rest",
            "budget",
        )


def _walk_root(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    lo: int,
    hi: int,
    on_table: Optional[OnTable],
    reads: _Reads,
) -> Iterator[_Item]:
    level = root_start_level(root)
    if level != PT32E_ROOT_LEVEL:
        yield from _leaves_in(
            mem, fmt, root, root.hpa & fmt.base_addr_mask, level, 0, lo, hi, on_table, reads
        )
        return
    if root.pae_root_hpa is None:
        return
    try:
        data = mem.read(root.pae_root_hpa, 32)
        if reads.place is not None:
            reads.place(root.pae_root_hpa, level, 0, 1 << 64)
    except PhysMemError as e:
        yield Unreadable(level, root.pae_root_hpa, 0, 1 << 32, str(e))
        return
    for i, entry in enumerate(np.frombuffer(data, dtype=_U64).tolist()):
        base = i << 30
        table = entry & fmt.base_addr_mask
        if base + (1 << 30) <= lo or base >= hi:
            continue
        if table:  # as shadow_walk_init_using_root(): its address bits alone
            yield from _leaves_in(mem, fmt, root, table, level - 1, base, lo, hi, on_table, reads)


def _leaves_in(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    table: int,
    level: int,
    base: int,
    lo: int,
    hi: int,
    on_table: Optional[OnTable],
    reads: _Reads,
) -> Iterator[_Item]:
    shift = level_shift(level)
    size = 1 << shift
    first = max(0, (lo - base) >> shift) if lo > base else 0
    last = min(ENTRIES_PER_TABLE, ((hi - 1 - base) >> shift) + 1)
    cbase = canonical(root, base)
    repeated = reads.take(table, level, base)
    if repeated is not None:
        yield Unreadable(level, table, cbase, size * ENTRIES_PER_TABLE, repeated, "repeated")
        return
    try:
        entries = np.frombuffer(mem.read(table, PAGE_SIZE), dtype=_U64)
    except PhysMemError as e:
        yield Unreadable(level, table, cbase, size * ENTRIES_PER_TABLE, str(e))
        return
    if on_table is not None:
        on_table(table, level, cbase, entries)
    present, leaf = classify_table(fmt, entries, level)
    if first or last < ENTRIES_PER_TABLE:
        window = np.zeros(ENTRIES_PER_TABLE, dtype=bool)
        window[first:last] = True
        present &= window
        leaf &= window
    if level == 1:
        index = np.flatnonzero(leaf)
        if index.size:
            yield LeafRun(level, table, cbase, index, entries[index])
        return
    children = np.flatnonzero(present & ~leaf)
    leaves = np.flatnonzero(leaf)
    if level == 2 and len(children) >= 2:
        yield from _level2(
            mem, fmt, root, table, entries, children, leaves, base, lo, hi, on_table, reads
        )
        return
    done = 0
    for child in children.tolist():
        # The leaves before this child come first, in address order.
        cut = int(np.searchsorted(leaves, child))
        if cut > done:
            index = leaves[done:cut]
            yield from _top_runs(root, level, table, base, index, entries[index])
            done = cut
        yield from _leaves_in(
            mem,
            fmt,
            root,
            int(entries[child]) & fmt.base_addr_mask,
            level - 1,
            base + child * size,
            lo,
            hi,
            on_table,
            reads,
        )
    if leaves.size > done:
        index = leaves[done:]
        yield from _top_runs(root, level, table, base, index, entries[index])


def _level2(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    table: int,
    entries: "np.ndarray[Any, Any]",
    children: "np.ndarray[Any, Any]",
    leaves: "np.ndarray[Any, Any]",
    base: int,
    lo: int,
    hi: int,
    on_table: Optional[OnTable],
    reads: _Reads,
) -> Iterator[_Item]:
    """A level-2 table's page tables and leaves, in address order.  The page
    tables that lie wholly inside ``[lo, hi)`` and can be read are read first
    and tested in one pass, then given as :class:`_PageTables` blocks cut at
    the 2M leaves between them; the others go the one-table way (range
    edges) or are given as :class:`Unreadable` in their place."""
    span = level_size(2)
    cbase = canonical(root, base)
    kids = children.tolist()
    tables = (entries[children] & np.uint64(fmt.base_addr_mask)).tolist()
    data: List[bytes] = []
    # Per child: None, read into data; True, a range edge (one-table way);
    # else the Unreadable given in its place.
    state: List[Union[None, bool, Unreadable]] = []
    pages = leaf = np.zeros((0, ENTRIES_PER_TABLE), dtype=_U64)
    # Near the end of the budget, the one-table way: it stops exactly where
    # the walk in address order reaches the budget.
    one_by_one = reads.left < len(kids)
    for child, hpa in zip(kids, tables):
        start = base + child * span
        if one_by_one or start < lo or start + span > hi:
            state.append(True)
            continue
        repeated = reads.take(hpa, 1, start)
        if repeated is not None:
            state.append(Unreadable(1, hpa, canonical(root, start), span, repeated, "repeated"))
            continue
        try:
            data.append(mem.read(hpa, PAGE_SIZE))
        except PhysMemError as e:
            state.append(Unreadable(1, hpa, canonical(root, start), span, str(e)))
            continue
        state.append(None)
    if data:
        pages = np.frombuffer(b"".join(data), dtype=_U64).reshape(len(data), ENTRIES_PER_TABLE)
        leaf = classify_table(fmt, pages, 1)[1]
        if on_table is not None:
            readable = [(c, t) for c, t, st in zip(kids, tables, state) if st is None]
            for row, (child, hpa) in enumerate(readable):
                on_table(hpa, 1, canonical(root, base + child * span), pages[row])
    before = np.searchsorted(leaves, children).tolist()  # leaves before each child
    done = row = k = 0
    while k < len(kids):
        cut = before[k]
        if cut > done:
            index = leaves[done:cut]
            yield LeafRun(2, table, cbase, index, entries[index])
            done = cut
        st = state[k]
        if st is True:
            yield from _leaves_in(
                mem, fmt, root, tables[k], 1, base + kids[k] * span, lo, hi, on_table, reads
            )
            k += 1
            continue
        if isinstance(st, Unreadable):
            yield st
            k += 1
            continue
        j = k + 1
        while j < len(kids) and state[j] is None and before[j] == cut:
            j += 1
        n = j - k
        yield _PageTables(
            base, children[k:j], tables[k:j], pages[row : row + n], leaf[row : row + n]
        )
        row += n
        k = j
    if leaves.size > done:
        index = leaves[done:]
        yield LeafRun(2, table, cbase, index, entries[index])


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
    key = sptes - (pos.astype(_U64, copy=False) << np.uint64(shift))
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


class MapRanges(NamedTuple):
    """Ranges of one level in address order, as uint64 numpy columns: row
    ``i`` is ``MapRange(start[i], start[i] + pages[i] * level_size(level),
    hpa[i], level, spte[i], table[i])``."""

    level: int
    start: "np.ndarray[Any, Any]"
    pages: "np.ndarray[Any, Any]"  # of level_size(level) each
    hpa: "np.ndarray[Any, Any]"
    spte: "np.ndarray[Any, Any]"  # of each range's first leaf
    table: "np.ndarray[Any, Any]"  # HPA of the table page of the first leaf

    def ends(self) -> List[int]:
        """Each range's end (exclusive), as Python ints: the last may be 2**64."""
        shift = level_shift(self.level)
        return [s + (n << shift) for s, n in zip(self.start.tolist(), self.pages.tolist())]

    def ranges(self) -> List[MapRange]:
        return [
            MapRange(s, e, h, self.level, v, t)
            for s, e, h, v, t in zip(
                self.start.tolist(),
                self.ends(),
                self.hpa.tolist(),
                self.spte.tolist(),
                self.table.tolist(),
            )
        ]

    def rows(self, keep: "Union[np.ndarray[Any, Any], slice]") -> "MapRanges":
        """The ranges at ``keep`` (an index array or a slice)."""
        return MapRanges(
            self.level,
            self.start[keep],
            self.pages[keep],
            self.hpa[keep],
            self.spte[keep],
            self.table[keep],
        )


def _run_ranges(run: LeafRun, fmt: SpteFormat) -> MapRanges:
    shift = level_shift(run.level)
    starts = split_starts(run.indexes, run.sptes, shift)
    first = run.sptes[starts]
    return MapRanges(
        run.level,
        np.uint64(run.base) + (run.indexes[starts].astype(_U64) << np.uint64(shift)),
        np.diff(starts, append=len(run.indexes)).astype(_U64),
        first & np.uint64(fmt.base_addr_mask & ~((1 << shift) - 1)),
        first,
        np.full(len(starts), run.table, dtype=_U64),
    )


def run_segments(run: LeafRun, fmt: SpteFormat) -> List[MapRange]:
    """``run`` cut where :func:`split_starts` says; ranges of one table page."""
    return _run_ranges(run, fmt).ranges()


class _BlockMerger:
    """:class:`RangeMerger`'s joins over :class:`MapRanges` blocks: a range
    joins the one before it when it starts where that one ends, its HPA
    follows, and its flags are the same; the last range of a block waits for
    the next block."""

    def __init__(self, fmt: SpteFormat) -> None:
        self.fmt = fmt
        self.attr_mask = np.uint64(((1 << 64) - 1) ^ fmt.base_addr_mask)
        self._classes: Dict[Tuple[int, int], int] = {}  # (level, attr bits) -> flag class
        self._by_flags: Dict[Tuple[str, ...], int] = {}
        self.pending: Optional[MapRanges] = None

    def _flag_classes(self, block: MapRanges) -> "np.ndarray[Any, Any]":
        """A number per range, the same for ranges whose flags are the same."""
        attrs = block.spte & self.attr_mask
        cuts = np.concatenate(([0], np.flatnonzero(attrs[1:] != attrs[:-1]) + 1))
        seq = []
        for attr, spte in zip(attrs[cuts].tolist(), block.spte[cuts].tolist()):
            key = (block.level, attr)
            got = self._classes.get(key)
            if got is None:
                flags = tuple(decode_spte(self.fmt, spte, block.level).flags)
                got = self._classes[key] = self._by_flags.setdefault(flags, len(self._by_flags))
            seq.append(got)
        return np.repeat(np.array(seq, dtype=np.int64), np.diff(cuts, append=len(attrs)))

    def add(self, block: MapRanges) -> List[MapRanges]:
        """Feed a block; returns the ranges that are complete."""
        out = []
        p = self.pending
        if p is not None and p.level != block.level:
            out.append(p)
        elif p is not None:
            block = _concat([p, block])
        if not len(block.start):
            self.pending = None if p is None or out else p
            return out
        size = np.uint64(level_size(block.level))
        ends = block.start + block.pages * size
        classes = self._flag_classes(block)
        join = np.zeros(len(block.start), dtype=bool)
        join[1:] = (
            (ends[:-1] == block.start[1:])
            & (block.hpa[:-1] + block.pages[:-1] * size == block.hpa[1:])
            & (classes[:-1] == classes[1:])
        )
        heads = np.flatnonzero(~join)
        pages = np.add.reduceat(block.pages, heads)
        merged = block.rows(heads)._replace(pages=pages)
        self.pending = merged.rows(slice(-1, None))
        out.append(merged.rows(slice(0, -1)))
        return out

    def flush(self) -> Optional[MapRanges]:
        p, self.pending = self.pending, None
        return p


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
    on_leaves: Optional[Callable[[int, int], None]] = None,
    max_tables: int = MAX_TABLES,
) -> Iterator[Union[MapRange, Unreadable]]:
    """The ranges ``--map`` prints for ``root``: its leaves (as
    :func:`iter_leaves` gives them, within ``[start, end)``) merged by
    :class:`RangeMerger`, in address order, with the table pages that could
    not be read in their place.

    :param per_table: ranges stop at table pages (``--annotate``: one
        ``struct kvm_mmu_page`` per range)
    :param on_leaves: called as ``on_leaves(count, address)`` as leaves are
        read (progress): ``count`` leaves from ``address`` on
    :raises AddressError: the range is beyond what the root translates
    """
    lo, hi = _raw_range(root, start, end)
    items = _walk(mem, fmt, root, lo, hi, None, max_tables)
    return _ranges(items, fmt, root, per_table, on_leaves)


def iter_range_blocks(
    mem: PhysMem,
    fmt: SpteFormat,
    root: Root,
    start: int = 0,
    end: Optional[int] = None,
    *,
    on_leaves: Optional[Callable[[int, int], None]] = None,
    max_tables: int = MAX_TABLES,
) -> Iterator[Union[MapRanges, Unreadable]]:
    """The ranges of :func:`iter_ranges`, as :class:`MapRanges` blocks of
    many ranges each (for renderers that make many lines at once).

    :raises AddressError: the range is beyond what the root translates
    """
    lo, hi = _raw_range(root, start, end)
    items = _walk(mem, fmt, root, lo, hi, None, max_tables)
    return _range_blocks(items, fmt, root, on_leaves)


def _range_blocks(
    items: Iterator[_Item],
    fmt: SpteFormat,
    root: Root,
    on_leaves: Optional[Callable[[int, int], None]],
) -> Iterator[Union[MapRanges, Unreadable]]:
    merger = _BlockMerger(fmt)
    gathered: List[MapRanges] = []  # cut ranges of one level, joined together
    count = 0
    ready: List[MapRanges] = []  # joined ranges of one level, not given yet

    def give() -> Iterator[MapRanges]:
        if ready:
            yield _concat(ready) if len(ready) > 1 else ready[0]
            ready.clear()

    def join() -> Iterator[MapRanges]:
        nonlocal count
        count = 0
        if gathered:
            block = _concat(gathered) if len(gathered) > 1 else gathered[0]
            gathered.clear()
            for done in merger.add(block):
                if len(done.start):
                    if ready and ready[0].level != done.level:
                        yield from give()
                    ready.append(done)

    for item in items:
        if isinstance(item, Unreadable):
            yield from join()
            yield from give()
            yield item
            continue
        if isinstance(item, _PageTables):
            if on_leaves is not None:
                on_leaves(item.leaves(), canonical(root, item.base))
            block = item.ranges(root, fmt)
        else:
            if on_leaves is not None:
                on_leaves(len(item.indexes), item.base)
            block = _run_ranges(item, fmt)
        if gathered and gathered[0].level != block.level:
            yield from join()
        gathered.append(block)
        count += len(block.start)
        if count >= _GATHER:
            yield from join()
            yield from give()
    yield from join()
    last = merger.flush()
    if last is not None and len(last.start):
        if ready and ready[0].level != last.level:
            yield from give()
        ready.append(last)
    yield from give()


_GATHER = 4096  # ranges joined and rendered together: fewer, larger numpy passes


def _concat(blocks: List[MapRanges]) -> MapRanges:
    return MapRanges(
        blocks[0].level, *(np.concatenate(cols) for cols in zip(*(b[1:] for b in blocks)))
    )


def _ranges(
    items: Iterator[_Item],
    fmt: SpteFormat,
    root: Root,
    per_table: bool,
    on_leaves: Optional[Callable[[int, int], None]],
) -> Iterator[Union[MapRange, Unreadable]]:
    if not per_table:
        for block in _range_blocks(items, fmt, root, on_leaves):
            if isinstance(block, Unreadable):
                yield block
            else:
                yield from block.ranges()
        return
    merger = RangeMerger(fmt)
    table = None
    for run in _runs(items, root):
        if isinstance(run, Unreadable):
            yield run
            continue
        if on_leaves is not None:
            on_leaves(len(run.indexes), run.base)
        if run.table != table:
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
