# SPDX-License-Identifier: LGPL-2.1-or-later
"""KVM's shadow walk (``for_each_shadow_entry``) over host physical memory.

Mirrors arch/x86/kvm/mmu/mmu.c: ``shadow_walk_init_using_root()`` (root HPA,
root level and the special PAE roots), ``shadow_walk_okay()`` (the index of the
address at each level) and ``__shadow_walk_next()`` (stop at a non-present or
last SPTE).  The walk reads each table page whole (4 KiB, one read) from any
:class:`PhysMem` and decodes it with :mod:`drgn_kvmwalk.spte`.

Nothing here imports drgn: the drgn side supplies a :class:`PhysMem` and a
:class:`Root` (see :mod:`drgn_kvmwalk.mmu`).
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Set, Tuple, cast

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python 3.7
    Protocol = object  # type: ignore[assignment]

from .errors import BadKernelValue
from .spte import (
    PAGE_SIZE,
    SpteFormat,
    SpteInfo,
    decode_spte,
    level_shift,
    level_size,
    spte_index,
    unpack_table,
)

__all__ = [
    "AddressError",
    "MAX_TABLES",
    "PhysMem",
    "PhysMemError",
    "ReadChange",
    "ReadWatch",
    "Root",
    "Step",
    "PT32E_ROOT_LEVEL",
    "ROOT_LEVELS",
    "TableCache",
    "Walk",
    "addr_bits",
    "check_addr",
    "placer",
    "root_start_level",
    "walk_addr",
]

PT32E_ROOT_LEVEL = 3
PT64_ROOT_4LEVEL = 4
# The levels a root can have: PT32_ROOT_LEVEL (2) to PT64_ROOT_5LEVEL (5).
ROOT_LEVELS = (2, 3, 4, 5)

# Table pages the whole-table views read under one root, at most (--max-tables):
# 16 GiB of table pages, which map 8 TiB with 4K leaves.  No real root has as
# many; a corrupt table that repeats its entries could make a walk read far
# more (512**4 pages under a 5-level root).
MAX_TABLES = 1 << 22


class PhysMemError(Exception):
    """Host physical memory at ``address`` could not be read (not in the dump,
    not backed, ...)."""

    def __init__(self, address: int, message: str = "") -> None:
        super().__init__(message or f"cannot read host physical address {address:#x}")
        self.address = address


class AddressError(ValueError):
    """The address is outside what the root can translate."""


class PhysMem(Protocol):
    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of host physical memory; raises :class:`PhysMemError`."""
        ...


class TableCache:
    """Reads table pages through to a :class:`PhysMem`, each page at most once.

    Walks of several addresses share their upper levels; on a live kernel this
    means the walks see one snapshot of each table page.
    """

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        self._tables: Dict[int, Tuple[int, ...]] = {}
        # Walks of many addresses meet the same SPTEs again: each (format,
        # level, value) is decoded once.  SpteInfo records are not changed
        # by their users.
        # Keyed by the format's id (hashing the dataclass costs more than the
        # decode saves); the formats are kept, so that an id stays theirs.
        self._decoded: Dict[Tuple[int, int, int], SpteInfo] = {}
        self._formats: Dict[int, SpteFormat] = {}

    def decode(self, fmt: SpteFormat, spte: int, level: int) -> SpteInfo:
        """:func:`~drgn_kvmwalk.spte.decode_spte`, once per distinct SPTE."""
        key = (id(fmt), level, spte)
        info = self._decoded.get(key)
        if info is None:
            self._formats[id(fmt)] = fmt
            info = self._decoded[key] = decode_spte(fmt, spte, level)
        return info

    def table(self, hpa: int) -> Tuple[int, ...]:
        hpa &= ~(PAGE_SIZE - 1)
        entries = self._tables.get(hpa)
        if entries is None:
            entries = unpack_table(self.mem.read(hpa, PAGE_SIZE))
            self._tables[hpa] = entries
        return entries

    def read(self, address: int, size: int) -> bytes:
        return self.mem.read(address, size)


class ReadChange(NamedTuple):
    """Memory that read differently the second time (:meth:`ReadWatch.recheck`).

    ``places`` are where the walks met it, when they said so
    (:meth:`ReadWatch.place`): ``(level, start, end)``, the addresses under
    the root that the page translates."""

    address: int
    size: int
    places: Tuple[Tuple[int, int, int], ...]
    gone: bool  # the second read failed


