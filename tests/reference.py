"""References from the catalog: the closed forms evaluated by mpmath at 50 digits.

A layer form is the catalog expression divided by its bound (SymPy's limit at +oo), times
a per-channel weight, plus a bias; its derivatives are SymPy's. Nothing here uses the
generated code or its printer: the spec is the catalog.
"""
from __future__ import annotations

from functools import cache

import mpmath
import sympy as sp
import torch

from derive.codegen import layer_step
from derive.symbols import symbol, x
from numeric.generated.forms import FORMS

DIGITS = 50
weight, bias = sp.symbols("weight bias", real=True)


def layer_expr(name: str) -> sp.Expr:
    """weight * f + bias: the catalog's form with its bound promoted to weight (a checked
    step of the derivation), the spec the layers are tested against."""
    return layer_step(name).expr


def params(name: str) -> tuple[sp.Symbol, ...]:
    """The form's scalar parameters, as symbols, in the order of the functional signature."""
    return tuple(symbol(p) for p in FORMS[name].scalars)


def wrt(name: str) -> tuple[sp.Symbol, ...]:
    """What the derivatives are taken in: x, the scalars, weight."""
    return (x, *params(name), weight)


@cache
def _lambda(name: str, what: str):
    """The mpmath callable of (x, scalars..., weight, bias) for ``what``: "y", "f", a first
    derivative "d_a" or a second derivative "d2_a_b" (a, b among x, the scalars, weight)."""
    e = layer_expr(name)
    if what == "f":
        e = (e - bias) / weight
    elif what.startswith("d2_"):
        a, b = (next(s for s in wrt(name) if s.name == n) for n in what[3:].split("_"))
        # over one denominator: 1 - x^2/(beta + x^2) would cancel at every precision below
        e = sp.factor(sp.together(sp.diff(e, a, b)))
    elif what.startswith("d_"):
        # SymPy's exact simplification keeps e.g. beta/(beta + x^2)^(3/2) from being
        # evaluated as the difference of two nearly equal terms.
        e = sp.simplify(sp.diff(e, next(s for s in wrt(name) if s.name == what[2:])))
    return sp.lambdify((x, *params(name), weight, bias), e, "mpmath")


def evaluate(name: str, what: str, x_t, scalars, w_t, b_t) -> torch.Tensor:
    """float64 tensor of ``what`` ('y', 'f', 'd_x', 'd_alpha', ...) at every element.

    x_t (..., C), scalars 0-dim, w_t and b_t (C,): all exactly as cast to the tested dtype.
    """
    fn = _lambda(name, what)
    xs = x_t.detach().to(torch.float64).cpu()
    C = xs.shape[-1]
    ws = w_t.detach().to(torch.float64).cpu().tolist()
    bs = b_t.detach().to(torch.float64).cpu().tolist() if b_t is not None else [0.0] * C
    ss = [float(s) for s in scalars]
    flat = xs.reshape(-1, C).tolist()
    out = [[_stable(fn, v, ss, ws[c], bs[c]) for c, v in enumerate(row)] for row in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(xs.shape)


#: Working precisions tried in turn: 50 digits, then more where the formula cancels
#: (1 - tanh(u)^2 loses about 0.87 |u| digits; at 450 digits every value still
#: representable in float64 survives).
PRECISIONS = (DIGITS, 120, 450)


def _stable(fn, v, ss, w, b) -> float:
    """fn at x = v, raising the precision until two precisions agree to 25 digits."""
    prev = None
    for dps in PRECISIONS:
        with mpmath.workdps(dps):
            xv = mpmath.mpf(v)
            if mpmath.isinf(xv):  # the limit, from a huge finite x of the same sign
                xv = mpmath.mpf(10) ** 400 * (1 if xv > 0 else -1)
            val = fn(xv, *(mpmath.mpf(t) for t in ss), mpmath.mpf(w), mpmath.mpf(b))
            if prev is not None and (mpmath.isnan(val) or abs(val - prev) <= abs(val) * 1e-25):
                return float(val)
            prev = val
    return float(prev)
