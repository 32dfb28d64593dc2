"""Data flows one way: derive never loads torch or numpy; numeric never loads SymPy."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_derive_and_its_catalog_never_load_torch_or_numpy():
    mods = _loaded("import derive, derive.cli; derive.catalog()")
    assert "torch" not in mods and "numpy" not in mods


@pytest.mark.parametrize("code", ["import numeric", "import numeric.functional, numeric.layers",
                                  "import numeric; numeric.DyISRU(4)"])
def test_numeric_never_loads_sympy(code):
    assert "sympy" not in _loaded(code)
