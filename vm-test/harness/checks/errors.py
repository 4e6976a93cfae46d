# SPDX-License-Identifier: LGPL-2.1-or-later
"""contrib/kvmwalk.py on wrong or incomplete input against the real kernel
(run.error_cases, over QMP): exit 2 and one line on stderr, no traceback;
an untouched address is an answer; --vm may be omitted only with one VM."""

from __future__ import annotations

import re
from typing import Dict, List

from ..records import CellResult, Problem, pagemap_hpa

ERRORS = "errors"

# Each refused case: the one line contrib/kvmwalk.py must print.
REFUSALS: Dict[str, str] = {
    "not_a_vm": (
        r"^kvmwalk\.py: process 1 has no VM; VMs: pid \d+ \(2 vCPUs\)(, pid \d+ \(2 vCPUs\))*$"
    ),
    "no_such_vcpu": r"^kvmwalk\.py: the VM has no vCPU 7; its vCPUs: 0, 1$",
    "beyond_root": r"^kvmwalk\.py: G[PV]A 0x1000000000000000 is (beyond|not canonical)",
    "malformed": r"^kvmwalk\.py: error: argument --addr: invalid address '0xZZ'",
    "gva_beyond": r"^kvmwalk\.py: GVA 0x1000000000000000 is (beyond|not canonical)",
    "no_kvm_debug_info": (
        r"^kvmwalk\.py: kvm\.ko is loaded but its debug info is not: load it "
        r"with -s /usr/lib/debug/lib/modules/\S+/kernel/arch/x86/kvm/kvm\.ko"
    ),
}
CASES = (*REFUSALS, "unmapped", "vm_omitted")
VIEW = "qmp"  # where run.error_cases runs them


def check_error_case(result: CellResult, case: str) -> List[Problem]:
    """What case ``case`` (one of CASES) must give."""
    r = result["errors"][case]

    def problem(message: str) -> List[Problem]:
        return [Problem(VIEW, ERRORS, f"error case {case}: {message}: {r}")]

    if case in REFUSALS:
        # Bad input and missing pieces: exit 2, one line on stderr, no traceback.
        if r["rc"] != 2:
            return problem(f"rc {r['rc']}, expected 2")
        if r["stdout"] != "":
            return problem("printed on stdout")
        lines = [ln for ln in r["stderr"].splitlines() if not ln.startswith("warning:")]
        if len(lines) != 1:
            return problem(f"{len(lines)} lines on stderr, expected one")
        if not re.search(REFUSALS[case], lines[0]):
            return problem(f"{lines[0]!r} does not match {REFUSALS[case]!r}")
        return []
    if case == "unmapped":
        # A GPA/GVA nobody touched: an answer, not an error.
        if r["rc"] != 0:
            return problem(f"rc {r['rc']}, expected 0")
        if not re.search(r"=> not mapped: SPTE not present at level [1-5] \(\w+\)", r["stdout"]):
            return problem("no 'not mapped' answer")
        return []
    if case == "vm_omitted":
        # Without --vm: fine with one VM, an error listing them with several.
        truths = list(result["truth"].values())
        if len(truths) > 1:
            if r["rc"] != 2:
                return problem(f"rc {r['rc']} with {len(truths)} VMs, expected 2")
            pids = sorted(t["pid"] for t in truths)
            m = re.search(r"(\d+) VMs exist; choose one with --vm PID: (.*)$", r["stderr"].strip())
            if not m or int(m.group(1)) != len(truths):
                return problem(f"not the count of {len(truths)} VMs")
            if sorted(int(p) for p in re.findall(r"pid (\d+)", m.group(2))) != pids:
                return problem(f"not the VMs {pids}")
            return []
        if r["rc"] != 0:
            return problem(f"rc {r['rc']} with one VM, expected 0")
        want = pagemap_hpa(truths[0]["pages"][0], result["addr_kind"])
        if f"=> HPA {want:#x} (4K page)" not in r["stdout"]:
            return problem(f"no walk to HPA {want:#x}")
        return []
    raise ValueError(f"no such error case: {case}")


def check_errors(result: CellResult) -> List[Problem]:
    """Every error case."""
    return [p for case in CASES for p in check_error_case(result, case)]
