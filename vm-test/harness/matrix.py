# SPDX-License-Identifier: LGPL-2.1-or-later
"""The VM test matrix: the kernels (Debian suites), the MMU modes L1 boots
in, the L2 workloads each mode runs, and what a kernel must give, keyed on
what the kernel has (its version, for a change that came with a known
commit), never on the name of the suite that ships it.

The tool itself probes the kernel's structures and never compares version
numbers (distributions backport); the harness may, because it knows which
Debian kernel it booted and what that kernel gives."""

from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

from .records import AddrKind


def kernel_version(release: str) -> Tuple[int, int]:
    """VERSION.PATCHLEVEL of a kernel release (5.10.0-46-amd64 -> (5, 10);
    7.3-amd64 -> (7, 3))."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(m.group(1)), int(m.group(2))


def npt_follows_host_paging(release: str) -> bool:
    """Since Linux kernel commit 43e540cc9f2c ("KVM: SVM: Add 5-level page
    table support for SVM") (in v5.15), get_npt_level() gives 5 levels on a
    host with 5-level paging; before it, 4 levels whatever the host's
    paging.  (Its series also has cb0f722aff6e ("KVM: x86/mmu: Support
    shadowing NPT when 5-level paging is enabled in host") and 746700d21fd5
    ("KVM: x86: Allow CPU to force vendor-specific TDP level").)"""
    return kernel_version(release) >= (5, 15)


def tdp_mmu_child_has_own_level(release: str) -> bool:
    """Since Linux kernel commit f1b832550832 ("KVM: x86/mmu: Fix TDP MMU page
    table level") (in v5.14), a TDP MMU child page's role.level is its own
    level; before it, the parent's (Debian's 5.10 shows that)."""
    return kernel_version(release) >= (5, 14)


def tdp_mmu_counts_lpages(release: str) -> bool:
    """Since Linux kernel commit 1699f65c8b65 ("kvm/x86: Fix 'lpages' kvm stat
    for TDM MMU") (in v5.13), KVM counts the TDP MMU's large pages in
    lpages; before it, --stats must flag that difference and explain it."""
    return kernel_version(release) >= (5, 13)


def dump_level(release: str) -> int:
    """makedumpfile's page filter for a dump of kernel ``release``.  -d 31
    (drop user, cache and free pages) reads page flags whose layout changes
    between kernels; Debian bookworm's makedumpfile 1.7.2 misjudges 6.12's
    and drops module notes that drgn needs, so 6.12 and newer get -d 1 (zero
    pages only, judged by content)."""
    return 31 if kernel_version(release) < (6, 12) else 1


class Workload(NamedTuple):
    """One L2 guest (build/l2vmm) run in the cell's L1 boot."""

    opts: List[str]  # extra l2vmm options
    root_level: Optional[int] = None  # when not the mode's: 32-bit guests under
    # shadow paging get a PAE root (3 levels)


class Mode(NamedTuple):
    """How L1 boots for one MMU mode, and which L2 workloads run in it."""

    append: List[str]  # L1 kernel command line (kvm_amd loads by itself at
    # boot under -cpu max: module parameters go here)
    cpu_features: List[str]  # appended to -cpu
    workloads: Dict[str, Workload]
    root_level: int  # the NPT/shadow root level the boot must give
    memory: str = "2G"  # L1 RAM

    def expected_root_level(self, release: str, workload: str) -> int:
        """The root level kernel ``release`` gives ``workload`` in this mode."""
        level = self.workloads[workload].root_level or self.root_level
        if level == 5 and not npt_follows_host_paging(release):
            return 4
        return level


# The base workload of every mode also changes its memory on the host after
# the guest wrote it (l2vmm --host-changes: memslot moved and deleted,
# mprotect, MADV_DONTNEED), for checks/hostchanges.py.
# Under TDP, three guests whose data pages the host backs with 4K pages, with
# transparent huge pages, and with one 1 GiB hugetlbfs page: 4K, 2M and 1G
# leaves.  L1 reserves that 1 GiB page at boot (a 2G L1 cannot find a free,
# aligned GiB for it; 4G can).  For --gva they page in each of the guest's
# modes: 4-level, PAE with 2 MiB guest pages, and 32-bit.
_TDP_WORKLOADS = {
    "base": Workload(["--host-changes"]),
    "thp": Workload(["--thp", "--guest-paging", "pae", "--guest-2m"]),
    "1g": Workload(["--backing", "hugetlb1g", "--guest-paging", "32"]),
}
_HUGETLB_1G = ["hugepagesz=1G", "hugepages=1"]

MODES: Dict[str, Mode] = {
    # TDP MMU (off by default before v5.15) on 5-level host paging (-cpu max
    # has LA57): 5-level NPT roots.
    "tdp_mmu": Mode(["kvm.tdp_mmu=1", *_HUGETLB_1G], [], _TDP_WORKLOADS, 5, "4G"),
    # Legacy MMU on 4-level host paging: 4-level NPT roots.
    "legacy": Mode(["kvm.tdp_mmu=0", *_HUGETLB_1G], ["la57=off"], _TDP_WORKLOADS, 4, "4G"),
    # Shadow paging: the root follows the guest's paging.  A 64-bit guest
    # (4-level root); a 32-bit PAE guest and a 32-bit non-PAE guest, whose
    # shadow pages KVM enters through mmu->pae_root (3 levels); and a 64-bit
    # guest mapping its data with 2 MiB pages over THP-backed host memory,
    # which KVM shadows with 2M leaves.  The 64-bit guest starts on a copy of
    # its top-level table and then loads the real one, so KVM keeps its first
    # root in mmu->prev_roots (--root prev).
    "shadow": Mode(
        ["kvm_amd.npt=0"],
        [],
        {
            "base": Workload(["--switch-cr3", "--host-changes"]),
            "pae": Workload(["--guest-paging", "pae"], root_level=3),
            "32": Workload(["--guest-paging", "32"], root_level=3),
            "2m": Workload(["--guest-2m", "--thp"]),
        },
        4,
    ),
}
VIEWS = ["live", "qmp", "elf", "kdump"]
# The cells with a live-change run: one more L2 VM (l2vmm --churn-log) whose
# host keeps changing its memory (MADV_DONTNEED, mprotect, MADV_COLLAPSE,
# KSM, memslot delete and add) while the tool runs in a loop, for
# CHURN_SECONDS live inside L1 and then as long over QMP (checks/churn.py).
# vm-test/cell.py --churn-seconds runs it in any cell.
CHURN_CELLS: Set[Tuple[str, str]] = {("bookworm", "shadow"), ("trixie", "tdp_mmu")}
CHURN_SECONDS = 60
# The churn VM: 64-bit guest, 4K guest pages, slot 1 THP-backed (so that
# MADV_DONTNEED and mprotect of single pages split THPs, and MADV_COLLAPSE
# makes them again).
CHURN_OPTS = ["--thp", "--churn-collapse", "--churn-ksm"]
# The cells whose L1 runs on one TCG thread (-accel tcg,thread=single; see
# l1.L1).  With nested paging and QEMU's default of one thread per vCPU,
# the churn crashed the L2 guest (triple fault), hung an L1 CPU in guest
# mode, or panicked L1 ("corrupted stack end detected inside scheduler"):
# in stop 22's cells with the tool reading (6 of 9 runs), and with the
# churn VM alone (7 of 16 runs, then 0 of 15 with vm-test/churn_soak.py:
# the rate changes with something not found); never on one thread (5 runs
# and a cell) nor under shadow paging (6 runs and a cell).  See
# vm-test/l2vmm-notes.md.
TCG_SINGLE_CELLS: Set[Tuple[str, str]] = {("trixie", "tdp_mmu")}
# The kernels the tests cover (Debian suites; see kernels.py).  experimental
# carries the newest kernel while it has one (see kernels.OPTIONAL).
SUITES = ["bullseye", "bookworm", "trixie", "sid", "experimental"]


def addr_kind(mode: str) -> AddrKind:
    """The address kvmwalk is given: a GVA under shadow paging, else a GPA."""
    return "gva" if mode == "shadow" else "gpa"
