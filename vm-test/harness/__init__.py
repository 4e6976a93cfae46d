# SPDX-License-Identifier: LGPL-2.1-or-later
"""The VM test harness: the matrix (matrix.py), the typed records of a cell
(records.py), the one builder of the L2 workload's command line
(workload.py), running one cell (run.py) and the checks of its result
against the workload's ground truth (checks/).

vm-test/cell.py is the command line; tests/vm asserts on the same checks.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # vm-test/
TOP = HERE.parent
