"""The client imports the standard library only (openfeature in its optional provider)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "molam_experiments"
OPTIONAL = {"openfeature.py": {"openfeature"}}


def test_only_the_standard_library_is_imported():
    for path in sorted(PACKAGE.glob("*.py")):
        allowed = OPTIONAL.get(path.name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            for root in roots:
                assert root in sys.stdlib_module_names or root in allowed, f"{path.name} imports {root}"
