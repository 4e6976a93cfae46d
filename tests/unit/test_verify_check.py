# SPDX-License-Identifier: LGPL-2.1-or-later
"""checks/verify.py: on a live view the tool's "changed while read"
warnings are no problem of a quiet VM (KVM's page aging changes its table
pages in place); anything else on stderr, or those lines in a dump, is."""

import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "vm-test"))

from harness.checks.verify import unexplained_stderr  # noqa: E402

CHANGED = (
    "warning: VM pid 193: changed while read: table page at host physical 0x53f0000 "
    "(level 1 addresses 0xc0000000-0xc0200000) reads differently now; what was made "
    "from it may mix old and new entries\n"
    "warning: VM pid 193: changed while read: 2 pages read differently the second time; "
    "the problems above may be changes made while reading\n"
)


def test_changed_while_read_is_explained_on_live_views_only():
    assert unexplained_stderr("live", CHANGED) == ""
    assert unexplained_stderr("qmp", CHANGED) == ""
    assert unexplained_stderr("elf", CHANGED) == CHANGED
    assert unexplained_stderr("kdump", CHANGED) == CHANGED


def test_other_lines_stay_unexplained():
    other = "warning: VM pid 193: root 0x1000: a table page cannot be read\n"
    assert unexplained_stderr("live", CHANGED + other) == other
    assert unexplained_stderr("live", "Traceback (most recent call last):\n") != ""
