"""The public export (a public interface): every result as plain data."""
from __future__ import annotations

import json

import sympy as sp

from .catalog import Result, catalog
from .symbols import ASSUMPTIONS


def _assumptions(s: sp.Symbol) -> dict:
    """The canonical symbol's assumptions, or those a procedure's own symbol was made with."""
    if s.name in ASSUMPTIONS:
        return dict(ASSUMPTIONS[s.name])
    return {k: True for k in ("integer", "positive", "nonnegative", "real")
            if s.assumptions0.get(k)}


def entry(r: Result) -> dict:
    return {
        "expr": str(r.expr),
        "latex": sp.latex(r.expr),
        "symbols": {s.name: _assumptions(s) for s in r.symbols},
        "params": {p.name: str(e) for p, e in r.params.items()},
        "steps": [st.name for st in r.steps],
    }


def export(results: dict[str, Result] | None = None) -> dict:
    """{"results": {name: {expr, latex, symbols, params, steps}}} for every result (of the
    catalog, or the given ones)."""
    results = catalog() if results is None else results
    return {"results": {name: entry(r) for name, r in results.items()}}


def dumps(data: dict | None = None) -> str:
    """The export as JSON text (deterministic: the catalog's order, fixed indentation)."""
    return json.dumps(export() if data is None else data, indent=2) + "\n"
