# SPDX-License-Identifier: LGPL-2.1-or-later
"""Is KVM's view right?  Every leaf SPTE of a VM against the host's own page
tables and KVM's own books.

The invariants are the ones KVM's MMU notifier contract keeps
(virt/kvm/kvm_main.c ``kvm_mmu_notifier_invalidate_range_start()``, which
zaps for every event; arch/x86/kvm/mmu/spte.c ``make_spte()``, which sets
the host-writable bit only over a writable host mapping).  For every present
leaf SPTE that maps GFN ``g`` at level ``L``:

- a memslot of the page's address space (``role.smm``) holds ``g`` and the
  whole ``L`` page;
- the VMM's page tables (``kvm->mm``) map the memslot's HVA of ``g`` to the
  SPTE's PFN, with a host page at least as large as the SPTE's;
- a writable SPTE, or one with KVM's host-writable bit, lies over a writable
  host PTE, and a writable SPTE over no read-only memslot;

and every table page is KVM's: ``page->private`` names a ``struct
kvm_mmu_page`` whose ``spt`` is that page and whose ``role.level`` is the
level the walk reached it at.  MMIO SPTEs of the current memslot generation
map GFNs that no memslot holds.

Where the leaves come from:

- TDP MMU: every root on ``kvm->arch.tdp_mmu_roots`` (arch/x86/kvm/mmu/
  tdp_mmu.c), walked as :func:`~drgn_kvmwalk.leaves.iter_leaf_columns` walks;
  the GFN is the GPA's;
- legacy (shadow) MMU: every page on ``kvm->arch.active_mmu_pages``, once,
  its GFNs as ``kvm_mmu_page_get_gfn()`` (arch/x86/kvm/mmu/mmu.c) gives
  them; the address shown is the GPA for direct pages and, under shadow
  paging, the GVA of the first root (current, previous, other roots) that
  reaches the page.

Legitimate exceptions are named and counted, not reported as problems: leaves
of invalid roots not yet zapped, leaves inside an invalidation in progress,
guest_memfd memslots (no HVA to compare), stale MMIO SPTEs.

The VMM's page tables are read by this module one table page per read
(:class:`~drgn_kvmwalk.guest.HostPageTables`), whole page tables at once
with numpy; leaves are checked in blocks, never one at a time.
"""

from __future__ import annotations

import functools
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    Union,
    cast,
)

import numpy as np
from drgn import FaultError, Object, Program
from drgn.helpers.linux.mm import pfn_to_page, virt_to_phys

from .errors import BadKernelValue, CorruptList, NoRoot
from .guest import HostPageTables, HostUnmapped
from .kvm import Memslot, for_each_memslot, for_each_vcpu, for_each_vm, vm_pid
from .leaves import Unreadable, classify_table, iter_leaf_columns
from .lists import until_corrupt
from .mmu import (
    DrgnPhysMem,
    ShadowPage,
    for_each_active_mmu_page,
    for_each_tdp_mmu_root,
    to_shadow_page,
)
from .render import unreadable_line
from .spte import (
    ENTRIES_PER_TABLE,
    PAGE_SIZE,
    PT_PAGE_SIZE_MASK,
    PT_WRITABLE_MASK,
    SpteFormat,
    level_shift,
    level_size,
)
from .sptefmt import spte_format
from .views import LabelledRoot, select_roots
from .walk import MAX_TABLES, ROOT_LEVELS, PhysMem, PhysMemError, Root

__all__ = [
    "PROBLEMS",
    "HostColumns",
    "Problem",
    "HpaMapping",
    "HpaSkipped",
    "HpaTable",
    "VerifySummary",
    "find_hpa",
    "verify_vm",
]

_U64 = np.dtype("<u8")
KVM_MEM_READONLY = 1 << 1
_MAX_U64 = (1 << 64) - 1
KVM_MEM_GUEST_MEMFD = 1 << 2  # v6.8

# What ``problem`` says, and what it means.
PROBLEMS = {
    "no_memslot": "the leaf's GFN lies in no memslot of its address space",
    "memslot_edge": "the leaf's page runs past the end of its memslot",
    "readonly_memslot": "a writable SPTE in a read-only memslot (KVM_MEM_READONLY)",
    "host_unmapped": "the VMM's page tables do not map the memslot's HVA",
    "host_unreadable": "the VMM's page tables for the HVA cannot be read",
    "pfn_mismatch": "the host maps the HVA to another page than the SPTE",
    "host_page_smaller": "the host maps the HVA with a smaller page than the SPTE's",
    "writable_over_readonly": "a writable SPTE over a read-only host PTE",
    "host_writable_over_readonly": "KVM's host-writable bit over a read-only host PTE",
    "mmio_in_memslot": "an MMIO SPTE of the current generation for a GFN a memslot holds",
    "table_backpointer": "the table page's struct page does not name a struct "
    "kvm_mmu_page whose spt is this page",
    "table_level": "the table page's struct kvm_mmu_page has another role.level "
    "than the level it was reached at",
    "root_level": "a root's level (role.level, or the vCPU MMU's root level) is "
    "outside 2-5: its tables are not walked",
    "role_level": "a shadow page's role.level is outside 1-5: its entries are not checked",
    "leaf_level": "a leaf SPTE at level 4 or 5, where the page-size bit is reserved "
    "(KVM makes none)",
    "table_repeated": "a table page reached a second time under one direct (TDP) "
    "root, or at two levels under any root (KVM makes neither): not walked again",
    "corrupt_list": "a list or tree of the VM's (tdp_mmu_roots, active_mmu_pages, "
    "memslots) links back to an entry or is longer than any kernel's: what "
    "follows is not read",
}

# What is named and counted instead, and why it is allowed.
EXCEPTIONS = {
    "invalid_root": "in a root or shadow page marked invalid, not yet zapped",
    "invalidation_in_progress": "inside an MMU-notifier invalidation in progress",
    "guest_memfd": "in a guest_memfd memslot: no HVA to compare",
    "stale_mmio": "an MMIO SPTE of an older memslot generation (refaulted on use)",
    "tdp_mmu_parent_level": "TDP MMU pages below the root with their parent's "
    "role.level, as kernels before v5.14 (commit f1b832550832) set it",
    "table_unreadable": "a table page whose struct page or struct kvm_mmu_page is not in the dump",
}


