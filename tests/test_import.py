"""Packaging rules: light imports, layering between packages, curated public API."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "unsloth", "sentence_transformers", "numpy")

# package -> packages it may import (DESIGN.md, "Layout and layering")
ALLOWED = {
    "vm": set(),
    "tools": {"vm"},
    "planner": {"vm", "tools"},
    "training": {"vm", "tools", "planner"},
}


def test_import_vm_tools_planner_is_light():
    code = (
        "import sys, time; t = time.perf_counter(); import vm, tools, planner; "
        "elapsed = time.perf_counter() - t; "
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]; "
        "print(elapsed); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    elapsed, heavy = out.stdout.splitlines()
    assert heavy == "[]"
    assert float(elapsed) < 1.0  # the target is < 0.3 s; this bound only catches gross regressions


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layering(package):
    others = set(ALLOWED) - ALLOWED[package] - {package}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in others, f"{path.relative_to(ROOT)} imports {name}"
                assert top != "planvm", f"{path.relative_to(ROOT)} imports the CLI"


@pytest.mark.parametrize("module", ["vm", "tools"])
def test_exported_members(module):
    mod = __import__(module)
    assert mod.__all__ == sorted(mod.__all__, key=str)
    for name in mod.__all__:
        assert hasattr(mod, name), name
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, type(sys))}
    assert public <= set(mod.__all__) | {"annotations"}
