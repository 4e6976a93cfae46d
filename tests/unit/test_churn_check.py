# SPDX-License-Identifier: LGPL-2.1-or-later
"""checks/churn.py (the live-change run) on a small made-up run: a
consistent one gives no problem, and each fault made on purpose (a mapping
to a host page pagemap never showed, a traceback, a hang, a change the
host never made, a --verify problem not flagged) gives a CHURN problem;
what is flagged "changed while read" is counted, not judged.  And
harness/churn.py reads the VMM's log as the VMM writes it."""

import copy
import json
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "vm-test"))

from harness import checks  # noqa: E402
from harness.checks.churn import OPS, check_churn, churn_counts  # noqa: E402
from harness.churn import read_churn_log  # noqa: E402
from live_loop import flagged_ranges  # noqa: E402

GPA = 0x4000_0000
PFN_OLD, PFN_NEW = 0x1234, 0x5678


def _run(action, **kw):
    rec = {"action": action, "argv": ["--vm", "42"], "rc": 0, "seconds": 0.5}
    rec.update(stderr="", changed_lines=0, bad_json=0)
    rec.update(kw)
    return rec


def _loop():
    runs = [
        _run("addr", walks=[[GPA, PFN_NEW << 12, 4096, False]]),
        _run("dump", leaves=[[GPA, PFN_OLD << 12, 1]], flagged=[]),
        _run("map", ranges=[[GPA, GPA + 4096, PFN_NEW << 12]], flagged=[]),
        _run("stats", stats=[{"vm": 42, "match": True, "changed_pages": 0}]),
        _run("verify", problems=[], problem_count=0, summaries=[]),
        _run("list", records=1),
        _run("hpa", records=1, mappings=[[GPA + 0x123, (PFN_OLD << 12) + 0x123]], flagged=[]),
    ]
    return {"live": True, "seconds": 60, "rounds": 1, "runs": runs}


def _cell():
    log = {
        "ended": True,
        "bad_lines": 0,
        "pfn_changes": 3,
        "ksm_shared": 2,
        "history": {str(GPA): [PFN_OLD, PFN_NEW]},
        "ops": {op: 2 for op in OPS},
        "op_errors": {"madv_collapse": [22]},
        "mmio_exits": 5,
        "passes": [10, 10],
        "seconds": 120,
    }
    churn = {
        "live_check": {"rc": 0, "seconds": 70, "stderr": ""},
        "qmp_run": {"rc": 0, "seconds": 70, "stderr": ""},
        "live": _loop(),
        "qmp": _loop(),
        "truth": {"guest_maps": [[0x7F00_0000_0000, GPA, 4096]]},
        "log": log,
    }
    return {"addr_kind": "gpa", "churn": churn}


def test_a_consistent_run_has_no_problem():
    assert check_churn(_cell()) == []
    counts = churn_counts(_cell())
    assert counts["compared"] == 8 and counts["wrong"] == 0
    assert counts["live"]["runs"] == 7 and counts["live"]["flagged_answers"] == 0


def test_a_cell_without_the_run_has_none_to_check():
    assert check_churn({"addr_kind": "gpa"}) == [] and churn_counts({}) is None


def test_a_mapping_to_a_page_pagemap_never_showed_is_wrong():
    cell = _cell()
    cell["churn"]["qmp"]["runs"][1]["leaves"] = [[GPA, 0x9999 << 12, 1]]
    (p,) = check_churn(cell)
    assert p.check == checks.CHURN and "a host page pagemap never showed" in p.message
    # The same leaf, in a range a "changed while read" line names: counted.
    cell["churn"]["qmp"]["runs"][1]["flagged"] = [[GPA, GPA + 0x200000]]
    assert check_churn(cell) == []
    assert churn_counts(cell)["qmp"]["flagged_answers"] == 1


def test_an_hpa_mapping_is_judged_unless_flagged():
    cell = _cell()
    hpa = cell["churn"]["live"]["runs"][6]
    hpa["mappings"] = [[GPA + 0x123, (0x9999 << 12) + 0x123]]
    (p,) = check_churn(cell)
    assert "live --hpa" in p.message and "a host page pagemap never showed" in p.message
    hpa["flagged"] = [[GPA, GPA + 0x1000]]
    assert check_churn(cell) == []
    assert churn_counts(cell)["live"]["flagged_answers"] == 1


