"""Data flows one way: derive never loads torch or numpy; numeric never loads SymPy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_derive_and_its_catalog_never_load_torch_or_numpy():
    mods = _loaded("import derive, derive.cli; derive.catalog()")
    assert "torch" not in mods and "numpy" not in mods


def test_derive_testing_is_the_one_module_of_derive_that_imports_torch():
    """It loads torch itself (and runs without numeric); nothing else in derive/ imports it,
    and neither ``import derive`` nor the CLI loads it."""
    mods = _loaded("import derive.testing")
    assert "torch" in mods and not any(m == "numeric" or m.startswith("numeric.") for m in mods)
    assert "derive.testing" not in _loaded("import derive, derive.cli, derive.formgen")
    root = Path(__file__).resolve().parent.parent / "derive"
    importers = {p.name for p in root.rglob("*.py") if "torch" in _imports(p)}
    assert importers == {"testing.py"}


def _imports(path: Path) -> set[str]:
    """The top-level packages a module's import statements name (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("code", ["import numeric", "import numeric.functional, numeric.modules",
                                  "import numeric; numeric.DyISRU(4)"])
def test_numeric_never_loads_sympy(code):
    assert "sympy" not in _loaded(code)