class Problem(NamedTuple):
    """One SPTE or table page that disagrees with the host or KVM's books.

    ``addr`` is what the root translates (GPA, or GVA under shadow paging;
    None when no root reaches the page), ``hpa`` the SPTE's page (a table
    page's own HPA for table problems), ``host_hpa`` where the host maps the
    HVA (None when it does not)."""

    vm: int
    root: Optional[int]
    addr: Optional[int]
    gfn: Optional[int]
    level: int
    sptep: Optional[int]
    spte: Optional[int]
    hpa: Optional[int]
    problem: str
    host_hpa: Optional[int]
    detail: str


class VerifySummary(NamedTuple):
    """What :func:`verify_vm` checked in one VM."""

    vm: int
    checked: int  # leaf SPTEs checked
    problems: int
    exceptions: Dict[str, int]  # EXCEPTIONS name -> leaves or tables
    tables: int  # table pages checked
    mmio: int  # MMIO SPTEs checked
    unreadable: List[Unreadable]


# -- The VMM's page tables, many addresses at once -----------------------------

HOST_OK = 0
HOST_UNMAPPED = 1
HOST_UNREADABLE = 2


class HostColumns:
    """Many HVAs through the VMM's page tables at once: a
    :class:`~drgn_kvmwalk.guest.HostPageTables` whose page tables (level 1)
    are read whole and indexed with numpy.  Table pages are cached; a
    live host's caller makes a new one per pass."""

    def __init__(self, host: HostPageTables) -> None:
        self.host = host
        self._pages: Dict[int, "np.ndarray[Any, Any]"] = {}

    def translate(
        self, hvas: "np.ndarray[Any, Any]"
    ) -> Tuple[
        "np.ndarray[Any, Any]",
        "np.ndarray[Any, Any]",
        "np.ndarray[Any, Any]",
        "np.ndarray[Any, Any]",
    ]:
        """(HPA, page size, writable, status) of each HVA (uint64 arrays;
        status HOST_OK, HOST_UNMAPPED or HOST_UNREADABLE; the others are 0
        where status is not HOST_OK)."""
        n = len(hvas)
        # Sorted by HVA (leaves of a TDP root already are): then the upper
        # levels are walked once per GiB, each PMD table is indexed with
        # numpy for all its HVAs, and each page table read once.
        order: Optional["np.ndarray[Any, Any]"] = None
        if n > 1 and not bool(np.all(hvas[1:] >= hvas[:-1])):
            order = np.argsort(hvas, kind="stable")
            hvas = hvas[order]
        hpa = np.zeros(n, dtype=_U64)
        size = np.zeros(n, dtype=_U64)
        writable = np.zeros(n, dtype=bool)
        status = np.full(n, HOST_UNMAPPED, dtype=np.int8)
        gib = hvas >> np.uint64(30)
        cuts = (np.flatnonzero(gib[1:] != gib[:-1]) + 1).tolist()
        for a, b in zip([0] + cuts, cuts + [n]) if n else ():  # (none: no group)
            self._translate_gib(hvas[a:b], hpa[a:b], size[a:b], writable[a:b], status[a:b])
        if order is None:
            return hpa, size, writable, status
        back = np.empty_like(order)
        back[order] = np.arange(n)
        return hpa[back], size[back], writable[back], status[back]

    def _translate_gib(
        self,
        hvas: "np.ndarray[Any, Any]",
        hpa: "np.ndarray[Any, Any]",
        size: "np.ndarray[Any, Any]",
        writable: "np.ndarray[Any, Any]",
        status: "np.ndarray[Any, Any]",
    ) -> None:
        """:meth:`translate` of sorted HVAs inside one GiB, into the views
        given (status comes in HOST_UNMAPPED)."""
        mask = np.uint64(self.host.addr_mask)
        try:
            e = self.host.entry(int(hvas[0]), lowest=3)
        except HostUnmapped:
            return
        except (PhysMemError, FaultError):
            status[:] = HOST_UNREADABLE
            return
        if e.value & PT_PAGE_SIZE_MASK:  # a 1G host page
            span = level_size(e.level)
            hpa[:] = np.uint64(e.value & self.host.addr_mask & ~(span - 1)) | (
                hvas & np.uint64(span - 1)
            )
            size[:], writable[:], status[:] = span, e.writable, HOST_OK
            return
        try:
            pmd = self._table(e.value & self.host.addr_mask)
        except (PhysMemError, FaultError):
            status[:] = HOST_UNREADABLE
            return
        # Per PMD entry (512 of them), then per HVA by its PMD index.
        pmd_present = (pmd & np.uint64(1)) != 0
        pmd_huge = pmd_present & ((pmd & np.uint64(PT_PAGE_SIZE_MASK)) != 0)
        pmd_w = e.writable & ((pmd & np.uint64(PT_WRITABLE_MASK)) != 0)
        pmd_index = ((hvas >> np.uint64(21)) & np.uint64(511)).astype(np.intp)
        used = np.zeros(512, dtype=bool)
        used[pmd_index] = True
        huge = pmd_huge[pmd_index]
        if huge.any():  # 2M host pages
            two_m = np.uint64(level_size(2))
            hpa[huge] = (pmd[pmd_index[huge]] & mask & ~(two_m - np.uint64(1))) | (
                hvas[huge] & (two_m - np.uint64(1))
            )
            size[huge], writable[huge], status[huge] = two_m, pmd_w[pmd_index[huge]], HOST_OK
        # The page tables, laid out by PMD index: entry i of the table of
        # PMD entry j is entry j * 512 + i, bits 12-29 of the HVA.
        tables = np.zeros((512, 512), dtype=_U64)
        pt_ok = np.zeros(512, dtype=bool)
        pt_unreadable = np.zeros(512, dtype=bool)
        for j in np.flatnonzero(used & pmd_present & ~pmd_huge).tolist():
            try:
                tables[j] = self._table(int(pmd[j]) & self.host.addr_mask)
            except (PhysMemError, FaultError):
                pt_unreadable[j] = True
                continue
            pt_ok[j] = True
        if not pt_ok.any() and not pt_unreadable.any():
            return
        ptes = tables.reshape(-1)[((hvas >> np.uint64(12)) & np.uint64(0x3FFFF)).astype(np.intp)]
        # (whole-array np.where: boolean indexing costs more per element)
        ok = pt_ok[pmd_index] & ((ptes & np.uint64(1)) != 0)
        hpa[:] = np.where(ok, (ptes & mask) | (hvas & np.uint64(0xFFF)), hpa)
        size[:] = np.where(ok, np.uint64(PAGE_SIZE), size)
        writable[:] = np.where(
            ok, pmd_w[pmd_index] & ((ptes & np.uint64(PT_WRITABLE_MASK)) != 0), writable
        )
        status[:] = np.where(
            ok,
            np.int8(HOST_OK),
            np.where(pt_unreadable[pmd_index], np.int8(HOST_UNREADABLE), status),
        )

    def _table(self, pa: int) -> "np.ndarray[Any, Any]":
        """The host table page at ``pa`` as 512 entries (kept)."""
        page = self._pages.get(pa)
        if page is None:
            page = np.frombuffer(self.host.tables.read(pa, PAGE_SIZE), dtype=_U64)
            self._pages[pa] = page
        return page


