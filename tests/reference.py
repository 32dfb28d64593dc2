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

from derive import result
from derive.symbols import alpha, beta, m, mu, x

DIGITS = 50
weight, bias, shift = sp.symbols("weight bias shift", real=True)

#: form -> (scalar parameter, catalog symbol that the layer's shift replaces, or None).
FORMS = {"dyt": (alpha, None), "dyisru": (beta, None), "dyt_ln": (alpha, mu),
         "dyisru_ln": (beta, m)}


@cache
def layer_expr(name: str) -> sp.Expr:
    e = result(name).expr
    f = e / sp.limit(e, x, sp.oo)
    _, shifted = FORMS[name]
    if shifted is not None:
        f = f.subs(shifted, shift)
    return weight * f + bias


def params(name: str) -> tuple[sp.Symbol, ...]:
    scalar, shifted = FORMS[name]
    return (scalar, shift) if shifted is not None else (scalar,)


@cache
def _lambdas(name: str):
    """mpmath callables of (x, scalars..., weight, bias): value and each derivative."""
    e = layer_expr(name)
    args = (x, *params(name), weight, bias)
    outs = {"y": e, "f": (e - bias) / weight}
    # SymPy's exact simplification keeps e.g. beta/(beta + x^2)^(3/2) from being evaluated
    # as the difference of two nearly equal terms; adaptive precision covers the rest.
    outs.update({f"d_{a.name}": sp.simplify(sp.diff(e, a)) for a in (x, *params(name), weight)})
    return {k: sp.lambdify(args, v, "mpmath") for k, v in outs.items()}


def evaluate(name: str, what: str, x_t, scalars, w_t, b_t) -> torch.Tensor:
    """float64 tensor of ``what`` ('y', 'f', 'd_x', 'd_alpha', ...) at every element.

    x_t (..., C), scalars 0-dim, w_t and b_t (C,): all exactly as cast to the tested dtype.
    """
    fn = _lambdas(name)[what]
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
