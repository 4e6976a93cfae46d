# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: run the Python that ``%kvmwalk ... --drgn`` prints, and the
command itself, on a real kernel, and compare what they found.

    drgn [--qemu SOCK | -c DUMP] -s ... vm-test/drgn_code_check.py \\
        --pid PID --addr X --gva GVA --out result.json

For --list, --stats, --addr, --gva, --read, --dump and --map (and --map
--root all), the
printed code is executed as it stands (``prog`` is the only name it is
given) and its output parsed; the command runs with --json.  The result
holds, per case, both outputs and ``problems`` (empty when they agree).
"""

import argparse
import ast
import contextlib
import io
import json
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from drgn_kvmwalk.cli import build_parser, parse_args
from drgn_kvmwalk.cli import main as kvmwalk_main
from drgn_kvmwalk.plugin import drgn_code

if TYPE_CHECKING:
    import drgn

prog: "drgn.Program"  # set by drgn when it runs this script


def command(prog: "drgn.Program", argv: List[str]) -> Tuple[int, List[Any], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = kvmwalk_main(prog, [*argv, "--json"], out=out, err=err)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def printed(prog: "drgn.Program", argv: List[str]) -> Tuple[str, str, Optional[str]]:
    parser = build_parser("kvmwalk")
    parser.add_argument("--drgn", action="store_true")
    code = drgn_code(prog, parse_args(parser, [*argv, "--drgn"], "kvmwalk"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(code, "<kvmwalk --drgn>", "exec"), {"prog": prog})
        except Exception:  # noqa: BLE001 (recorded for the test)
            return code, out.getvalue(), traceback.format_exc()
    return code, out.getvalue(), None


def lines_of(text: str, fields: int) -> List[List[str]]:
    """Printed lines of ``fields`` words whose first word is hex."""
    return [
        ln.split()
        for ln in text.splitlines()
        if len(ln.split()) == fields and ln.split()[0].startswith("0x")
    ]


def compare(case: str, argv: List[str], rc: int, records: List[Any], code_out: str) -> List[str]:
    if rc != 0:
        return [f"the command failed: rc {rc}"]
    if case == "list":
        want_pids = {str(vm["pid"]) for vm in records[0]["vms"]}
        got_pids = {
            ln.split()[0]
            for ln in code_out.splitlines()
            if ln.split()[:1] and ln.split()[0].isdigit() and len(ln.split()) == 3
        }
        return (
            []
            if got_pids == want_pids
            else [f"pids: code {sorted(got_pids)}, command {sorted(want_pids)}"]
        )
    if case == "stats":
        want_leaves = {str(r["vm"]): r["leaves"] for r in records}
        got_leaves: Dict[str, Any] = {}
        for ln in code_out.splitlines():
            pid, _, rest = ln.partition(" ")
            if pid.isdigit():
                got_leaves[pid] = ast.literal_eval(rest[: rest.index("}") + 1])  # the leaves dict
        return (
            []
            if got_leaves == want_leaves
            else [f"leaves: code {got_leaves}, command {want_leaves}"]
        )
    if case == "addr":
        last = [ln.split() for ln in code_out.splitlines() if ln.startswith("0x")][-1]
        want_hpa = records[0]["hpa"]
        return [] if last[1] == str(want_hpa) else [f"hpa: code {last[1]}, command {want_hpa}"]
    if case == "gva":
        last = [ln.split() for ln in code_out.splitlines() if ln.startswith("0x")][-1]
        want_hpa = records[0]["hpa"]
        return [] if last[2] == str(want_hpa) else [f"hpa: code {last[2]}, command {want_hpa}"]
    if case == "read":
        # One line per piece: addr, length, gpa, hpa, then its bytes or why not.
        got_pieces = [ln.split(maxsplit=4) for ln in code_out.splitlines() if ln.startswith("0x")]
        want_pieces = [
            [
                hex(p["addr"]),
                str(p["length"]),
                str(p["gpa"]),
                str(p["hpa"]),
                p["bytes"] or p["error"],
            ]
            for p in records[0]["pieces"]
        ]
        return (
            []
            if got_pieces == want_pieces
            else [f"pieces: code {got_pieces}, command {want_pieces}"]
        )
    if case == "dump":
        got_leaf = sorted((int(a, 16), int(h, 16)) for a, _, _, h in lines_of(code_out, 4))
        want_leaf = sorted((r["addr"], r["hpa"]) for r in records)
        return (
            []
            if got_leaf == want_leaf
            else [
                f"{len(got_leaf)} leaves from the code, {len(want_leaf)} from the command,"
                " or other ones"
            ]
        )
    # map, map_all: every root's ranges, in order
    got = [(int(s, 16), int(e, 16), int(h, 16), int(lv)) for s, e, h, lv in lines_of(code_out, 4)]
    want = [(r["start"], r["end"], r["hpa"], r["level"]) for r in records]
    return (
        []
        if got == want
        else [f"{len(got)} ranges from the code, {len(want)} from the command, or other ones"]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--gva", required=True, help="a GVA that vCPU 0 maps")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    vm = ["--vm", args.pid]
    cases = {
        "list": [*vm, "--list"],
        "stats": [*vm, "--stats"],
        "addr": [*vm, "--vcpu", "0", "--addr", args.addr],
        "gva": [*vm, "--vcpu", "0", "--gva", args.gva],
        "read": [
            *vm,
            "--vcpu",
            "0",
            "--read",
            hex(int(args.gva, 0) - 8),
            "--gva",
            "--length",
            "16",
        ],
        "dump": [*vm, "--vcpu", "0", "--dump"],
        "map": [*vm, "--vcpu", "0", "--map"],
        "map_all": [*vm, "--vcpu", "0", "--map", "--root", "all"],
    }
    result: Dict[str, Dict[str, Any]] = {}
    for case, argv in cases.items():
        rc, records, err = command(prog, argv)  # noqa: F821 (drgn's prog)
        code, code_out, error = printed(prog, argv)  # noqa: F821
        problems = [f"the printed code raised: {error}"] if error else []
        if not error:
            problems += compare(case, argv, rc, records, code_out)
        result[case] = {
            "argv": argv,
            "code": code,
            "code_stdout": code_out[-20000:],
            "command_stderr": err,
            "problems": problems,
        }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
