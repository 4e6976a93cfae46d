# SPDX-License-Identifier: LGPL-2.1-or-later
"""The checks of a cell's result against the ground truth.  Each returns
records.Problem(view, check, message); tests/vm select them by ``view`` and
``check`` (one of CHECKS), never by the wording of ``message``.

- walks.py: --addr of every tagged page (RESULT, WALK);
- gva.py: --gva of every tagged GVA, the guest's tables and KVM's (GVA);
- read.py: --read across the start of every tagged page (READ);
- gprog.py: the guest as a drgn Program, and README's block for it
  (GUEST_PROGRAM, README_GUEST);
- tables.py: the whole-table views of each view, through vmlist.py (LIST),
  vcpustate.py (VCPU_STATE: --list's vCPU state and counters),
  stats.py (STATS), annotate.py (ANNOTATE, MAP_ANNOTATE), roots.py
  (ROOT_ALL, ROOT_PREV) and maps.py (MAP, DUMP);
- entry.py: the console script and %kvmwalk (CONSOLE, PLUGIN);
- kdump.py: kvmwalk's kdump reader and the libkdumpfile refusal
  (KDUMP_READER, KDUMP_ONE_WALK);
- hostchanges.py: what KVM did with the host's changes to guest memory
  (HOST_CHANGES: l2vmm --host-changes);
- verify.py: --verify of every VM and --hpa of every tagged page (VERIFY, HPA),
  and --verify of faults made in a copy of the ELF dump (VERIFY_FAULTS);
- corrupt.py: kernel state corrupted in a copy of the ELF dump (CORRUPT);
- churn.py: the tool in a loop on a host that keeps changing the VM's
  memory, live and over QMP (CHURN: matrix.CHURN_CELLS only);
- errors.py: contrib/kvmwalk.py on wrong input (ERRORS).
"""

from __future__ import annotations

from typing import List, Optional

from ..records import CellResult, Problem
from .annotate import ANNOTATE, MAP_ANNOTATE
from .churn import CHURN, check_churn
from .corrupt import CORRUPT, check_corrupt_dumps
from .entry import CONSOLE, PLUGIN, check_entry_points
from .errors import ERRORS, check_errors
from .gprog import GUEST_PROGRAM, README_GUEST, check_guest_programs
from .gva import GVA, check_gvas
from .hostchanges import HOST_CHANGES, check_host_changes
from .kdump import KDUMP_ONE_WALK, KDUMP_READER, check_kdump_views
from .maps import DUMP, MAP
from .read import READ, check_reads
from .roots import ROOT_ALL, ROOT_PREV
from .stats import STATS
from .tables import check_whole_tables
from .vcpustate import VCPU_STATE
from .verify import HPA, VERIFY, VERIFY_FAULTS, check_fault_dumps, check_verify
from .vmlist import LIST
from .walks import RESULT, WALK, check_walks

CHECKS = (
    RESULT,
    WALK,
    GVA,
    READ,
    GUEST_PROGRAM,
    README_GUEST,
    LIST,
    VCPU_STATE,
    STATS,
    ANNOTATE,
    MAP_ANNOTATE,
    ROOT_ALL,
    ROOT_PREV,
    MAP,
    DUMP,
    CONSOLE,
    PLUGIN,
    KDUMP_READER,
    KDUMP_ONE_WALK,
    VERIFY,
    HPA,
    HOST_CHANGES,
    VERIFY_FAULTS,
    CORRUPT,
    CHURN,
    ERRORS,
)


def check_cell(result: CellResult) -> List[Problem]:
    """Every problem of a cell, in the order vm-test/cell.py prints them."""
    return (
        check_walks(result)
        + check_gvas(result)
        + check_reads(result)
        + check_guest_programs(result)
        + check_whole_tables(result)
        + check_entry_points(result)
        + check_kdump_views(result)
        + check_verify(result)
        + check_host_changes(result)
        + check_fault_dumps(result)
        + check_corrupt_dumps(result)
        + check_churn(result)
        + check_errors(result)
    )


def select(problems: List[Problem], view: Optional[str] = None, *checks: str) -> List[Problem]:
    """The problems of ``view`` (any view when None) whose check is one of
    ``checks`` (any check when none is given)."""
    return [
        p
        for p in problems
        if (view is None or p.view == view) and (not checks or p.check in checks)
    ]
