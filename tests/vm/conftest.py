# SPDX-License-Identifier: LGPL-2.1-or-later
import os
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "vm-test"))


def vm_unavailable(reason: str) -> None:
    """Skip with a stated reason, or fail when KVMWALK_REQUIRE_VM=1 (CI)."""
    if os.environ.get("KVMWALK_REQUIRE_VM") == "1":
        pytest.fail(f"VM test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def fetch_kernel(suite: str):
    """The cached Debian kernel of ``suite``, or skip/fail saying why not."""
    import shutil

    import kernels

    for tool in ("qemu-system-x86_64", "makedumpfile"):
        if not shutil.which(tool):
            vm_unavailable(f"{tool} not installed (run vm-test/setup)")
    if not (TOP / "build" / "l2vmm").exists():
        vm_unavailable("build/l2vmm not built (run vm-test/setup)")
    try:
        return kernels.fetch(suite, log=lambda m: None)
    except kernels.NoKernel as e:
        if suite in kernels.OPTIONAL:
            # Not a missing tool or network: the suite has no kernel to test
            # now.  Skipped with that reason even in CI (pytest -rs shows it).
            pytest.skip(f"no {suite} cells: {e}")
        vm_unavailable(f"cannot fetch the Debian {suite} kernel: {e}")
    except Exception as e:  # no network, no apt: say why
        vm_unavailable(f"cannot fetch the Debian {suite} kernel: {e}")