class ReadWatch:
    """A :class:`PhysMem` that remembers what each read gave, to read it all
    again after the answer is made: on a live host KVM changes its tables
    while the tool reads them, and a table page that reads the same twice
    is a snapshot the tables really held, while one that changed may mix
    old and new entries.  Only a hash of each read is kept, and where each
    table page sits (about 200 bytes per table page in all).

    The walks of :mod:`drgn_kvmwalk.leaves` tell it where each table page
    sits (:meth:`place`); :func:`placer` finds it under other wrappers."""

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        # What each read gave, as its hash; keyed by the address alone for
        # a table page (the common case: less memory), else (address, size).
        self._reads: Dict[object, int] = {}
        self._changed: Set[object] = set()  # seen to differ while reading
        # Where each table page sits, packed (see _pack); more than one place
        # (a shadow page with several parents) in _more.
        self._places: Dict[int, int] = {}
        self._more: Dict[int, List[int]] = {}

    def read(self, address: int, size: int) -> bytes:
        data = self.mem.read(address, size)
        key: object = address if size == PAGE_SIZE else (address, size)
        h = hash(data)
        first = self._reads.setdefault(key, h)
        if first != h:
            self._changed.add(key)
        return data

    @staticmethod
    def _pack(level: int, start: int, end: int) -> int:
        whole = end >= 1 << 64
        return (start << 4) | (level << 1) | int(whole)

    @staticmethod
    def _unpack(packed: int) -> Tuple[int, int, int]:
        level, start = (packed >> 1) & 7, packed >> 4
        end = 1 << 64 if packed & 1 else start + (level_size(level) << 9)
        return level, start, end

    def place(self, table: int, level: int, start: int, end: int) -> None:
        """The table page at ``table`` translates ``[start, end)`` at ``level``
        (``end`` 2**64 for every address, else ``start`` plus the span of a
        table at ``level``)."""
        packed = self._pack(level, start, end)
        first = self._places.setdefault(table, packed)
        if first != packed:
            more = self._more.setdefault(table, [])
            if len(more) < 7 and packed not in more:
                more.append(packed)

    def _where(self, address: int) -> Tuple[Tuple[int, int, int], ...]:
        for table in (address, address & ~(PAGE_SIZE - 1)):
            if table in self._places:
                packed = [self._places[table], *self._more.get(table, ())]
                return tuple(self._unpack(p) for p in packed)
        return ()

    @property
    def reads(self) -> int:
        """How many distinct reads were made (and are read again by recheck)."""
        return len(self._reads)

    def recheck(self) -> List[ReadChange]:
        """Read everything again, in address order; what differs now (or
        differed between two reads of the walk itself)."""
        changed: List[ReadChange] = []
        keys: List[Tuple[int, int]] = [
            (k, PAGE_SIZE) if isinstance(k, int) else cast(Tuple[int, int], k) for k in self._reads
        ]
        for address, size in sorted(keys):
            key: object = address if size == PAGE_SIZE else (address, size)
            gone = False
            if key not in self._changed:
                try:
                    same = hash(self.mem.read(address, size)) == self._reads[key]
                except PhysMemError:
                    same, gone = False, True
                if same:
                    continue
            changed.append(ReadChange(address, size, self._where(address), gone))
        return changed


def placer(mem: object) -> Optional[Callable[[int, int, int, int], None]]:
    """The :meth:`ReadWatch.place` of ``mem`` or of the memory it wraps
    (its ``mem`` attribute, as :class:`TableCache` keeps it), if any."""
    for _ in range(8):
        place = getattr(mem, "place", None)
        if place is not None:
            return cast(Callable[[int, int, int, int], None], place)
        mem = getattr(mem, "mem", None)
        if mem is None:
            return None
    return None


class Root(NamedTuple):
    """What ``shadow_walk_init_using_root()`` starts from.

    :param hpa: ``mmu->root.hpa`` (or ``root_hpa``)
    :param level: ``mmu->root_role.level`` (or ``shadow_root_level``)
    :param direct: ``mmu->root_role.direct`` (or ``direct_map``): TDP, the root
        translates GPAs; otherwise shadow paging, it translates GVAs
    :param cpu_level: ``mmu->cpu_role.base.level`` (or ``root_level``): the
        guest's paging level (0 paging off, 2 32-bit, 3 PAE, 4, 5)
    :param pae_root_hpa: physical address of ``mmu->pae_root`` if allocated
    """

    hpa: int
    level: int
    direct: bool
    cpu_level: int
    pae_root_hpa: Optional[int] = None


class Step(NamedTuple):
    """One SPTE on the path: the table it is in, where, and what it says.
    (A NamedTuple: a walk makes one per level, and they are made fast.)"""

    level: int
    index: int  # type: ignore[assignment]  # the entry's index (hides tuple.index)
    table: int  # HPA of the table page
    sptep: int  # HPA of the SPTE
    spte: int
    info: SpteInfo
    pae_root: bool = False  # an entry of mmu->pae_root, not of a shadow page

    @property
    def present(self) -> bool:
        return self.info.present

    @property
    def leaf(self) -> bool:
        return self.info.leaf


class Walk(NamedTuple):
    """The result of walking one address.

    ``hpa`` and ``page_size`` are set when a leaf maps the address; otherwise
    ``stop`` says why the walk ended and ``stop_level`` at which level.
    """

    addr: int
    root: Root
    steps: List[Step]
    hpa: Optional[int]
    page_size: Optional[int]
    stop: Optional[str]
    stop_level: Optional[int]


