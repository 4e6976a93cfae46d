# SPDX-License-Identifier: LGPL-2.1-or-later
"""README's Python API block, without a kernel: it is found, compiles, and
imports only names the package has.  The VM tests run it on real kernels
(vm-test/readme_api.py)."""

import ast
import builtins
import sys
from pathlib import Path

import drgn_kvmwalk

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "vm-test"))
import readme_api  # noqa: E402


def test_the_python_api_block_compiles_and_imports_what_exists():
    code = readme_api.readme_block(str(TOP / "README.md"))
    tree = ast.parse(code)
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "drgn_kvmwalk"
        for alias in node.names
    ]
    assert imported, code
    for name in imported:
        assert hasattr(drgn_kvmwalk, name), name
    # It uses only what the VM test gives it, besides its own names.
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assigned = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    assert free - assigned - set(imported) - set(dir(builtins)) <= {"prog", "pid", "addr"}