# -- Memslots, as arrays ------------------------------------------------------


class _Slots:
    """The memslots of one address space, sorted by GFN, as arrays."""

    def __init__(self, slots: List[Memslot]) -> None:
        slots = sorted(slots, key=lambda s: s.base_gfn)
        self.slots = slots
        self.base = np.array([s.base_gfn for s in slots], dtype=_U64)
        # (a corrupt memslot's end may lie past 2**64: it ends there)
        self.end = np.array([min(s.base_gfn + s.npages, _MAX_U64) for s in slots], dtype=_U64)
        self.hva = np.array([s.hva for s in slots], dtype=_U64)
        self.flags = np.array([s.flags for s in slots], dtype=_U64)

    def find(self, gfns: "np.ndarray[Any, Any]") -> "np.ndarray[Any, Any]":
        """Index of the memslot holding each GFN, -1 where none does."""
        if not self.slots:
            return np.full(len(gfns), -1, dtype=np.int64)
        i = np.searchsorted(self.base, gfns, side="right").astype(np.int64) - 1
        ok = (i >= 0) & (gfns < self.end[np.maximum(i, 0)])
        return np.where(ok, i, -1)


# -- The state of a VM's invalidations ---------------------------------------


class _Invalidation(NamedTuple):
    """``kvm->mmu_invalidate_in_progress`` and its range: HVAs (``hva``) or
    GFNs; ``start`` None when the kernel keeps no range."""

    in_progress: int
    start: Optional[int]
    end: Optional[int]
    hva: bool


def _invalidation(kvm: Object) -> _Invalidation:
    # Since Linux kernel commit 20ec3ebd707c ("KVM: Rename mmu_notifier_* to
    # mmu_invalidate_*") (in v6.1), the count is mmu_invalidate_in_progress.
    for count_name, prefix in (
        ("mmu_invalidate_in_progress", "mmu_invalidate_range_"),
        ("mmu_notifier_count", "mmu_notifier_range_"),
    ):
        try:
            count = int(kvm.member_(count_name))
        except LookupError:
            continue
        try:
            start = kvm.member_(prefix + "start")
            end = kvm.member_(prefix + "end")
        except LookupError:  # v5.10 keeps the count alone
            return _Invalidation(count, None, None, True)
        # The range became GFNs (gfn_t) with the guest_memfd work (v6.8);
        # before, it was HVAs (unsigned long).
        hva = start.type_.type_name() != "gfn_t"
        return _Invalidation(count, int(start), int(end), hva)
    return _Invalidation(0, None, None, True)


# -- Checking ---------------------------------------------------------------


class _Leaves(NamedTuple):
    """Leaf SPTEs of one level, as uint64 columns (addrs may be None)."""

    level: int
    addrs: Optional["np.ndarray[Any, Any]"]
    gfns: "np.ndarray[Any, Any]"
    spteps: "np.ndarray[Any, Any]"
    sptes: "np.ndarray[Any, Any]"


