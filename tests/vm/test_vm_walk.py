# SPDX-License-Identifier: LGPL-2.1-or-later
"""Walk a real L2 guest's tables in real Debian KVM hosts (L1 in QEMU).

One L1 boot per (kernel, MMU mode) (harness.run.run_cell) serves every check of it: the
tool's answer for each tagged page of both vCPUs, in each view (live inside
L1, QMP from outside, ELF dump, kdump-compressed dump), is compared with the
ground truth the workload recorded (pagemap PFNs and the tags it wrote).
"""

import json
import os
import re

import pytest
from conftest import fetch_kernel
from harness import TOP, checks
from harness.checks import errors
from harness.checks.entry import KDUMP_REFUSED_HINT
from harness.checks.walks import SIZE_1G, SIZE_2M, SIZE_4K, expected_page_size
from harness.matrix import CHURN_CELLS, MODES, VIEWS
from harness.matrix import SUITES as ALL_SUITES
from harness.records import pagemap_hpa, switched_cr3
from harness.run import run_cell

pytestmark = pytest.mark.vm

# The kernels to test, as Debian suites (KVMWALK_SUITES=bookworm,trixie,...).
SUITES = os.environ.get("KVMWALK_SUITES", ",".join(ALL_SUITES)).split(",")
CELLS = [(suite, mode) for suite in SUITES for mode in MODES]


@pytest.fixture(scope="session", params=CELLS, ids=[f"{s}-{m}" for s, m in CELLS])
def cell_result(request):
    suite, mode = request.param
    fetch_kernel(suite)
    workdir = TOP / "build" / "vm" / f"{suite}-{mode}"
    try:
        return run_cell(suite, mode, workdir, log=lambda m: print(m, flush=True))
    except Exception as e:
        # One more boot when L1 itself failed (an L1 frozen under TCG on a
        # loaded host was seen here, and L1 kernels oopsing on int3 at a
        # static key patched during boot: see CHANGELOG); the first failure
        # stays in the result, with what else ran on this host then.
        print(
            f"[cell] {suite}/{mode}: first attempt failed, booting again: {e!r}; "
            f"host: {host_load()}",
            flush=True,
        )
        result = run_cell(suite, mode, workdir, log=lambda m: print(m, flush=True))
        result["first_attempt_failure"] = repr(e)[-2000:]
        return result


