"""The facts an element-wise activation is held to (bounded, odd, increasing, with a known slope), as obligations."""
from __future__ import annotations

import sympy as sp

from .steps import Obligation, equal, limit, positive
from .symbols import x


def shape_obligations(f: sp.Expr, bound: sp.Expr, slope: sp.Expr, var=x,
                      where: dict | None = None) -> list[Obligation]:
    """Bounded by +-bound at +-infinity, slope at 0, odd, strictly increasing.

    ``where`` substitutes into every claim first (e.g. C -> n + 1 for C >= 2); the claims'
    text keeps the reader's symbols (C - 1, not the helper n).
    """
    where = where or {}
    said_bound, said_slope = bound, slope
    f, bound, slope = (sp.sympify(e).subs(where) for e in (f, bound, slope))
    return [
        limit(f"tends to {said_bound} as x -> +oo", f, var, sp.oo, bound),
        limit(f"tends to -{said_bound} as x -> -oo", f, var, -sp.oo, -bound),
        equal(f"slope at 0 is {said_slope}", sp.diff(f, var).subs(var, 0), slope),
        equal("odd: f(-x) = -f(x)", f.subs(var, -var), -f),
        positive("strictly increasing: f'(x) > 0", sp.diff(f, var)),
    ]