class _Checker:
    """What one VM's check has found so far, and what it checks against.

    :param host: the VMM's page tables, made when first needed (it raises
        FaultError or ValueError when ``kvm->mm`` cannot be read)
    """

    def __init__(
        self,
        prog: Program,
        pid: int,
        fmt: SpteFormat,
        mem: PhysMem,
        slots: Dict[int, _Slots],
        host: Callable[[], HostColumns],
        inval: _Invalidation,
        generations: Dict[int, int],
    ) -> None:
        self.prog = prog
        self.pid = pid
        self.fmt = fmt
        self.mem = mem
        self.slots = slots
        self.host_of = host
        self.host: Optional[HostColumns] = None
        self.host_error: Optional[str] = None
        self.inval = inval
        self.generations = generations  # as_id -> kvm_memslots()->generation
        self.checked = 0
        self.tables = 0
        self.mmio_checked = 0
        self.exceptions: Dict[str, int] = {}
        self.problems = 0
        self.found: List[Problem] = []
        # TDP MMU tables below the root whose role.level is their parent's
        # (see _tdp_mmu), and how many such tables were checked.
        self.parent_level: List[Problem] = []
        self.tdp_children = 0
        self.max_tables = MAX_TABLES  # table pages read under one root, at most

    def _host(self) -> Optional[HostColumns]:
        if self.host is None and self.host_error is None:
            try:
                self.host = self.host_of()
            except (FaultError, ValueError) as e:
                self.host_error = f"the VMM's mm (kvm->mm) cannot be read: {e}"
        return self.host

    def _except(self, name: str, n: int) -> None:
        if n:
            self.exceptions[name] = self.exceptions.get(name, 0) + n

    def _problem(
        self,
        root: Optional[int],
        addr: Optional[int],
        gfn: Optional[int],
        level: int,
        sptep: Optional[int],
        spte: Optional[int],
        hpa: Optional[int],
        problem: str,
        host_hpa: Optional[int],
        detail: str,
        invalid: bool,
    ) -> None:
        if invalid:
            self._except("invalid_root", 1)
            return
        self.problems += 1
        self.found.append(
            Problem(self.pid, root, addr, gfn, level, sptep, spte, hpa, problem, host_hpa, detail)
        )

    def corrupt(
        self,
        problem: str,
        detail: str,
        root: Optional[int] = None,
        level: int = 0,
        hpa: Optional[int] = None,
    ) -> None:
        """A problem with the kernel's own structures, at no SPTE."""
        self._problem(root, None, None, level, None, None, hpa, problem, None, detail, False)

    def repeated(self, root: int, item: Unreadable, invalid: bool) -> None:
        """A table page the walk from ``root`` did not descend into again."""
        self._problem(
            root,
            item.base,
            None,
            item.level,
            None,
            None,
            item.table,
            "table_repeated",
            None,
            f"level-{item.level} table page {item.table:#x}: {item.error}",
            invalid,
        )

    def leaves(self, root: Optional[int], as_id: int, lv: _Leaves, invalid: bool) -> None:
        """Check a block of leaves of one level."""
        n = len(lv.gfns)
        if not n:
            return
        self.checked += n
        fmt = self.fmt
        level = lv.level
        if level > 3:
            for i in range(n):
                detail = (
                    f"level-{level} SPTE {int(lv.sptes[i]):#x} at {int(lv.spteps[i]):#x} "
                    f"has the page-size bit: {PROBLEMS['leaf_level']}"
                )
                self._leaf_problem(root, lv, i, None, "leaf_level", None, detail, invalid)
            return
        pages = 1 << (9 * (level - 1))
        span = level_size(level)
        hpas = lv.sptes & np.uint64(fmt.base_addr_mask & ~(span - 1))
        writable = (lv.sptes & np.uint64(PT_WRITABLE_MASK)) != 0
        host_writable = (
            (lv.sptes & np.uint64(fmt.host_writable_mask)) != 0
            if fmt.host_writable_mask
            else np.zeros(n, dtype=bool)
        )
        slots = self.slots.get(as_id) or _Slots([])
        si = slots.find(lv.gfns)
        bad: Dict[str, "np.ndarray[Any, Any]"] = {}
        bad["no_memslot"] = si < 0
        safe = np.maximum(si, 0)
        if slots.slots:
            bad["memslot_edge"] = (si >= 0) & (lv.gfns + np.uint64(pages) > slots.end[safe])
            flags = slots.flags[safe]
            bad["readonly_memslot"] = (
                (si >= 0) & writable & ((flags & np.uint64(KVM_MEM_READONLY)) != 0)
            )
            gmem = (si >= 0) & ((flags & np.uint64(KVM_MEM_GUEST_MEMFD)) != 0)
        else:
            flags = np.zeros(n, dtype=_U64)
            gmem = np.zeros(n, dtype=bool)
        self._except("guest_memfd", int(np.count_nonzero(gmem)) if not invalid else 0)
        compare = (si >= 0) & ~gmem
        host_hpa = np.zeros(n, dtype=_U64)
        hvas = np.zeros(n, dtype=_U64)
        if slots.slots:
            hvas = slots.hva[safe] + ((lv.gfns - slots.base[safe]) << np.uint64(12))
        host = self._host() if compare.any() else None
        if compare.any() and host is None:
            bad["host_unreadable"] = compare
        elif host is not None:
            # every leaf, most often: no gathering and scattering
            everyone = bool(compare.all())
            pos: Any = slice(None) if everyone else np.flatnonzero(compare)
            h_hpa, h_size, h_w, h_status = host.translate(hvas[pos])
            ok = h_status == HOST_OK
            host_hpa[pos] = h_hpa
            for name, mask in (
                ("host_unmapped", h_status == HOST_UNMAPPED),
                ("host_unreadable", h_status == HOST_UNREADABLE),
                ("pfn_mismatch", ok & (h_hpa != hpas[pos])),
                ("host_page_smaller", ok & (h_hpa == hpas[pos]) & (h_size < np.uint64(span))),
                ("writable_over_readonly", ok & writable[pos] & ~h_w),
                ("host_writable_over_readonly", ok & host_writable[pos] & ~h_w & ~writable[pos]),
            ):
                if everyone:
                    bad[name] = mask
                    continue
                full = np.zeros(n, dtype=bool)
                full[pos] = mask
                bad[name] = full
        any_bad = np.zeros(n, dtype=bool)
        for mask in bad.values():
            any_bad |= mask
        if not any_bad.any():
            return
        flagged = self._in_invalidation(lv.gfns, hvas, si >= 0, pages) & any_bad
        self._except(
            "invalidation_in_progress", int(np.count_nonzero(flagged)) if not invalid else 0
        )
        for i in np.flatnonzero(any_bad & ~flagged).tolist():
            names = [name for name, mask in bad.items() if mask[i]]
            for name in names:
                self._leaf_problem(
                    root,
                    lv,
                    i,
                    int(hpas[i]),
                    name,
                    int(host_hpa[i]) if int(host_hpa[i]) else None,
                    self._detail(name, slots, int(si[i]), int(lv.gfns[i]), int(hvas[i]), level),
                    invalid,
                )

    def _leaf_problem(
        self,
        root: Optional[int],
        lv: _Leaves,
        i: int,
        hpa: Optional[int],
        name: str,
        host_hpa: Optional[int],
        detail: str,
        invalid: bool,
    ) -> None:
        """A problem with leaf ``i`` of ``lv``."""
        self._problem(
            root,
            None if lv.addrs is None else int(lv.addrs[i]),
            int(lv.gfns[i]),
            lv.level,
            int(lv.spteps[i]),
            int(lv.sptes[i]),
            hpa,
            name,
            host_hpa,
            detail,
            invalid,
        )

    def _in_invalidation(
        self,
        gfns: "np.ndarray[Any, Any]",
        hvas: "np.ndarray[Any, Any]",
        in_slot: "np.ndarray[Any, Any]",
        pages: int,
    ) -> "np.ndarray[Any, Any]":
        inv = self.inval
        if not inv.in_progress:
            return np.zeros(len(gfns), dtype=bool)
        if inv.start is None or inv.end is None:
            return np.ones(len(gfns), dtype=bool)  # no range kept: all of it
        if inv.hva:
            lo, width = hvas, np.uint64(pages << 12)
        else:
            lo, width = gfns, np.uint64(pages)
        return in_slot & (lo < np.uint64(inv.end)) & (lo + width > np.uint64(inv.start))

    def _detail(self, name: str, slots: _Slots, si: int, gfn: int, hva: int, level: int) -> str:
        if si < 0:
            return f"GFN {gfn:#x} is in no memslot"
        slot = slots.slots[si]
        end = slot.base_gfn + slot.npages
        where = f"memslot {slot.id} (GFNs {slot.base_gfn:#x}-{end:#x}) HVA {hva:#x}"
        if name == "host_unreadable" and self.host_error:
            return f"{where}: {self.host_error}"
        return f"{where}: {PROBLEMS[name]}"

    def mmio(
        self,
        root: Optional[int],
        as_id: int,
        table: int,
        level: int,
        base: Optional[int],
        entries: "np.ndarray[Any, Any]",
    ) -> None:
        """MMIO SPTEs of one table page: of the current generation, their
        GFN must lie in no memslot."""
        fmt = self.fmt
        if not (fmt.mmio_caching and fmt.mmio_value):
            return
        mmio = (entries & np.uint64(fmt.mmio_mask)) == np.uint64(fmt.mmio_value)
        if fmt.mmu_present_mask:  # a present SPTE is no MMIO SPTE (see decode_spte())
            mmio &= (entries & np.uint64(fmt.mmu_present_mask)) == 0
        idx = np.flatnonzero(mmio)
        if not idx.size:
            return
        self.mmio_checked += int(idx.size)
        gen = self._generation(as_id)
        slots = self.slots.get(as_id) or _Slots([])
        for i in idx.tolist():
            spte = int(entries[i])
            gfn = fmt.mmio_gfn(spte)
            if gen is not None and fmt.mmio_gen.generation(spte) != gen:
                self._except("stale_mmio", 1)
                continue
            si = int(slots.find(np.array([gfn], dtype=_U64))[0])
            if si >= 0:
                self._problem(
                    root,
                    None if base is None else base + i * level_size(level),
                    gfn,
                    level,
                    table + 8 * i,
                    spte,
                    None,
                    "mmio_in_memslot",
                    None,
                    f"MMIO SPTE for GFN {gfn:#x}, which memslot {slots.slots[si].id} holds",
                    False,
                )

    def _generation(self, as_id: int) -> Optional[int]:
        """The memslot generation as MMIO SPTEs hold it (MMIO_SPTE_GEN_MASK
        of ``kvm_memslots()->generation``); None while an update is in
        progress (KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, bit 63)."""
        gen = self.generations.get(as_id)
        if gen is None or gen >> 63:
            return None
        g = self.fmt.mmio_gen
        bits = (g.low_end - g.low_start + 1) + (g.high_end - g.high_start + 1)
        return gen & ((1 << bits) - 1)

    def table(
        self,
        root: Optional[int],
        table: int,
        level: int,
        base: Optional[int],
        parent: Optional[Tuple[int, int]],
        sp: Optional[ShadowPage],
        invalid: bool,
    ) -> None:
        """Check one table page's struct kvm_mmu_page (``sp``, found from
        ``page->private``: None when it does not point back)."""
        self.tables += 1
        if sp is None and not _private_readable(self.prog, table):
            self._except("table_unreadable", 1)
            return
        if sp is not None and sp.tdp_mmu and parent is not None and not invalid:
            self.tdp_children += 1
        sptep, spte = parent if parent else (None, None)
        if sp is None:
            self._problem(
                root,
                base,
                None,
                level,
                sptep,
                spte,
                table,
                "table_backpointer",
                None,
                f"level-{level} table page {table:#x}: {PROBLEMS['table_backpointer']}",
                invalid,
            )
        elif sp.level != level:
            # Kept aside: see _tdp_mmu (TDP MMU pages with their parent's level).
            parents_level = (
                sp.tdp_mmu and sp.level == level + 1 and parent is not None and not invalid
            )
            detail = (
                f"level-{level} table page {table:#x}: struct kvm_mmu_page "
                f"{sp.address:#x} has role.level {sp.level}"
                + (", its parent's" if parents_level else "")
            )
            args = (root, base, sp.gfn, level, sptep, spte, table, "table_level", None, detail)
            if parents_level:
                self.parent_level.append(Problem(self.pid, *args))
            else:
                self._problem(*args, invalid)

    def take(self) -> List[Problem]:
        found, self.found = self.found, []
        return found


