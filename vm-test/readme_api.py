# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn script: run README's Python API block, as it stands there, on a real
kernel, and record what it made and printed.

    drgn [-k | -c DUMP | --qemu SOCK] -s ... vm-test/readme_api.py \\
        --readme README.md --pid PID --addr X --out result.json

The block is the ```python fence after the ``<!-- python-api -->`` marker.
It runs with ``prog``, ``pid`` and ``addr`` set; the result has its stdout,
the error if it raised, and the walk it left in ``walk`` (hpa, page_size),
for the VM test to hold against pagemap truth.
"""

import argparse
import contextlib
import io
import json
import re
import traceback
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

if TYPE_CHECKING:
    import drgn

prog: "drgn.Program"  # set by drgn when it runs this script

MARKER = "<!-- python-api -->"


def readme_block(path: str, marker: str = MARKER) -> str:
    """The ```python block after ``marker`` in the file ``path``."""
    text = open(path).read()
    m = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    if m is None:
        raise SystemExit(f"{path}: no ```python block after {marker}")
    return m.group(1)


def run_block(
    code: str, scope: Dict[str, Any], name: str
) -> Tuple[str, Optional[BaseException], Optional[str]]:
    """Run ``code`` in ``scope``: (what it printed, the exception it raised
    or None, that exception's traceback or None)."""
    out = io.StringIO()
    exc: Optional[BaseException] = None
    tb = None
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(code, name, "exec"), scope)
        except Exception as e:  # noqa: BLE001 (recorded for the test)
            exc, tb = e, traceback.format_exc()
    return out.getvalue(), exc, tb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--addr", type=lambda t: int(t, 0), required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    code = readme_block(args.readme)
    scope: Dict[str, Any] = {"prog": prog, "pid": args.pid, "addr": args.addr}  # noqa: F821 (drgn's prog)
    stdout, _, error = run_block(code, scope, f"{args.readme} (python-api block)")
    walk = scope.get("walk")
    result = {
        "code": code,
        "stdout": stdout,
        "error": error,
        "hpa": getattr(walk, "hpa", None),
        "page_size": getattr(walk, "page_size", None),
        "steps": len(getattr(walk, "steps", []) or []),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