def root_start_level(root: Root) -> int:
    """The level the walk really starts at (``iterator->level`` after init).

    A shadow-paging root of a guest with fewer than 4 levels of paging, under a
    4- or 5-level special root (``pml4_root``/``pml5_root``), is entered
    straight at its PAE level, exactly as shadow_walk_init_using_root() does.
    Since Linux kernel commit 12ec33a70574 ("KVM: X86: Fix when
    shadow_root_level=5 && guest root_level<4") (in v5.16) the test is ">= 4";
    before it was "== 4", which differs only for 5-level roots, and those
    kernels could not build a 5-level special root anyway.

    :raises BadKernelValue: the root's level is none of ROOT_LEVELS (read
        from a corrupt kernel: no walk may start from it)
    """
    level = root.level
    if level not in ROOT_LEVELS:
        raise BadKernelValue("the root's level", level, "a root level (2-5)")
    if level >= PT64_ROOT_4LEVEL and root.cpu_level < PT64_ROOT_4LEVEL and not root.direct:
        level = PT32E_ROOT_LEVEL
    return level


def addr_bits(root: Root) -> int:
    """Number of address bits the root translates (32 for PAE roots)."""
    level = root_start_level(root)
    if level == PT32E_ROOT_LEVEL:
        return 32
    return level_shift(level) + 9


def check_addr(root: Root, addr: int) -> None:
    """Raise :class:`AddressError` unless ``addr`` is something the root translates.

    GPAs (direct roots) must be below ``2**addr_bits``; GVAs of a 64-bit guest
    must be canonical for the root's width (bits above it a sign extension).
    """
    if addr < 0 or addr >= 1 << 64:
        raise AddressError(f"address {addr:#x} is not a 64-bit address")
    bits = addr_bits(root)
    level = root_start_level(root)
    if root.direct or bits == 32:
        if addr < 1 << bits:
            return
        what = "GPA" if root.direct else "GVA"
        raise AddressError(
            f"{what} {addr:#x} is beyond what a {level}-level root translates "
            f"({bits}-bit addresses, up to {(1 << bits) - 1:#x})"
        )
    top = addr >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):
        raise AddressError(
            f"GVA {addr:#x} is not canonical for a {level}-level root "
            f"(bits {bits - 1}-63 must all be equal)"
        )


def _stop_reason(info: SpteInfo) -> str:
    if info.kind == "mmio":
        return f"MMIO SPTE (gfn {info.mmio_gfn:#x}, generation {info.mmio_gen:#x})"
    if info.kind == "frozen":
        return "frozen SPTE (being changed by the TDP MMU)"
    return "SPTE not present"


def walk_addr(mem: TableCache, fmt: SpteFormat, root: Root, addr: int) -> Walk:
    """Walk ``addr`` from ``root`` as ``for_each_shadow_entry`` does.

    :param mem: table pages are read through it
    :param fmt: the kernel's SPTE format
    :param root: from :func:`drgn_kvmwalk.mmu.vcpu_root` or built by hand
    :param addr: GPA (direct root) or GVA (shadow paging)
    :raises AddressError: the root cannot translate ``addr``
    """
    check_addr(root, addr)
    steps: List[Step] = []

    def stopped(reason: str, level: int) -> Walk:
        return Walk(addr, root, steps, None, None, reason, level)

    level = root_start_level(root)
    table = root.hpa & fmt.base_addr_mask
    if level == PT32E_ROOT_LEVEL:
        if root.pae_root_hpa is None:
            return stopped("the MMU has no pae_root", level)
        index = (addr >> 30) & 3
        sptep = root.pae_root_hpa + 8 * index
        try:
            entry = int.from_bytes(mem.read(sptep, 8), "little")
        except PhysMemError as e:
            return stopped(f"pae_root at {e.address:#x} not accessible", level)
        table = entry & fmt.base_addr_mask
        # shadow_walk_init_using_root(): the entry's address bits alone decide
        # (INVALID_PAE_ROOT is 0).
        valid = table != 0
        info = SpteInfo(
            entry,
            level,
            valid,
            False,
            "table" if valid else "none",
            table if valid else None,
            ["P"] if valid else [],
        )
        steps.append(Step(level, index, root.pae_root_hpa, sptep, entry, info, pae_root=True))
        if not valid:
            return stopped(f"PAE root entry {index} is empty", level)
        level -= 1

    while level >= 1:
        index = spte_index(addr, level)
        try:
            entries = mem.table(table)
        except PhysMemError as e:
            return stopped(f"table page at {e.address:#x} not accessible", level)
        spte = entries[index]
        info = mem.decode(fmt, spte, level)
        steps.append(Step(level, index, table, table + 8 * index, spte, info))
        # Stop at a non-present SPTE even where the kernel's own loop did not
        # check (before commit 3e44dce4d0ae ("KVM: X86: Move PTE present check
        # from loop body to __shadow_walk_next()"), v5.16, callers did).
        if not info.present:
            return stopped(_stop_reason(info), level)
        if info.leaf:
            size = level_size(level)
            assert info.hpa is not None
            return Walk(addr, root, steps, info.hpa | (addr & (size - 1)), size, None, None)
        table = spte & fmt.base_addr_mask
        level -= 1
    raise AssertionError("unreachable: level 1 entries are always last")