def _checker(kvm: Object, fmt: SpteFormat, mem: PhysMem) -> _Checker:
    """A checker for the VM, its memslots and generations read now (the
    memslots before the break of a corrupt tree, which is a problem)."""
    prog = kvm.prog_
    by_as: Dict[int, List[Memslot]] = {}
    broken: List[str] = []
    try:
        for s in until_corrupt(for_each_memslot(kvm), broken):
            by_as.setdefault(s.as_id, []).append(s)
    except BadKernelValue as e:
        broken.append(str(e))
    generations: Dict[int, int] = {}
    for as_id in range(kvm.memslots.type_.length or 0):
        try:
            if kvm.memslots[as_id]:
                generations[as_id] = int(kvm.memslots[as_id].generation)
        except FaultError:
            pass
    c = _Checker(
        prog,
        vm_pid(kvm),
        fmt,
        mem,
        {as_id: _Slots(s) for as_id, s in by_as.items()},
        lambda: HostColumns(HostPageTables(prog, kvm.mm, mem)),
        _invalidation(kvm),
        generations,
    )
    for what in broken:
        c.corrupt("corrupt_list", f"{what}: leaves are checked against the memslots before it")
    return c


def _private_readable(prog: Program, table: int) -> bool:
    """Whether the target holds ``page->private`` of the table page."""
    try:
        pfn_to_page(prog, table >> 12).private.value_()
    except (FaultError, OverflowError):  # OverflowError: a page past 2**64 (corrupt HPA)
        return False
    return True


def _tdp_mmu(
    kvm: Object, c: _Checker, roots: Optional[Set[int]], unreadable: List[Unreadable]
) -> Iterator[Problem]:
    prog = c.prog
    broken: List[str] = []
    for sp in until_corrupt(for_each_tdp_mmu_root(kvm), broken):
        hpa = int(virt_to_phys(prog, sp.spt))
        if roots is None or hpa in roots:
            role = sp.role.read_()
            level = int(role.level)
            if level not in ROOT_LEVELS:
                c.corrupt(
                    "root_level",
                    f"TDP MMU root {hpa:#x} (struct kvm_mmu_page {sp.value_():#x}) has "
                    f"role.level {level}: {PROBLEMS['root_level']}",
                    hpa,
                    level,
                    hpa,
                )
                yield from c.take()
                continue
            yield from _tdp_root(c, hpa, level, int(role.smm), bool(role.invalid), unreadable)
    for what in broken:
        c.corrupt("corrupt_list", f"{what}: the roots after it are not checked")
    yield from c.take()
    # Before Linux kernel commit f1b832550832 ("KVM: x86/mmu: Fix TDP MMU page
    # table level") (in v5.14) every TDP MMU page below a root got its
    # parent's role.level.  Only the pages can tell (the fix changed code):
    # when every one of them is so, that is the kernel's way, not a problem.
    if c.parent_level and len(c.parent_level) == c.tdp_children:
        c._except("tdp_mmu_parent_level", len(c.parent_level))
    else:
        c.problems += len(c.parent_level)
        yield from c.parent_level
    c.parent_level = []