def host_load():
    """The load average and the QEMU processes still running: what else
    competed with L1 for this machine's CPUs when it failed."""
    import subprocess

    try:
        qemus = subprocess.run(
            ["pgrep", "-a", "qemu-system"], capture_output=True, text=True
        ).stdout.splitlines()
    except OSError as e:
        qemus = [f"(pgrep: {e})"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"load {load}; {len(qemus)} QEMU processes: {[q[:120] for q in qemus]}"


def first_truth(cell_result):
    return next(iter(cell_result["truth"].values()))


def test_mmu_mode_is_what_l1_was_booted_with(cell_result):
    ready = cell_result["ready"]
    params = json.dumps(ready.get("params"))
    mode = cell_result["mode"]
    assert ready["ok"], ready.get("errors")
    # The agent stops the workloads cleanly on release, unless L1 froze after
    # everything was collected (then cell.py stopped it and says so).
    assert cell_result["agent_rc"] == 0 or cell_result.get("release_error"), cell_result["agent_rc"]
    for name, wl in cell_result["views"]["live"]["workloads"].items():
        w = wl["vcpus"]["0"]["walks"][0]
        assert w["root_level"] == cell_result["root_levels"][name], (name, w["root_level"])
        if mode == "shadow":
            assert w["mmu"] == "shadow" and not w["direct"], params
        else:
            assert w["mmu"] == "tdp" and w["format"] == "x86", params
            assert w["tdp_mmu"] == (mode == "tdp_mmu"), params


def test_truth_covers_both_vcpus_and_slots(cell_result):
    for truth in cell_result["truth"].values():
        assert sorted(truth["vcpus"]) == [0, 1]
        assert len(truth["memslots"]) >= 2
        assert {p["vcpu"] for p in truth["pages"]} == {0, 1}
        assert len({p["slot"] for p in truth["pages"]}) >= 2
        assert any(p["gva"] != p["gpa"] for p in truth["pages"])  # non-identity GVA -> GPA


def test_workloads_are_what_the_mode_asks_for(cell_result):
    """The guests really ran in the paging modes and on the backings the
    expectations assume, so that a walk ignoring PAE roots or large leaves
    cannot pass unnoticed."""
    truths = cell_result["truth"]
    assert set(truths) == set(MODES[cell_result["mode"]].workloads)
    for name, truth in truths.items():
        backing = {s["slot"]: s["backing"] for s in truth["memslots"]}
        if name == "1g":
            assert backing[1] == "hugetlb1g"
        if name in ("thp", "2m"):
            data = [p for p in truth["pages"] if p["slot"] == 1]
            assert all(p["host_thp"] for p in data), "THP did not back the data pages"
        opts = MODES[cell_result["mode"]].workloads[name].opts
        paging = opts[opts.index("--guest-paging") + 1] if "--guest-paging" in opts else "64"
        assert truth["guest_paging"] == paging
        assert truth["guest_2m"] == ("--guest-2m" in opts)
        assert switched_cr3(truth) == ("--switch-cr3" in opts)


def test_leaf_sizes_follow_the_backing(cell_result):
    """Every leaf size the mode can produce is expected of some page: 4K, 2M
    and 1G under TDP, 4K and 2M under shadow paging."""
    sizes = {
        expected_page_size(cell_result, t, p)
        for t in cell_result["truth"].values()
        for p in t["pages"]
    }
    if cell_result["addr_kind"] == "gpa":
        assert sizes == {SIZE_4K, SIZE_2M, SIZE_1G}
    else:
        assert sizes == {SIZE_4K, SIZE_2M}


_CHECKED = {}  # id(cell result) -> its problems, checked once per cell


def _problems(cell_result, view, *which):
    """The problems of ``view`` whose check is one of ``which``, as text."""
    key = id(cell_result)
    if key not in _CHECKED:
        _CHECKED[key] = (cell_result, checks.check_cell(cell_result))
    problems = checks.select(_CHECKED[key][1], view, *which)
    return "\n".join(p.message for p in problems[:40])


@pytest.mark.parametrize("view", VIEWS)
def test_view_matches_ground_truth(cell_result, view):
    problems = _problems(cell_result, view, checks.RESULT, checks.WALK)
    assert not problems, problems
    for name, truth in cell_result["truth"].items():
        wl = cell_result["views"][view]["workloads"][name]
        n = sum(len(r["walks"]) for r in wl["vcpus"].values())
        assert n == len(truth["pages"]) * len(truth["vcpus"])
        if view != "kdump" or cell_result["dump_level"] & 8 == 0:  # -d 31 drops user pages
            tags = sum(1 for r in wl["vcpus"].values() for w in r["walks"] if w["tag_at_hpa"])
            assert tags == n


@pytest.mark.parametrize("view", VIEWS)
def test_gva_matches_ground_truth(cell_result, view):
    """--gva of every tagged GVA of both vCPUs: the guest's walk from its CR3
    (the current one after a CR3 switch) through the page-table pages the
    workload built, each at its pagemap HPA; the workload's GPA; the pagemap
    HPA through KVM's SPTEs (shadow paging: through the memslot and the
    VMM's page tables, and the shadow root agreeing); the tag there."""
    problems = _problems(cell_result, view, checks.GVA)
    assert not problems, problems
    levels = set()
    for name, truth in cell_result["truth"].items():
        wl = cell_result["views"][view]["workloads"][name]
        records = [w for r in wl["vcpus"].values() for w in r["gva"]["records"]]
        assert len(records) == len(truth["pages"]) * len(truth["vcpus"])
        levels |= {w["guest_level"] for w in records}
        if view != "kdump" or cell_result["dump_level"] & 8 == 0:  # -d 31 drops user pages
            assert all(w["tag_at_hpa"] == p["tag"] for w, p in zip(records, truth["pages"] * 2))
        else:  # and with them the guest's own tables: said, not made up
            assert all(w["gpa"] is None for w in records)
    assert levels == {2, 3, 4}, "the cell's guests page in 32-bit, PAE and 4-level modes"


@pytest.mark.parametrize("view", VIEWS)
def test_guest_program_reads_what_the_guest_wrote(cell_result, view):
    """drgn_kvmwalk.gprog: a drgn Program of the guest through the SPTEs
    (TDP; refused under shadow paging) and through the memslots, at every
    tagged page's GPA and GVA of both vCPUs: each byte the one at the HPA
    the ground truth gives, the tag where the guest wrote it, nothing where
    the truth has nothing; linux=True at the kernel addresses of the Linux
    layout the VMM planted; and README's block, as it stands there."""
    problems = _problems(cell_result, view, checks.GUEST_PROGRAM, checks.README_GUEST)
    assert not problems, problems
    in_view = view != "kdump" or cell_result["dump_level"] & 8 == 0  # guest memory in view
    for truth in cell_result["truth"].values():
        assert "made_up_linux" in truth
    v = cell_result["views"][view]
    runs = [r["guest_program"] for wl in v["workloads"].values() for r in wl["vcpus"].values()]
    throughs = ["memslot"] + (["spte"] if cell_result["addr_kind"] == "gpa" else [])
    tags = [rec["phys_tag"]["bytes"] for g in runs for t in throughs for rec in g[t]["reads"]]
    assert tags and (all(tags) if in_view else True)
    linux = [g["linux"] for g in runs if "linux" in g]
    assert len(linux) == len(v["workloads"])
    if in_view:
        assert all(lx["error"] is None for lx in linux)
        assert v["readme_guest"]["error"] is None


@pytest.mark.parametrize("view", VIEWS)
def test_list_shows_each_vcpu_as_the_vmm_saw_it(cell_result, view):
    """--list per vCPU: run state, the CPU its (pinned) thread ran on, the
    thread, the last exit (KVM_EXIT_HLT), CR0/CR3/CR4/EFER/RIP as
    KVM_GET_SREGS/KVM_GET_REGS gave them, and vcpu->stat and kvm->stat as
    KVM_GET_STATS_FD gave them (5.14 and newer)."""
    problems = _problems(cell_result, view, checks.VCPU_STATE)
    assert not problems, problems
    for truth in cell_result["truth"].values():
        assert len(truth["vcpu_state"]) == len(truth["vcpus"])
        if cell_result["release"].startswith("5.10"):
            assert truth["vm_stats"] is None  # no KVM_GET_STATS_FD before 5.14
        else:
            assert truth["vm_stats"] and all(s["stats"] for s in truth["vcpu_state"])


@pytest.mark.parametrize("view", VIEWS)
def test_read_returns_what_the_guest_wrote(cell_result, view):
    """--read of 16 bytes across the start of every tagged page of both
    vCPUs, by the address --addr takes and as a GVA through the guest's
    tables: each byte the one at the HPA the ground truth gives, the tag
    where the guest wrote it, what is not in the view said and not made up;
    and the hexdump text of one."""
    problems = _problems(cell_result, view, checks.READ)
    assert not problems, problems
    for name, truth in cell_result["truth"].items():
        wl = cell_result["views"][view]["workloads"][name]
        for key in ("read", "read_gva"):
            records = [rec for r in wl["vcpus"].values() for rec in r[key]["records"]]
            assert len(records) == len(truth["pages"]) * len(truth["vcpus"])
            if view != "kdump" or cell_result["dump_level"] & 8 == 0:  # guest memory in view
                assert all(rec["pieces"][-1]["bytes"] is not None for rec in records)


@pytest.mark.parametrize("view", VIEWS)
def test_list_matches_the_vmm(cell_result, view):
    """--list: each workload's VM, its two vCPUs with the roots the walks used,
    and its memslots exactly as the VMM created them."""
    assert cell_result["views"][view]["list"]["rc"] == 0
    problems = _problems(cell_result, view, checks.LIST)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_annotate_names_the_shadow_pages(cell_result, view):
    """--annotate: each table on a walk's path has its struct kvm_mmu_page, of
    that level, mapping the GFNs the table covers (TDP) or shadowing one of the
    guest's own page-table pages (shadow paging)."""
    problems = _problems(cell_result, view, checks.ANNOTATE)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_map_annotate_names_each_ranges_table(cell_result, view):
    problems = _problems(cell_result, view, checks.MAP_ANNOTATE)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_root_all_includes_the_current_root(cell_result, view):
    problems = _problems(cell_result, view, checks.ROOT_ALL)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_root_prev_is_the_first_cr3s_root(cell_result, view):
    """--root prev: under shadow paging, the 64-bit guest started on a copy of
    its top-level table and then loaded the real one; KVM kept the first root
    in mmu->prev_roots, and every tagged page still translates through it."""
    if cell_result["mode"] != "shadow":
        pytest.skip(
            "under TDP a guest's CR3 switch does not reach KVM's MMU: no previous roots to check"
        )
    switched = [name for name, t in cell_result["truth"].items() if switched_cr3(t)]
    assert switched, "no shadow-paging workload switched CR3"
    for name in switched:
        for vcpu in cell_result["truth"][name]["vcpus"]:
            assert "prev_root" in cell_result["views"][view]["workloads"][name]["vcpus"][str(vcpu)]
    problems = _problems(cell_result, view, checks.ROOT_PREV)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_stats_equal_kvm_counters(cell_result, view):
    """--stats: leaf SPTEs counted over all of each VM's tables equal KVM's own
    per-VM counters, and the large leaves the workloads make are among them."""
    problems = _problems(cell_result, view, checks.STATS)
    assert not problems, problems
    by_pid = {r["vm"]: r for r in cell_result["views"][view]["stats"]["records"]}
    for name, truth in cell_result["truth"].items():
        leaves = by_pid[truth["pid"]]["leaves"]
        assert leaves["4K"] > 0
        if name in ("thp", "2m"):
            assert leaves["2M"] > 0, leaves
        if name == "1g":
            assert leaves["1G"] > 0, leaves


@pytest.mark.parametrize("view", VIEWS)
def test_verify_finds_no_problem_in_healthy_vms(cell_result, view):
    """--verify: every leaf SPTE of every VM against the memslots, the VMM's
    page tables and KVM's books: no problem, exit 0, and every leaf counted
    (in a dump, exactly KVM's own counters)."""
    problems = _problems(cell_result, view, checks.VERIFY)
    assert not problems, problems
    summaries = [r for r in cell_result["views"][view]["verify"]["records"] if "checked" in r]
    for truth in cell_result["truth"].values():
        s = [r for r in summaries if r["vm"] == truth["pid"]]
        assert s and s[0]["checked"] > 0 and s[0]["tables"] > 0, s


def test_verify_finds_faults_made_in_a_copy_of_the_dump(cell_result):
    """A leaf SPTE pointed at another page, a writable SPTE over a host PTE
    made read-only, a memslot shrunk under its leaves, a table page whose
    struct page no longer names its kvm_mmu_page: each found at its address,
    exit 1; the copy verifies clean before and after."""
    problems = _problems(cell_result, "elf", checks.VERIFY_FAULTS)
    assert not problems, problems


def test_corrupt_kernel_state_is_named_and_the_rest_goes_on(cell_result):
    """Kernel state corrupted in a copy of the dump (a root level of 15 in
    the vCPU's MMU and in the root's struct kvm_mmu_page, vm_list and the
    MMU's page list looping, the root's entry copied into 4 more entries,
    a leaf at level 4/5 in the upper half of the root): each named in one
    line, --stats and --list go on with the rest, --verify reports it, no
    traceback; every address --dump printed walks again to its SPTE."""
    problems = _problems(cell_result, "elf", checks.CORRUPT)
    assert not problems, problems


def test_live_changes_are_read_consistently_or_flagged(cell_result):
    """The tool in a loop, live in L1 and over QMP, while the host keeps
    changing a VM's memory (MADV_DONTNEED and mprotect of single pages of
    THPs, MADV_COLLAPSE, KSM merging, the memslot deleted and added again):
    no traceback, no hang, JSON output; every mapping not flagged "changed
    while read" is a host page pagemap showed for that guest page during the
    run."""
    if "churn" not in cell_result:
        pytest.skip(
            "no live-change run in this cell (matrix.CHURN_CELLS: "
            f"{', '.join(f'{s}-{m}' for s, m in sorted(CHURN_CELLS))}); "
            "vm-test/cell.py --churn-seconds runs it in any cell"
        )
    problems = _problems(cell_result, None, checks.CHURN)
    assert not problems, problems


@pytest.mark.parametrize("view", VIEWS)
def test_hpa_names_the_vm_and_guest_address(cell_result, view):
    """--hpa of each tagged page's pagemap HPA: the workload's VM and exactly
    its GPA (a GVA the guest maps to it under shadow paging), and the leaf
    table pages of walks as KVM table pages."""
    problems = _problems(cell_result, view, checks.HPA)
    assert not problems, problems
    for name, truth in cell_result["truth"].items():
        run = cell_result["views"][view]["workloads"][name]["hpa"]
        assert len([a for a in run["asked"] if "page" in a]) == len(truth["pages"]), name


@pytest.mark.parametrize("view", VIEWS)
def test_kvm_followed_the_hosts_changes(cell_result, view):
    """The base workload changed its memory on the host after the guest
    wrote it (memslot moved and deleted, mprotect, MADV_DONTNEED): the walks
    show those SPTEs zapped, or read-only where the guest read the page
    again, and --hpa agrees; --verify (above) finds no problem."""
    problems = _problems(cell_result, view, checks.HOST_CHANGES)
    assert not problems, problems
    changed = {
        name: truth["host_changes"]
        for name, truth in cell_result["truth"].items()
        if truth.get("host_changes")
    }
    assert "base" in changed, list(changed)
    kinds = sorted(c["change"] for c in changed["base"])
    assert kinds == sorted(
        [
            "madv_dontneed",
            "mprotect_readonly",
            "mprotect_readonly_read",
            "memslot_moved",
            "memslot_moved",
            "memslot_deleted",
        ]
    ), kinds
    run = cell_result["views"][view]["workloads"]["base"]["host_changes"]
    assert set(run["walks"]) == {str(v) for v in cell_result["truth"]["base"]["vcpus"]}


@pytest.mark.parametrize("view", VIEWS)
def test_map_and_dump_match_ground_truth(cell_result, view):
    """--map covers every tagged page, and every range it prints translates as
    the guest's tables and the host's pagemap say; --dump holds the same
    leaves."""
    problems = _problems(cell_result, view, checks.MAP, checks.DUMP)
    assert not problems, problems
    for name, truth in cell_result["truth"].items():
        for vcpu in truth["vcpus"]:
            r = cell_result["views"][view]["workloads"][name]["vcpus"][str(vcpu)]
            assert r["dump"]["records"] and r["map"]["records"]
            assert len(r["map"]["records"]) <= len(r["dump"]["records"])


def _first_page_hpa(cell_result):
    return pagemap_hpa(first_truth(cell_result)["pages"][0], cell_result["addr_kind"])


def _libkdumpfile_refuses(cell_result, view, r):
    """True when ``view`` is a kdump-compressed dump that libkdumpfile (drgn's
    reader) cannot read; then drgn -c must have failed with one line that
    points at the console script, which reads such dumps itself."""
    if view != "kdump" or cell_result["libkdumpfile_reads"]:
        return False
    lines = r["stderr"].strip().splitlines()
    assert lines and KDUMP_REFUSED_HINT in lines[-1], r
    assert "Traceback" not in r["stderr"] and "=> HPA" not in r["stdout"], r
    return True


@pytest.mark.parametrize("view", VIEWS)
def test_one_whole_process_walk(cell_result, view):
    """contrib/kvmwalk.py as a user runs it: text output, exit 0, right HPA."""
    w = cell_result["one_walk"][view]
    if _libkdumpfile_refuses(cell_result, view, w):
        assert w["rc"] == 2, w
        problems = _problems(cell_result, view, checks.KDUMP_ONE_WALK)
        assert not problems, problems
        return
    assert w["rc"] == 0, w
    want = _first_page_hpa(cell_result)
    m = re.search(r"=> HPA (0x[0-9a-f]+) \((\w+) page\)", w["stdout"])
    assert m, w["stdout"]
    assert int(m.group(1), 16) == want


@pytest.mark.parametrize("view", VIEWS)
def test_console_script(cell_result, view):
    """kvmwalk -k | --qemu SOCK | -c DUMP -s vmlinux -s kvm.ko ...: the
    console script opens the target itself."""
    r = cell_result["console"][view]
    assert r["rc"] == 0, r
    assert f"=> HPA {_first_page_hpa(cell_result):#x} " in r["stdout"], r
    problems = _problems(cell_result, view, checks.CONSOLE)
    assert not problems, problems


@pytest.mark.parametrize("view", ["qmp", "elf", "kdump"])
def test_drgn_command(cell_result, view):
    """%kvmwalk in drgn, registered by the drgn.plugins entry point."""
    r = cell_result["plugin"][view]
    problems = _problems(cell_result, view, checks.PLUGIN)
    assert not problems, problems
    if _libkdumpfile_refuses(cell_result, view, r):
        return
    assert r["rc"] == 0, r
    assert f"=> HPA {_first_page_hpa(cell_result):#x} " in r["stdout"], r


def test_drgn_code_does_what_the_command_does(cell_result):
    """%kvmwalk --drgn: the printed code, run as it stands over QMP, finds what
    the command finds (--list's VMs, --stats' leaves, --addr's HPA, every
    --gva's HPA, --read's pieces, every --dump leaf, every --map range, of
    every root with --root all)."""
    r = cell_result["drgn_code"]
    assert "error" not in r, r
    assert set(r) == {"list", "stats", "addr", "gva", "read", "dump", "map", "map_all"}
    for case, c in r.items():
        assert c["problems"] == [], (case, c["problems"], c["code"])

    def last_line(case):
        return [ln.split() for ln in r[case]["code_stdout"].splitlines() if ln.startswith("0x")][-1]

    page = first_truth(cell_result)["pages"][0]
    assert int(last_line("addr")[1]) == _first_page_hpa(cell_result)
    assert int(last_line("gva")[2]) == pagemap_hpa(page, "gva")
    # The read's last piece ends with the 8 bytes of the tag.
    assert last_line("read")[4].endswith(page["tag"].to_bytes(8, "little").hex())


def test_readme_python_api_runs(cell_result):
    """README's Python API block, run as it stands there over QMP: it lists
    the VMs and walks the first tagged page of vCPU 0 to its pagemap HPA."""
    r = cell_result["readme_api"]
    assert r.get("error") is None, r
    assert r["hpa"] == _first_page_hpa(cell_result), r
    assert r["steps"] >= 2 and r["page_size"] in (4096, 2 << 20, 1 << 30), r
    pids = {str(t["pid"]) for t in cell_result["truth"].values()}
    printed = {line.split()[0] for line in r["stdout"].splitlines() if line.strip()}
    assert pids <= printed, r["stdout"]


def test_kdump_reader_matches_the_elf_dump(cell_result):
    """kvmwalk's own reader of kdump-compressed dumps (used where libkdumpfile
    refuses one) gives, page for page, what the ELF dump it was made from holds,
    read by drgn's ELF reader: every tagged page in the dump and a spread of
    others."""
    r = cell_result["kdump_reader"]
    problems = _problems(cell_result, "kdump", checks.KDUMP_READER)
    assert not problems, problems
    assert r["mismatches"] == [], r
    assert r["compared"] >= 256 and r["release"] == cell_result["release"], r
    if cell_result["dump_level"] & 8 == 0:  # user pages (the tags) kept
        assert r["tagged"] > 0, r


@pytest.mark.parametrize("case,message", list(errors.REFUSALS.items()))
def test_errors_on_a_real_kernel(cell_result, case, message):
    """Bad input and missing pieces: exit 2, one line on stderr, no traceback."""
    r = cell_result["errors"][case]
    assert r["rc"] == 2, r
    assert r["stdout"] == ""
    lines = [ln for ln in r["stderr"].splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, r["stderr"]
    assert re.search(message, lines[0]), lines[0]
    assert not errors.check_error_case(cell_result, case)


def test_unmapped_address_is_an_answer(cell_result):
    r = cell_result["errors"]["unmapped"]
    assert r["rc"] == 0, r
    assert re.search(r"=> not mapped: SPTE not present at level [1-5] \(\w+\)", r["stdout"]), r
    assert not errors.check_error_case(cell_result, "unmapped")


def test_vm_may_be_omitted_only_when_there_is_one(cell_result):
    r = cell_result["errors"]["vm_omitted"]
    assert not errors.check_error_case(cell_result, "vm_omitted")
    truths = list(cell_result["truth"].values())
    if len(truths) > 1:
        assert r["rc"] == 2, r
        pids = sorted(t["pid"] for t in truths)
        m = re.search(r"(\d+) VMs exist; choose one with --vm PID: (.*)$", r["stderr"].strip())
        assert m and int(m.group(1)) == len(truths), r["stderr"]
        assert sorted(int(p) for p in re.findall(r"pid (\d+)", m.group(2))) == pids
        return
    assert r["rc"] == 0, r
    want = pagemap_hpa(truths[0]["pages"][0], cell_result["addr_kind"])
    assert f"=> HPA {want:#x} (4K page)" in r["stdout"], r["stdout"]
