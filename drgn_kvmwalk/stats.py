# SPDX-License-Identifier: LGPL-2.1-or-later
"""Statistics of KVM's tables beside KVM's own books.

Leaf SPTE counts per page size over every live table of a VM, beside the
per-VM counters KVM keeps (``kvm->stat.pages_4k/2m/1g``, arch/x86/kvm/mmu.h
``kvm_update_page_stats()``; ``kvm->stat.lpages`` before them):

- TDP MMU: every root on ``kvm->arch.tdp_mmu_roots`` (invalid roots too:
  their SPTEs stay counted until they are zapped), walked from the root as
  :func:`~drgn_kvmwalk.leaves.count_leaves` does;
- legacy (shadow) MMU: every shadow page on ``kvm->arch.active_mmu_pages``,
  each counted on its own, because shadow pages are shared between roots
  and KVM counts an SPTE once (``__rmap_add()`` / ``mmu_spte_clear_track_bits()``).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from drgn import FaultError, Object
from drgn.helpers.linux.mm import virt_to_phys

from .errors import BadKernelValue
from .kvm import vm_pid
from .leaves import count_leaves, count_table_leaves
from .lists import until_corrupt
from .mmu import DrgnPhysMem, for_each_active_mmu_page, for_each_tdp_mmu_root
from .spte import PAGE_SIZE
from .sptefmt import spte_format
from .walk import MAX_TABLES, ROOT_LEVELS, PhysMem, PhysMemError, Root

__all__ = ["LEVEL_KEYS", "VmStats", "kvm_page_counters", "vm_stats"]

# JSON keys of the page sizes, per level.
LEVEL_KEYS = {1: "4K", 2: "2M", 3: "1G"}


class VmStats(NamedTuple):
    """Leaf counts of one VM beside KVM's counters.

    ``kvm`` holds the counters the kernel has (``pages_4k``... or ``lpages``);
    ``differences`` names each one that does not match the leaves counted.
    """

    pid: int
    roots: int  # TDP MMU roots + legacy shadow pages in use as roots
    tables: int  # table pages read: TDP MMU and legacy shadow pages
    leaves: Dict[str, int]  # "4K", "2M", "1G"
    kvm: Dict[str, int]
    differences: List[str]
    unreadable: List[Tuple[int, str]]  # (table HPA, error)
    by_mmu: Dict[str, Dict[str, int]]  # "tdp_mmu" and "legacy": leaves per size
    notes: List[str]  # what explains a difference, when known
    broken: List[str]  # corrupt parts of the VM's tables or lists, not counted


def kvm_page_counters(kvm: Object) -> Dict[str, int]:
    """KVM's per-VM leaf counters, by their kernel names.

    :param kvm: ``struct kvm *``
    """
    stat = kvm.stat
    try:
        # Since Linux kernel commit 71f51d2c3253 ("KVM: x86/mmu: Add detailed
        # page size stats") (in v5.15), KVM counts leaves per page size.
        return {
            name: int(stat.member_(name).counter) for name in ("pages_4k", "pages_2m", "pages_1g")
        }
    except LookupError:
        pass
    # Before, only large leaves were counted, in one number: an unsigned long
    # in v5.10.  Patches on the kvm list on the way to 71f51d2c3253 made it
    # an atomic64_t; no kernel tested here has that, but its .counter is read
    # where there is one.
    lpages = stat.lpages
    try:
        lpages = lpages.counter
    except AttributeError:
        pass
    return {"lpages": int(lpages)}


def _differences(leaves: Dict[str, int], counters: Dict[str, int]) -> List[str]:
    if "lpages" in counters:
        large = leaves["2M"] + leaves["1G"]
        return [] if large == counters["lpages"] else ["lpages"]
    return [
        name
        for name, key in (("pages_4k", "4K"), ("pages_2m", "2M"), ("pages_1g", "1G"))
        if counters[name] != leaves[key]
    ]


def _notes(
    by_mmu: Dict[str, Dict[str, int]], counters: Dict[str, int], differences: List[str]
) -> List[str]:
    """Known kernel behaviour that accounts for a difference, when the numbers
    fit it exactly; the difference itself stays flagged."""
    if differences != ["lpages"]:
        return []
    tdp_large = by_mmu["tdp_mmu"]["2M"] + by_mmu["tdp_mmu"]["1G"]
    legacy_large = by_mmu["legacy"]["2M"] + by_mmu["legacy"]["1G"]
    if tdp_large and counters["lpages"] == legacy_large:
        # Only the counter's own value can tell: the fix changed code, not a
        # type or a symbol.  Stable kernels may have it backported.
        return [
            f"lpages counts only the legacy MMU's {legacy_large} large leaves, not the "
            f"TDP MMU's {tdp_large}: the TDP MMU was not counted before Linux kernel "
            f"commit 1699f65c8b65 (\"kvm/x86: Fix 'lpages' kvm stat for TDM MMU\") "
            f"(in v5.13)"
        ]
    return []


class _CountingMem:
    """A PhysMem that counts the table pages read (one 4 KiB read each)."""

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        self.tables = 0

    def read(self, address: int, size: int) -> bytes:
        data = self.mem.read(address, size)
        if size == PAGE_SIZE:
            self.tables += 1
        return data


def vm_stats(kvm: Object, max_tables: int = MAX_TABLES, mem: Optional[PhysMem] = None) -> VmStats:
    """Count the leaves of every live table of the VM and read KVM's counters.

    >>> stats = vm_stats(find_vm(prog, 4242))
    >>> stats.leaves == {"4K": stats.kvm["pages_4k"], "2M": stats.kvm["pages_2m"],
    ...                  "1G": stats.kvm["pages_1g"]}
    True

    What is corrupt is not counted and is named in ``broken``, and the rest
    is counted: a root or shadow page whose role.level no table can have, a
    leaf where no leaf can be (levels 4 and 5), a table page a TDP root
    reaches twice, a list of pages that loops.

    :param kvm: ``struct kvm *``
    :param max_tables: table pages read under one TDP MMU root, at most
    :param mem: host physical memory to read tables from; the program's by default
    :raises MissingDebugInfo: kvm.ko's debug info is missing
    """
    prog = kvm.prog_
    fmt = spte_format(kvm)
    counted = _CountingMem(mem or DrgnPhysMem(prog))
    counts = {"tdp_mmu": {1: 0, 2: 0, 3: 0}, "legacy": {1: 0, 2: 0, 3: 0}}
    roots = 0
    unreadable: List[Tuple[int, str]] = []
    broken: List[str] = []
    for sp in until_corrupt(for_each_tdp_mmu_root(kvm), broken):
        level = int(sp.role.level)
        hpa = int(virt_to_phys(prog, sp.spt))
        roots += 1
        if level not in ROOT_LEVELS:
            broken.append(
                f"{_bad_level('TDP MMU root', hpa, sp, level, 'a root level (2-5)')}; "
                "its leaves are not counted"
            )
            continue
        per_level, holes = count_leaves(
            counted, fmt, Root(hpa, level, True, level), max_tables=max_tables
        )
        for leaf_level, n in per_level.items():
            if leaf_level in LEVEL_KEYS:
                counts["tdp_mmu"][leaf_level] += n
            else:
                broken.append(_no_leaf_here("TDP MMU root", hpa, leaf_level, n))
        for u in holes:
            if u.kind == "unreadable":
                unreadable.append((u.table, u.error))
            else:
                broken.append(f"level-{u.level} table page {u.table:#x}: {u.error}")
    for sp in until_corrupt(for_each_active_mmu_page(kvm), broken):
        level = int(sp.role.level)
        if int(sp.root_count):
            roots += 1
        try:
            hpa = int(virt_to_phys(prog, sp.spt))
        except (FaultError, ValueError) as e:
            unreadable.append((int(sp.spt), str(e)))
            continue
        if not 1 <= level <= max(ROOT_LEVELS):
            broken.append(
                f"{_bad_level('shadow page', hpa, sp, level, 'a level (1-5)')}; "
                "its leaves are not counted"
            )
            continue
        try:
            n = count_table_leaves(counted, fmt, hpa, level)
        except (PhysMemError, FaultError) as e:
            unreadable.append((int(sp.spt), str(e)))
            continue
        if level in counts["legacy"]:
            counts["legacy"][level] += n
        elif n:
            broken.append(_no_leaf_here("shadow page", hpa, level, n))
    by_mmu = {mmu: {LEVEL_KEYS[level]: n for level, n in c.items()} for mmu, c in counts.items()}
    leaves = {key: by_mmu["tdp_mmu"][key] + by_mmu["legacy"][key] for key in LEVEL_KEYS.values()}
    counters = kvm_page_counters(kvm)
    differences = _differences(leaves, counters)
    return VmStats(
        vm_pid(kvm),
        roots,
        counted.tables,
        leaves,
        counters,
        differences,
        unreadable,
        by_mmu,
        _notes(by_mmu, counters, differences),
        broken,
    )


def _bad_level(what: str, hpa: int, sp: Object, level: int, expected: str) -> str:
    return str(
        BadKernelValue(
            f"role.level of {what} {hpa:#x} (struct kvm_mmu_page {sp.value_():#x})",
            level,
            expected,
        )
    )


def _no_leaf_here(what: str, hpa: int, level: int, n: int) -> str:
    return (
        f"{n} leaf SPTE{'s' if n != 1 else ''} at level {level} under {what} {hpa:#x}: "
        f"the page-size bit is reserved at level {level}, the tables are corrupt; "
        "not counted"
    )