def _tdp_root(
    c: _Checker, hpa: int, level: int, as_id: int, invalid: bool, unreadable: List[Unreadable]
) -> Iterator[Problem]:
    """One TDP MMU root: its leaves, its MMIO SPTEs, its table pages."""
    parents: Dict[int, Tuple[int, int]] = {}  # table HPA -> (sptep, spte) above it
    base_mask = c.fmt.base_addr_mask

    def on_table(table: int, lvl: int, base: int, entries: "np.ndarray[Any, Any]") -> None:
        sp = to_shadow_page(c.prog, table)
        c.table(hpa, table, lvl, base, parents.pop(table, None), sp, invalid)
        if lvl > 1:
            present, leaf = classify_table(c.fmt, entries, lvl)
            for i in np.flatnonzero(present & ~leaf).tolist():
                parents[int(entries[i]) & base_mask] = (table + 8 * i, int(entries[i]))
        c.mmio(hpa, as_id, table, lvl, base, entries)

    root = Root(hpa, level, True, level)
    for item in iter_leaf_columns(c.mem, c.fmt, root, on_table=on_table, max_tables=c.max_tables):
        if isinstance(item, Unreadable):
            if item.kind == "repeated":
                c.repeated(hpa, item, invalid)
                yield from c.take()
            else:
                unreadable.append(item)
            continue
        gfns = item.addrs >> np.uint64(12)
        c.leaves(
            hpa, as_id, _Leaves(item.level, item.addrs, gfns, item.spteps, item.sptes), invalid
        )
        yield from c.take()
    yield from c.take()


def verify_vm(
    kvm: Object,
    roots: Optional[List[int]] = None,
    mem: Optional[PhysMem] = None,
    *,
    max_tables: int = MAX_TABLES,
) -> Iterator[Union[Problem, VerifySummary]]:
    """Check every present leaf SPTE and every table page of the VM; give
    each problem as it is found, then one :class:`VerifySummary`.

    >>> *problems, summary = verify_vm(find_vm(prog, 4242))
    >>> problems, summary.checked == sum(kvm_page_counters(kvm).values())
    ([], True)

    :param kvm: ``struct kvm *``
    :param roots: only the tables these roots (their HPAs) reach
    :param mem: host physical memory to read tables from; the program's by default
    :param max_tables: table pages read under one root, at most (what is past
        it is named in the summary's ``unreadable``, kind ``budget``)
    :raises MissingDebugInfo: kvm.ko's debug info is missing
    """
    prog = kvm.prog_
    fmt = spte_format(kvm)
    c = _checker(kvm, fmt, mem or DrgnPhysMem(prog))
    c.max_tables = max_tables
    yield from c.take()  # the memslots' problems
    wanted = None if roots is None else set(roots)
    unreadable: List[Unreadable] = []
    yield from _tdp_mmu(kvm, c, wanted, unreadable)
    yield from _legacy(kvm, c, wanted, unreadable)
    yield VerifySummary(
        c.pid, c.checked, c.problems, dict(c.exceptions), c.tables, c.mmio_checked, unreadable
    )


def _sp_gfn_layout(prog: Program) -> Tuple[bool, Optional[str], int]:
    """How ``kvm_mmu_page_get_gfn()`` finds an indirect page's GFNs on this
    kernel, decided once per program: (role has ``passthrough``, the member
    holding per-entry GFNs, the shift that takes a GFN out of it)."""
    key = "drgn_kvmwalk.sp_gfn_layout"
    got = prog.cache.get(key)
    if got is None:
        sp_type = prog.type("struct kvm_mmu_page")
        role_type = sp_type.member("role").type
        # "KVM: X86: Introduce role.passthrough for shadowing 5-level NPT for
        # 4-level NPT L1 guest" (between v5.10 and v6.1): such a page maps
        # sp->gfn alone.
        passthrough = any(m.name == "passthrough" for m in _members(role_type))
        # Since Linux kernel commit "KVM: x86/mmu: Cache the access bits of
        # shadowed translations" (between v5.10 and v6.1), shadowed_translation
        # holds gfn << PAGE_SHIFT | access; before, gfns held the GFNs.
        member, shift = None, 0
        for name, sh in (("shadowed_translation", 12), ("gfns", 0)):
            if sp_type.has_member(name):
                member, shift = name, sh
                break
        got = (passthrough, member, shift)
        prog.cache[key] = got
    return cast(Tuple[bool, Optional[str], int], got)


def _members(t: Any) -> Iterator[Any]:
    """The members of a struct or union type, those of its anonymous
    members included (``union kvm_mmu_page_role`` keeps its bits in one)."""
    for m in t.unqualified().members or ():
        if m.name is None:
            yield from _members(m.type)
        else:
            yield m


def _sp_gfns(
    prog: Program, sp: Object, level: int, direct: bool, index: "np.ndarray[Any, Any]"
) -> "np.ndarray[Any, Any]":
    """``kvm_mmu_page_get_gfn()`` of the entries ``index`` of a legacy page."""
    base = np.uint64(int(sp.gfn))
    if not direct:
        passthrough, member, shift = _sp_gfn_layout(prog)
        if passthrough and int(sp.role.passthrough):
            return np.full(len(index), base, dtype=_U64)
        table = int(sp.member_(member)) if member else 0
        if table:
            got = np.frombuffer(prog.read(table, PAGE_SIZE), dtype=_U64)
            gfns: "np.ndarray[Any, Any]" = got[index] >> np.uint64(shift)
            return gfns
    formula: "np.ndarray[Any, Any]" = base + (index.astype(_U64) << np.uint64(9 * (level - 1)))
    return formula


