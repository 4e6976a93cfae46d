# SPDX-License-Identifier: LGPL-2.1-or-later
"""Typed records of one cell: the ground truth as the L2 workload wrote it
(build/l2vmm --truth), what vm-test/check_views.py and the other runs
recorded in each view, the whole cell's result (``cell.json``), and the
problems the checks find.

These are TypedDicts over the JSON the harness writes and reads, so a
cell.json stays what it was; ``load_*`` are the one place JSON becomes a
record (``Any`` stops there, but for the L1 agent's report and the JSON of
the first-page scripts, which the tests read as they are).  They are
``total=False``: run.py fills a CellResult step by step, a failed run leaves
keys out, and the unit tests build partial ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import (
    Any,
    Dict,
    Iterator,
    List,
    Literal,
    NamedTuple,
    Optional,
    Tuple,
    TypedDict,
    cast,
)

AddrKind = Literal["gpa", "gva"]

# -- Ground truth (build/l2vmm --truth FILE) --------------------------------


class Memslot(TypedDict, total=False):
    """A memslot as the VMM created it."""

    as_id: int
    slot: int
    gpa: int
    size: int
    hva: int
    flags: int
    backing: str  # anon, thp, hugetlb1g


class Page(TypedDict, total=False):
    """A page the guest tagged: its addresses, the host PFN the VMM read in
    /proc/self/pagemap, and the 8-byte tag it wrote there."""

    vcpu: int
    slot: int
    gva: int
    gpa: int
    hva: int
    pfn: int
    tag: int
    host_thp: bool


class HostChange(Page, total=False):
    """A tagged page that l2vmm --host-changes changed on the host after the
    guest wrote its tag: ``change`` is madv_dontneed, mprotect_readonly,
    mprotect_readonly_read (before the guest's second run, which read it),
    memslot_moved (``new_gpa``: where its memslot went) or memslot_deleted;
    ``pfn`` is pagemap's before the change, ``host_present`` whether pagemap
    still has the page (then at that PFN)."""

    change: str
    new_gpa: Optional[int]
    host_present: bool


class VcpuTruth(TypedDict):
    """One vCPU as its own (pinned) thread saw it after the guest halted:
    KVM_RUN's exit reason, KVM_GET_SREGS, KVM_GET_REGS, KVM_GET_MP_STATE and
    KVM_GET_STATS_FD (None before 5.14)."""

    id: int
    tid: int
    comm: str
    cpu: int
    exit_reason: int
    mp_state: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    rip: int
    stats: Optional[Dict[str, Any]]


class Truth(TypedDict, total=False):
    """One L2 workload's ground truth."""

    pid: int
    vcpus: List[int]
    memslots: List[Memslot]
    pages: List[Page]  # the tagged pages as the guest left them
    host_changes: List[HostChange]  # the ones the host changed afterwards (l2vmm --host-changes)
    cr3: int
    first_cr3: int  # != cr3 when the guest switched CR3 (l2vmm --switch-cr3)
    guest_pt_pages: List[int]  # GPAs of the guest's own page-table pages
    vm_stats: Optional[Dict[str, Any]]  # KVM_GET_STATS_FD of the VM (None before 5.14)
    vcpu_state: List[VcpuTruth]  # what each vCPU's thread saw once the guest halted
    guest_maps: List[List[int]]  # [gva, gpa, len] runs of the guest's tables
    host_runs: List[List[int]]  # [gpa, hpa, len] runs of the host's pagemap
    guest_paging: str  # 64, pae, 32
    guest_2m: bool
    # What l2vmm planted of a Linux kernel: {note_gpa, osrelease, reads:
    # [[kernel address, GPA, tag], ...]} (drgn_kvmwalk.gprog's linux=True)
    made_up_linux: Dict[str, Any]


# -- What kvmwalk answered (vm-test/check_views.py) -------------------------


class ShadowPage(TypedDict, total=False):
    """--annotate's struct kvm_mmu_page of one table."""

    level: int
    tdp_mmu: bool
    invalid: bool
    direct: bool
    gfn: int
    root_count: int


class Step(TypedDict, total=False):
    kind: str  # pae_root, table, leaf, ...
    level: int
    sp: Optional[ShadowPage]
    sptep: int
    spte: int
    leaf: bool


class Walk(TypedDict, total=False):
    """One --addr --json record; ``tag_at_hpa`` is what check_views.py read
    at its HPA (None where the view does not hold it)."""

    addr: int
    mmu: str
    format: str
    tdp_mmu: bool
    direct: bool
    root: str  # --root all/prev label: current, prev[N], ...
    root_hpa: int
    root_level: int
    steps: List[Step]
    hpa: Optional[int]
    stop: Any
    page_size: int
    tag_at_hpa: Optional[int]


class GuestStep(TypedDict, total=False):
    """One guest page-table entry of a --gva walk."""

    level: int
    index: int
    gpa: int
    hpa: Optional[int]
    pte: int
    present: bool
    leaf: bool
    source: str


class GvaWalk(TypedDict, total=False):
    """One --gva --json record, with ``tag_at_hpa`` as for Walk."""

    addr: int
    mmu: str
    cr3: int
    cr3_source: str
    guest_level: int
    guest_steps: List[GuestStep]
    gpa: Optional[int]
    guest_page_size: Optional[int]
    steps: List[Step]
    spte_hpa: Optional[int]
    hpa: Optional[int]
    page_size: Optional[int]
    hpa_source: Optional[str]
    stop: Optional[str]
    stop_in: Optional[str]
    mismatch: Optional[str]
    tag_at_hpa: Optional[int]


class Leaf(TypedDict, total=False):
    """One --dump --json record."""

    addr: int
    level: int
    hpa: int
    sptep: int
    flags: List[str]


class MapRange(TypedDict, total=False):
    """One --map --json record (with --annotate: ``sp``)."""

    start: int
    end: int
    hpa: int
    level: int
    flags: List[str]
    sp: Optional[ShadowPage]


class StatsRecord(TypedDict, total=False):
    """One --stats --json record (one VM)."""

    vm: int
    match: bool
    differences: List[str]
    notes: List[str]
    tables: int
    leaves: Dict[str, int]
    kvm: Dict[str, int]


class Run(TypedDict, total=False):
    """One in-process kvmwalk run: exit status, stderr, time."""

    rc: int
    stderr: str
    seconds: float


class WalkRun(Run, total=False):
    records: List[Walk]


class GvaRun(Run, total=False):
    records: List[GvaWalk]


class ReadPiece(TypedDict):
    addr: int
    length: int
    gpa: Optional[int]
    hpa: Optional[int]
    bytes: Optional[str]
    error: Optional[str]


class ReadRecord(TypedDict, total=False):
    """One --read --json record, with ``truth_hex`` (check_views.py): the
    same bytes read at the ground truth's HPAs, "??" where it has none."""

    vm: int
    vcpu: int
    addr: int
    length: int
    space: str
    bytes: Optional[str]
    missing: int
    pieces: List[ReadPiece]
    truth_hex: str


class ReadRun(Run, total=False):
    records: List[ReadRecord]


class TextRun(Run, total=False):
    stdout: str


class DumpRun(Run, total=False):
    records: List[Leaf]


class MapRun(Run, total=False):
    records: List[MapRange]


class StatsRun(Run, total=False):
    records: List[StatsRecord]


class VerifyRun(Run, total=False):
    """--verify --json: problem records, then one summary per VM (the ones
    with "checked")."""

    records: List[Dict[str, Any]]


class HpaRun(Run, total=False):
    """--hpa --json of every tagged page's pagemap HPA, and of the leaf
    table pages of vCPU 0's walks: ``asked`` says what each HPA is."""

    records: List[Dict[str, Any]]
    asked: List[Dict[str, Any]]  # {"hpa", "page": index} or {"hpa", "table_level", "root"}


class ListThread(TypedDict):
    pid: int
    comm: Optional[str]


class ListVcpu(TypedDict, total=False):
    id: int
    root_hpa: int
    root_level: int
    direct: bool
    address: Optional[int]
    mp_state: Optional[str]
    cpu: Optional[int]
    thread: Optional[ListThread]
    exit_reason: Optional[int]
    exit_reason_name: Optional[str]
    cr0: Optional[int]
    cr3: Optional[int]
    cr4: Optional[int]
    efer: Optional[int]
    rip: Optional[int]
    stat: Optional[Dict[str, Any]]


class ListSlot(TypedDict, total=False):
    as_id: int
    id: int
    base_gfn: int
    npages: int
    hva: int
    flags: int
    flag_names: List[str]
    address: Optional[int]


class ListVm(TypedDict, total=False):
    """One VM of --list --json."""

    pid: int
    mmu: str
    tdp_mmu: bool
    stats_id: Optional[str]
    address: Optional[int]
    vcpus: List[ListVcpu]
    memslots: List[ListSlot]
    stat: Optional[Dict[str, Any]]


class ListRun(Run, total=False):
    vms: Optional[List[ListVm]]


class VcpuRun(TypedDict, total=False):
    """Everything check_views.py ran for one vCPU of one workload."""

    rc: int
    stderr: str
    seconds: float
    walks: List[Walk]  # --addr of every tagged page
    annotated: WalkRun  # --annotate of a few
    all_roots: WalkRun  # --root all, first page
    prev_root: WalkRun  # --root prev --annotate (a guest that switched CR3)
    gva: GvaRun  # --gva of every tagged page
    gva_first_cr3: GvaRun  # the same --cr3 first_cr3 (a guest that switched CR3)
    gva_text: TextRun  # --gva of the first two, as text
    read: ReadRun  # --read across the start of every tagged page (--addr's addresses)
    read_gva: ReadRun  # the same with --gva: through the guest's tables
    read_text: TextRun  # --gva --read of the first tagged page, as text
    guest_program: Dict[str, Any]  # drgn_kvmwalk.gprog's Programs (checks/gprog.py)
    dump: DumpRun
    map: MapRun
    map_annotated: MapRun


class WorkloadRun(TypedDict, total=False):
    view: str
    addr_kind: AddrKind
    vcpus: Dict[str, VcpuRun]  # keyed by the vCPU id as text (JSON)
    hpa: HpaRun
    # --addr of each page l2vmm --host-changes changed, from each vCPU
    # ({"walks": {vCPU id: WalkRun}, "hpa": HpaRun}; checks/hostchanges.py)
    host_changes: Dict[str, Any]


class ProcRun(TypedDict, total=False):
    """One subprocess (run.run_command), or an agent's check in L1."""

    cmd: str
    rc: Optional[int]
    stdout: str
    stderr: str
    seconds: Optional[float]


class ViewResult(TypedDict, total=False):
    """check_views.py's output for one view, or ``error``: the failed run."""

    view: str
    list: ListRun
    stats: StatsRun
    verify: VerifyRun
    workloads: Dict[str, WorkloadRun]
    readme_guest: Dict[str, Any]  # README's guest-Program block: stdout, error
    error: ProcRun


class KdumpReaderResult(TypedDict):
    """drgn_kvmwalk.kdump's pages beside the ELF dump's (run.compare_kdump_reader)."""

    release: str
    held: int
    compared: int
    tagged: int
    mismatches: List[str]


class CellResult(TypedDict, total=False):
    """One cell (``<workdir>/cell.json``)."""

    suite: str
    mode: str
    tcg_threads: str  # "single", "multi", or "default" (QEMU's: one thread per vCPU)
    release: str
    addr_kind: AddrKind
    root_levels: Dict[str, int]  # per workload, what the kernel must give
    ready: Dict[str, Any]  # the L1 agent's report (l1.L1.wait_ready)
    truth: Dict[str, Truth]
    views: Dict[str, ViewResult]
    one_walk: Dict[str, ProcRun]  # drgn contrib/kvmwalk.py, one address
    console: Dict[str, ProcRun]  # the kvmwalk console script
    plugin: Dict[str, ProcRun]  # %kvmwalk
    errors: Dict[str, ProcRun]  # run.ERROR_CASES
    drgn_code: Dict[str, Any]  # vm-test/drgn_code_check.py's JSON
    readme_api: Dict[str, Any]  # vm-test/readme_api.py's JSON
    dump_seconds: float
    agent_rc: Optional[int]
    release_error: str
    dump_level: int
    compress_seconds: float
    libkdumpfile_reads: bool
    kdump_reader: KdumpReaderResult
    # vm-test/fault_dumps.py: --verify of a copy of the ELF dump, before,
    # with each fault made on purpose, and after ({"error": ProcRun} if it failed)
    fault_dumps: Dict[str, Any]
    # vm-test/corrupt_dumps.py: kernel state corrupted in the same copy, one
    # change at a time, and what the tool said ({"error": ProcRun} if it failed)
    corrupt_dumps: Dict[str, Any]
    # matrix.CHURN_CELLS: the live-change run (run.churn_phase)
    churn: Dict[str, Any]
    seconds: float
    first_attempt_failure: str


# -- Problems ---------------------------------------------------------------


class Problem(NamedTuple):
    """One mismatch a check found.  ``view`` is live, qmp, elf or kdump, or
    None for a check of the whole cell; ``check`` names what was checked
    (see checks.CHECKS); ``message`` is the full sentence, where included."""

    view: Optional[str]
    check: str
    message: str

    def __str__(self) -> str:
        return self.message


# -- The JSON boundary ------------------------------------------------------


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def load_truth(path: Path) -> Truth:
    return cast(Truth, _load(path))


def load_view(path: Path) -> ViewResult:
    return cast(ViewResult, _load(path))


def load_cell(path: Path) -> CellResult:
    return cast(CellResult, _load(path))


def load_json(path: Path) -> Dict[str, Any]:
    """A script's JSON result that the tests read as it is."""
    return dict(_load(path))


def pagemap_hpa(page: Page, kind: AddrKind) -> int:
    """The host physical address of a tagged page's ``kind`` address (gpa or
    gva), from the PFN the VMM read in /proc/self/pagemap."""
    return int(page["pfn"]) << 12 | (page[kind] & 0xFFF)


def truth_gpa(truth: Truth, gva: int) -> Optional[int]:
    """The GPA the workload's own page tables map ``gva`` to (its
    ``guest_maps``), or None."""
    return next((g + (gva - v) for v, g, n in truth["guest_maps"] if v <= gva < v + n), None)


def host_hpa(truth: Truth, gpa: Optional[int]) -> Optional[int]:
    """The HPA pagemap gives ``gpa`` (None when its page was not present)."""
    if gpa is None:
        return None
    return next((h + (gpa - g) for g, h, n in truth["host_runs"] if g <= gpa < g + n), None)


def truth_hpa(truth: Truth, kind: AddrKind, addr: int) -> Optional[int]:
    """The HPA of guest address ``addr`` (a ``kind`` address) by the ground
    truth alone: the guest's GVA -> GPA runs for a GVA, then pagemap."""
    return host_hpa(truth, truth_gpa(truth, addr) if kind == "gva" else addr)


class VcpuRuns(NamedTuple):
    """What check_views.py ran for one vCPU of one workload in one view."""

    view: str
    name: str  # the workload
    truth: Truth
    vcpu: int
    runs: VcpuRun
    where: str  # "view workload vcpu N", for messages


def each_view(result: CellResult, views: List[str]) -> Iterator[Tuple[str, ViewResult]]:
    """Every view of ``views`` that has a result, with it (walks.RESULT
    reports the others)."""
    for view in views:
        v = result["views"].get(view)
        if v is not None and "error" not in v:
            yield view, v


def each_vcpu_runs(result: CellResult, views: List[str]) -> Iterator[VcpuRuns]:
    """Every view of ``views`` that has a result (walks.RESULT reports the
    others), every workload it ran and every vCPU of it."""
    for view, v in each_view(result, views):
        for name, truth in result["truth"].items():
            wl = v["workloads"].get(name)
            if wl is None:
                continue
            for vcpu in truth["vcpus"]:
                runs = wl["vcpus"].get(str(vcpu), cast(VcpuRun, {}))
                yield VcpuRuns(view, name, truth, vcpu, runs, f"{view} {name} vcpu {vcpu}")


def switched_cr3(truth: Truth) -> bool:
    """The guest started on a copy of its top-level table, then loaded the
    real one (l2vmm --switch-cr3)."""
    return bool(truth["first_cr3"] != truth["cr3"])