def test_a_walk_flagged_as_changed_is_not_judged_and_one_without_the_key_is_wrong():
    cell = _cell()
    walks = cell["churn"]["live"]["runs"][0]["walks"]
    walks[0] = [GPA, 0x9999 << 12, 4096, True]
    assert check_churn(cell) == []
    walks[0] = [GPA, PFN_NEW << 12, 4096, None]
    (p,) = check_churn(cell)
    assert "no 'changed' key" in p.message


def test_under_shadow_paging_the_gva_goes_through_the_guests_tables():
    cell = _cell()
    cell["addr_kind"] = "gva"
    for loop in ("live", "qmp"):
        for r in cell["churn"][loop]["runs"]:
            r.pop("walks", None) and r.update(walks=[[0x7F00_0000_0000, PFN_NEW << 12, 4096, 0]])
            r.pop("leaves", None) and r.update(leaves=[[0x7F00_0000_0000, PFN_OLD << 12, 1]])
            r.pop("ranges", None) and r.update(ranges=[])
            r.pop("mappings", None) and r.update(mappings=[])
    assert check_churn(cell) == []
    cell["churn"]["live"]["runs"][0]["walks"] = [[0x7F00_0000_1000, PFN_NEW << 12, 4096, 0]]
    (p,) = check_churn(cell)
    assert "never saw a host page" in p.message


def test_tracebacks_hangs_bad_json_and_exits_are_found():
    faults = {
        "traceback": {"traceback": "Traceback (most recent call last): ..."},
        "did not end": {"hang": True},
        "not JSON": {"bad_json": 2},
        "exit 2": {"rc": 2, "stderr": "kvmwalk: boom"},
    }
    for words, fault in faults.items():
        cell = _cell()
        cell["churn"]["live"]["runs"][3].update(fault)
        problems = check_churn(cell)
        assert [p.view for p in problems] == ["live"] and words in problems[0].message, words


def test_a_vcpu_without_a_root_at_that_moment_is_an_answer():
    cell = _cell()
    line = (
        "kvmwalk: the vCPU's MMU has no valid root (the vCPU has not run, or its root "
        "is being reloaded)\n"
    )
    cell["churn"]["live"]["runs"][1].update(rc=2, stderr=line)
    assert check_churn(cell) == [] and churn_counts(cell)["live"]["no_root"] == 1
    cell["churn"]["live"]["runs"][1].update(stderr=line + "and more\n")
    (p,) = check_churn(cell)
    assert "exit 2" in p.message
    cell = _cell()
    cell["churn"]["live"]["runs"][3].update(rc=2, stderr=line)  # --stats needs no root
    (p,) = check_churn(cell)
    assert "exit 2" in p.message


def test_a_verify_problem_must_be_flagged_as_changed():
    cell = _cell()
    run = cell["churn"]["live"]["runs"][4]
    run.update(rc=1, problems=[{"problem": "hpa_mismatch", "changed": True}], problem_count=1)
    assert check_churn(cell) == []
    run["problems"][0]["changed"] = False
    (p,) = check_churn(cell)
    assert "not flagged as changed" in p.message


def test_the_host_must_have_changed():
    for fault in ("no_op", "bad_errno", "no_pfn_change", "no_end", "no_log"):
        cell = _cell()
        log = cell["churn"]["log"]
        if fault == "no_op":
            del log["ops"]["memslot_add"]
        elif fault == "bad_errno":
            log["op_errors"]["mprotect_read"] = [12]
        elif fault == "no_pfn_change":
            log["pfn_changes"] = 0
        elif fault == "no_end":
            log["ended"] = False
        else:
            cell["churn"]["log"] = None
        assert check_churn(cell), fault


def test_ksm_changes_are_asked_for_only_when_the_vmm_made_them():
    cell = _cell()
    log = cell["churn"]["log"]
    del log["ops"]["ksm_merge"]
    assert check_churn(cell)
    log["ksm"] = False
    assert check_churn(cell) == []


def test_a_loop_that_never_ran_an_action_or_wrote_nothing():
    cell = _cell()
    cell["churn"]["qmp"]["runs"] = [r for r in _loop()["runs"] if r["action"] != "map"]
    (p,) = check_churn(cell)
    assert "never ran --map" in p.message
    cell = copy.deepcopy(_cell())
    cell["churn"]["qmp"] = None
    cell["churn"]["qmp_run"]["rc"] = 1
    assert {p.view for p in check_churn(cell)} == {"qmp"}