def _reach(
    c: _Checker, roots: List[Root], unreadable: List[Unreadable]
) -> Dict[int, Tuple[int, int]]:
    """(root HPA, address its entry 0 translates) of every table page the
    legacy roots reach, by the first root that reaches it.  A table page a
    direct root reaches twice, or any root at two levels, is a problem
    (table_repeated), and is not descended into again."""
    seen: Dict[int, Tuple[int, int]] = {}
    for root in roots:
        on_table = functools.partial(_first_reach, seen, root.hpa)
        items = iter_leaf_columns(c.mem, c.fmt, root, on_table=on_table, max_tables=c.max_tables)
        for item in items:
            if not isinstance(item, Unreadable):
                continue
            if item.kind == "budget":
                unreadable.append(item)
            elif item.kind == "repeated":
                c.repeated(root.hpa, item, False)
    return seen


def _first_reach(
    seen: Dict[int, Tuple[int, int]],
    root: int,
    table: int,
    level: int,
    base: int,
    entries: "np.ndarray[Any, Any]",
) -> None:
    seen.setdefault(table, (root, base))


def _legacy_roots(kvm: Object, broken: List[str], lists: Optional[List[str]] = None) -> List[Root]:
    """The legacy MMU's roots: every vCPU's current, previous and nested
    roots, and the VM's other top-level shadow pages.  A vCPU whose roots
    cannot be read for corrupt values is left out, its line in ``broken``;
    when the VM's page list (``active_mmu_pages``, where the other top-level
    pages are found) is corrupt, the vCPUs' own roots are still taken and its
    line goes to ``lists``, once."""
    found: Dict[int, Root] = {}
    for vcpu in for_each_vcpu(kvm):
        try:
            roots = _vcpu_roots(vcpu, lists)
        except BadKernelValue as e:
            broken.append(f"vCPU {int(vcpu.vcpu_id)}: {e}")
            continue
        for lr in roots:
            if not lr.tdp_mmu and lr.root.level in ROOT_LEVELS:
                found.setdefault(lr.root.hpa, lr.root)
    return list(found.values())


def _vcpu_roots(vcpu: Object, lists: Optional[List[str]]) -> List[LabelledRoot]:
    """select_roots(vcpu, "all"), or what of it can be read."""
    try:
        return select_roots(vcpu, "all")
    except NoRoot:
        pass
    except CorruptList as e:
        if lists is not None and str(e) not in lists:
            lists.append(str(e))
        roots: List[LabelledRoot] = []
        for which in ("current", "prev"):
            try:
                roots += select_roots(vcpu, which)
            except NoRoot:
                pass
        return roots
    try:
        return select_roots(vcpu, "prev")
    except NoRoot:
        return []


def _legacy(
    kvm: Object, c: _Checker, wanted: Optional[Set[int]], unreadable: List[Unreadable]
) -> Iterator[Problem]:
    prog = c.prog
    broken: List[str] = []
    pages = list(until_corrupt(for_each_active_mmu_page(kvm), broken))
    for what in broken:
        c.corrupt("corrupt_list", f"{what}: the shadow pages after it are not checked")
    yield from c.take()
    if not pages:
        return
    broken = []
    roots = _legacy_roots(kvm, broken)
    for what in broken:
        c.corrupt("root_level", f"{what}: its roots are not walked")
    yield from c.take()
    reach = _reach(
        c, roots if wanted is None else [r for r in roots if r.hpa in wanted], unreadable
    )
    levels: Dict[int, int] = {}
    items = []
    for sp in pages:
        hpa = int(virt_to_phys(prog, sp.spt))
        levels[hpa] = int(sp.role.level)
        items.append((sp, hpa))
    for sp, hpa in items:
        if wanted is not None and hpa not in reach:
            continue
        role = sp.role.read_()
        level = int(role.level)
        if not 1 <= level <= max(ROOT_LEVELS):
            c.corrupt(
                "role_level",
                f"shadow page {hpa:#x} (struct kvm_mmu_page {sp.value_():#x}) has "
                f"role.level {level}: {PROBLEMS['role_level']}",
                reach.get(hpa, (None, 0))[0],
                level,
                hpa,
            )
            yield from c.take()
            continue
        direct = bool(role.direct)
        invalid = bool(role.invalid)
        as_id = int(role.smm)
        root_hpa, base = reach.get(hpa, (None, None))
        if direct and base is None:
            base = int(sp.gfn) << 12
        back = to_shadow_page(prog, hpa)
        c.table(
            root_hpa,
            hpa,
            level,
            base,
            None,
            back if back is not None and back.address == int(sp.value_()) else None,
            invalid,
        )
        try:
            entries = np.frombuffer(c.mem.read(hpa, PAGE_SIZE), dtype=_U64)
        except PhysMemError as e:
            unreadable.append(
                Unreadable(level, hpa, base or 0, level_size(level) * ENTRIES_PER_TABLE, str(e))
            )
            continue
        present, leaf = classify_table(c.fmt, entries, level)
        if level > 1:
            for i in np.flatnonzero(present & ~leaf).tolist():
                child = int(entries[i]) & c.fmt.base_addr_mask
                child_level = levels.get(child)
                if child_level is None and to_shadow_page(prog, child) is not None:
                    continue  # a shadow page of the VM's, not on the list
                if child_level is None:
                    name, what = "table_backpointer", PROBLEMS["table_backpointer"]
                elif child_level != level - 1:
                    name, what = "table_level", f"has role.level {child_level}"
                else:
                    continue
                c._problem(
                    root_hpa,
                    None if base is None else base + i * level_size(level),
                    None,
                    level - 1,
                    hpa + 8 * i,
                    int(entries[i]),
                    child,
                    name,
                    None,
                    f"level-{level - 1} table page {child:#x} (entry {i} of {hpa:#x}): {what}",
                    invalid,
                )
        index = np.flatnonzero(leaf)
        if index.size:
            try:
                gfns = _sp_gfns(prog, sp, level, direct, index)
            except FaultError as e:
                unreadable.append(
                    Unreadable(
                        level,
                        hpa,
                        base or 0,
                        level_size(level) * ENTRIES_PER_TABLE,
                        f"its GFNs: {e}",
                    )
                )
                continue
            addrs = (
                None
                if base is None
                else np.uint64(base) + (index.astype(_U64) << np.uint64(level_shift(level)))
            )
            c.leaves(
                root_hpa,
                as_id,
                _Leaves(
                    level,
                    addrs,
                    gfns,
                    np.uint64(hpa) + (index.astype(_U64) << np.uint64(3)),
                    entries[index],
                ),
                invalid,
            )
        c.mmio(root_hpa, as_id, hpa, level, base, entries)
        yield from c.take()


