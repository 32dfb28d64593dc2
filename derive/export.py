"""The public export (DESIGN.md, "Catalog and export"): every result as plain data."""
from __future__ import annotations

import json

import sympy as sp

from .catalog import Result, catalog
from .symbols import ASSUMPTIONS


def entry(r: Result) -> dict:
    return {
        "expr": str(r.expr),
        "latex": sp.latex(r.expr),
        "symbols": {s.name: dict(ASSUMPTIONS[s.name]) for s in r.symbols},
        "params": {p.name: str(e) for p, e in r.params.items()},
        "steps": [st.name for st in r.steps],
    }


def export() -> dict:
    """{"results": {name: {expr, latex, symbols, params, steps}}} for every result."""
    return {"results": {name: entry(r) for name, r in catalog().items()}}


def dumps(data: dict | None = None) -> str:
    """The export as JSON text (deterministic: the catalog's order, fixed indentation)."""
    return json.dumps(export() if data is None else data, indent=2) + "\n"
