# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: walk KVM's page tables for a vCPU (see --help).

    drgn [-k | -c VMCORE | --qemu SOCK] [-s SYMBOLS]... contrib/kvmwalk.py \\
         [--vm PID] --vcpu N --addr X [--addr Y ...] [--json]
"""

import os
import sys

# Run from a clone without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from drgn_kvmwalk.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog, sys.argv[1:], prog_name="kvmwalk.py"))  # type: ignore[name-defined]  # noqa: F821