# -- --hpa: which VMs, roots and guest addresses map a host page ---------------


class HpaMapping(NamedTuple):
    """A leaf SPTE that maps host physical address ``hpa``: ``addr`` and
    ``gfn`` are the guest address and GFN of ``hpa`` itself (inside a large
    page, not its start)."""

    hpa: int
    vm: int
    root: int
    addr: int
    gfn: Optional[int]
    level: int
    sptep: int
    spte: int
    invalid: bool  # the root is invalid (not yet zapped)


class HpaTable(NamedTuple):
    """``hpa`` is a table page of KVM's: its struct kvm_mmu_page and the
    roots that reach it (None for ``vm`` when none does)."""

    hpa: int
    vm: Optional[int]
    sp: ShadowPage
    roots: List[int]


class HpaSkipped(NamedTuple):
    """A part of a VM that :func:`find_hpa` could not search (corrupt
    values: a root's level, a list that loops, the table-page budget);
    ``what`` says which, in one line."""

    vm: int
    what: str


def _vm_roots(kvm: Object, skipped: List[str]) -> List[Tuple[Root, bool, bool]]:
    """(root, invalid, tdp_mmu) of every root of the VM: the TDP MMU's
    roots, invalid ones too, and the legacy MMU's roots; what cannot be
    read for corrupt values goes to ``skipped``."""
    prog = kvm.prog_
    roots: List[Tuple[Root, bool, bool]] = []
    for sp in until_corrupt(for_each_tdp_mmu_root(kvm), skipped):
        role = sp.role.read_()
        level = int(role.level)
        hpa = int(virt_to_phys(prog, sp.spt))
        if level not in ROOT_LEVELS:
            skipped.append(
                str(BadKernelValue(f"role.level of TDP MMU root {hpa:#x}", level, "2-5"))
                + "; not searched"
            )
            continue
        roots.append((Root(hpa, level, True, level), bool(role.invalid), True))
    for root in _legacy_roots(kvm, skipped, skipped):
        sp = to_shadow_page(prog, root.hpa)
        roots.append((root, bool(sp and sp.invalid), False))
    return roots


def find_hpa(
    prog: Program,
    hpas: List[int],
    kvms: Optional[List[Object]] = None,
    max_tables: int = MAX_TABLES,
    mem: Optional[PhysMem] = None,
) -> Iterator[Union[HpaMapping, HpaTable, HpaSkipped]]:
    """Every leaf SPTE of every root of every VM that maps one of ``hpas``
    (KVM keeps no PFN -> GFN index: each root is walked once for all of
    them), and for each of ``hpas`` that is itself a table page of KVM's,
    its struct kvm_mmu_page.  Mappings come in (VM, root, address) order;
    what could not be searched comes as :class:`HpaSkipped`.

    >>> [(m.vm, hex(m.addr)) for m in find_hpa(prog, [0x52f0123])]
    [(4242, '0x4007b123')]

    :param hpas: host physical addresses
    :param kvms: ``struct kvm *`` objects; every VM by default
    :param max_tables: table pages read under one root, at most
    :param mem: where table pages are read (the program's memory by
        default; a :class:`~drgn_kvmwalk.walk.ReadWatch` to read them again)
    :raises MissingDebugInfo: kvm.ko's debug info is missing
    """
    targets = sorted(set(hpas))
    pages = {h & ~(PAGE_SIZE - 1) for h in targets}
    if mem is None:
        mem = DrgnPhysMem(prog)
    tables: Dict[int, Tuple[Optional[int], List[int]]] = {}
    for kvm in list(for_each_vm(prog)) if kvms is None else kvms:
        fmt = spte_format(kvm)
        pid = vm_pid(kvm)
        skipped: List[str] = []
        for root, invalid, _ in _vm_roots(kvm, skipped):
            reached: Set[int] = set()
            on_table = functools.partial(_note_table, pages, reached)
            found: List[HpaMapping] = []
            items = iter_leaf_columns(mem, fmt, root, on_table=on_table, max_tables=max_tables)
            for item in items:
                if isinstance(item, Unreadable):
                    if item.kind != "unreadable":
                        skipped.append(f"root {root.hpa:#x}: {unreadable_line(item, root.direct)}")
                    continue
                span = level_size(item.level)
                for x in targets:
                    hit = np.flatnonzero(
                        (item.hpas <= np.uint64(x)) & (np.uint64(x) < item.hpas + np.uint64(span))
                    )
                    for i in hit.tolist():
                        off = x - int(item.hpas[i])
                        addr = int(item.addrs[i]) + off
                        gfn = _leaf_gfn(prog, root, int(item.spteps[i]), item.level, addr)
                        found.append(
                            HpaMapping(
                                x,
                                pid,
                                root.hpa,
                                addr,
                                gfn,
                                item.level,
                                int(item.spteps[i]),
                                int(item.sptes[i]),
                                invalid,
                            )
                        )
            found.sort(key=lambda m: (m.addr, m.hpa))
            yield from found
            for table in reached:
                tables.setdefault(table, (pid, []))[1].append(root.hpa)
        yield from (HpaSkipped(pid, what) for what in skipped)
    for page in sorted(pages):
        sp = to_shadow_page(prog, page)
        if sp is None:
            continue
        owner, roots = tables.get(page, (None, []))
        for x in targets:
            if x & ~(PAGE_SIZE - 1) == page:
                yield HpaTable(x, owner, sp, roots)


def _note_table(
    pages: Set[int],
    reached: Set[int],
    table: int,
    level: int,
    base: int,
    entries: "np.ndarray[Any, Any]",
) -> None:
    if table in pages:
        reached.add(table)


def _leaf_gfn(prog: Program, root: Root, sptep: int, level: int, addr: int) -> Optional[int]:
    """The GFN of ``addr`` in the leaf at ``sptep``: the GPA's under a
    direct root; under shadow paging the shadow page's (kvm_mmu_page_get_gfn()),
    None when its struct kvm_mmu_page cannot be read."""
    if root.direct:
        return addr >> 12
    table = sptep & ~(PAGE_SIZE - 1)
    sp = to_shadow_page(prog, table)
    if sp is None:
        return None
    index = np.array([(sptep - table) >> 3], dtype=np.int64)
    try:
        gfn = int(_sp_gfns(prog, sp.sp, level, sp.direct, index)[0])
    except FaultError:
        return None
    return gfn + ((addr & (level_size(level) - 1)) >> 12)
