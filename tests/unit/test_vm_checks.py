# SPDX-License-Identifier: LGPL-2.1-or-later
"""The VM tests' own comparison of --dump with --map (vm-test/cell.py), on
small made-up records: what it lets through on a live host and what it must
still catch.  The VM tests run it on real output; this pins its bounds."""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vm-test"))

import cell  # noqa: E402

AD = ["P", "W", "A", "D", "mmu-present", "host-writable", "mmu-writable"]
D = [f for f in AD if f != "A"]


def _records(map_flags, dump_flags):
    """One 8 KiB --map range and its two --dump leaves; GPA == HPA."""
    mp = {
        "rc": 0,
        "stderr": "",
        "records": [
            {"start": 0x1000, "end": 0x3000, "hpa": 0x1000, "level": 1, "flags": map_flags}
        ],
    }
    dump = {
        "rc": 0,
        "stderr": "",
        "records": [
            {"addr": a, "level": 1, "hpa": a, "flags": f}
            for a, f in ((0x1000, dump_flags[0]), (0x2000, dump_flags[1]))
        ],
    }
    return mp, dump


def _problems(map_flags, dump_flags, live):
    truth = {"host_runs": [[0x1000, 0x1000, 0x2000]]}
    pages = [{"gpa": 0x2000, "pfn": 2}]
    mp, dump = _records(map_flags, dump_flags)
    return cell._check_map({}, "v", mp, dump, truth, pages, "gpa", live=live)


def test_same_flags_agree():
    assert _problems(AD, [AD, AD], live=False) == []


def test_live_accessed_bit_cleared_after_dump_is_allowed():
    # KVM's page aging cleared A between --dump and --map (seen on 7.2).
    assert _problems(D, [AD, D], live=True) == []


def test_a_dump_may_not_differ_at_all():
    assert _problems(D, [AD, D], live=False)


def test_live_accessed_bit_may_not_appear():
    # The guest is halted: nothing sets A again after --dump.
    assert _problems(AD, [D, AD], live=True)


def test_live_other_flags_must_agree():
    no_w = [f for f in AD if f not in ("W", "mmu-writable")]
    assert _problems(no_w, [AD, AD], live=True)


def test_live_hpa_must_agree():
    mp, dump = _records(AD, [AD, AD])
    dump = copy.deepcopy(dump)
    dump["records"][1]["hpa"] += 0x1000
    truth = {"host_runs": [[0x1000, 0x1000, 0x2000]]}
    assert cell._check_map({}, "v", mp, dump, truth, [], "gpa", live=True)