def test_flagged_ranges_are_read_from_the_warning_lines():
    err = (
        "warning: changed while read: table page at host physical 0x1000 (level 1 GPAs "
        "0x40000000-0x40200000, level 1 GPAs 0x80000000-0x80200000) reads differently now; ...\n"
        "warning: changed while read: table page at host physical 0x2000 (level 4 every "
        "address) reads differently now; ...\n"
        "warning: something else (level 1 GPAs 0x0-0x1000)\n"
    )
    assert flagged_ranges(err) == [
        (0x40000000, 0x40200000),
        (0x80000000, 0x80200000),
        (0, 1 << 64),
    ]


def test_the_log_gives_every_pfn_each_gpa_had(tmp_path):
    lines = [
        {"t": 1.0, "start": True, "pid": 7, "pages": [{"vcpu": 0, "gpa": GPA}]},
        {"t": 1.0, "gpa": GPA, "pfn": PFN_OLD},
        {"t": 1.0, "gpa": GPA + 4096, "pfn": 0x42},
        {"t": 1.1, "op": "madv_dontneed", "errno": 0, "gpas": [GPA]},
        {"t": 1.1, "gpa": GPA, "pfn": 0},
        {"t": 1.2, "gpa": GPA, "pfn": PFN_NEW},
        {"t": 1.3, "op": "ksm_merge", "errno": 0, "gpas": [GPA]},
        {"t": 1.4, "gpa": GPA, "pfn": 0x42},  # merged with its neighbour
        {"t": 1.5, "op": "madv_collapse", "errno": 22, "gpas": [GPA]},
        {"t": 1.6, "hold": 0.25},
        {"t": 1.7, "hold": 0.5},
        {"t": 1.8, "op": "hold_timeout", "errno": 110, "gpas": []},
        {"t": 3.0, "end": True, "mmio_exits": 4, "passes": [9, 8]},
    ]
    path = tmp_path / "churn.log"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 3.1, "cut')
    log = read_churn_log(path)
    assert log["history"] == {str(GPA): [0x42, PFN_OLD, PFN_NEW], str(GPA + 4096): [0x42]}
    assert log["ops"] == {
        "madv_dontneed": 1,
        "ksm_merge": 1,
        "madv_collapse": 1,
        "hold_timeout": 1,
    }
    assert log["op_errors"] == {"madv_collapse": [22], "hold_timeout": [110]}
    assert log["hold_max"] == 0.5
    assert (log["ksm_shared"], log["pfn_changes"], log["bad_lines"]) == (2, 2, 1)
    assert log["ended"] and log["passes"] == [9, 8] and log["seconds"] == 2.0


def test_a_ksm_page_may_be_mapped_to_a_ksm_page_pagemap_showed_for_others():
    ksm_pfn, other = 0x7777, 0x4000_1000
    cell = _cell()
    log = cell["churn"]["log"]
    log["pages"] = [{"vcpu": 0, "gva": 0, "gpa": GPA, "kind": "ksm"}]
    log["history"][str(other)] = [ksm_pfn]
    log["ksm_pfns"] = [ksm_pfn]
    dump = cell["churn"]["live"]["runs"][1]
    dump["leaves"] = [[GPA, ksm_pfn << 12, 1]]
    assert check_churn(cell) == [] and churn_counts(cell)["ksm_other"] == 1
    # Not a page KSM merges: wrong.
    log["pages"][0]["kind"] = "madv_dontneed"
    (p,) = check_churn(cell)
    assert "a host page pagemap never showed" in p.message
    # A page KSM merges, but a PFN that never backed two pages at once: wrong.
    log["pages"][0]["kind"] = "ksm"
    log["ksm_pfns"] = []
    (p,) = check_churn(cell)
    assert "a host page pagemap never showed" in p.message


def test_the_log_names_the_pfns_that_backed_two_pages_at_once(tmp_path):
    log = tmp_path / "churn.log"
    lines = [
        {"t": 0, "start": True, "pid": 1, "pages": []},
        {"t": 1, "gpa": GPA, "pfn": 5},
        {"t": 1, "gpa": GPA + 4096, "pfn": 6},
        {"t": 2, "gpa": GPA + 4096, "pfn": 5},
        {"t": 3, "gpa": GPA, "pfn": 6},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = read_churn_log(log)
    assert got["ksm_pfns"] == [5] and got["ksm_shared"] == 2
