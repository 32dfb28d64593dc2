"""The norms' backward as the vector-Jacobian product of their derived Jacobians.

The general-C Jacobian is J_ij = a * delta_ij + o(y_i, y_j): ``a`` is the diagonal entry
minus the off-diagonal one taken at j = i, and ``o`` (the off-diagonal entry) is a
polynomial in y_i and y_j. Hence, for an upstream gradient g,

    (g^T J)_j = a g_j + sum over terms c y_i^p y_j^q of  c y_j^q sum_i g_i y_i^p,

one channel reduction per power p. Checked against Matrix.jacobian for explicit C.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from . import norms
from .catalog import result
from .rewrites import ChannelSum, Rewritten
from .steps import Step, check, equal
from .symbols import C, epsilon, s, sigma, x, y, y_k

g = sp.Symbol("grad", real=True)
_r = sp.Symbol("r", positive=True)

#: norm -> (Jacobian names, its scale symbol, forward (y, scale) in channel sums of x).
NORMS = {
    "rmsnorm": ("rmsnorm_jacobian_diag", "rmsnorm_jacobian_offdiag", sigma),
    "layernorm": ("layernorm_jacobian_diag", "layernorm_jacobian_offdiag", s),
}


def _scale_and_y(name: str):
    """(scale, y) of the vectorised forward, written with channel sums of x."""
    if name == "rmsnorm":
        scale = sp.sqrt(ChannelSum(x**2) / C + epsilon)
        return scale, x / scale
    centred = x - ChannelSum(x) / C
    scale = sp.sqrt(ChannelSum(centred**2) / C + epsilon)
    return scale, centred / scale


def vjp_terms(name: str):
    """(a, [(c, p, q), ...]) with J_ij = a delta_ij + sum c y_i^p y_j^q."""
    diag_name, off_name, _ = NORMS[name]
    diag, off = result(diag_name).expr, result(off_name).expr
    a = sp.simplify(diag - off.subs(y_k, y))
    terms = [(c, p, q) for (p, q), c in sp.Poly(sp.expand(off), y, y_k).terms()]
    return a, terms


def _vjp(a, terms, gs, ys, k, sums):
    """Component k of g^T J, with sums[p] = sum_i g_i y_i^p."""
    return a * gs[k] + sum(c * ys[k] ** q * sums[p] for c, p, q in terms)


def _explicit_obligation(name: str, n: int):
    a, terms = vjp_terms(name)
    xs, gs = norms.channels(n), sp.symbols(f"g0:{n}", real=True)
    vector, scale_fn = ((norms.rmsnorm_vector, norms.rms) if name == "rmsnorm"
                        else (norms.layernorm_vector, norms.std))
    base = scale_fn(xs) ** 2
    jac = vector(xs).jacobian(xs).subs(base, _r**2)
    want = (sp.Matrix([gs]) * jac).T
    ys = [yi.subs(base, _r**2) for yi in vector(xs)]
    at = {NORMS[name][2]: _r, C: n}
    sums = {p: sum(gi * yi**p for gi, yi in zip(gs, ys)) for _, p, _ in terms}
    got = sp.Matrix([_vjp(a.subs(at), [(c.subs(at), p, q) for c, p, q in terms], gs, ys, k, sums)
                     for k in range(n)])
    return equal(f"C = {n}: g^T J from the general entries equals g^T Matrix.jacobian", got, want)


@cache
def vjp_step(name: str) -> Step:
    a, terms = vjp_terms(name)
    scale_sym = NORMS[name][2]
    sums = {p: ChannelSum(g * y**p) for _, p, _ in terms}
    expr = a * g + sum(c * y**q * sums[p] for c, p, q in terms)
    return check(Step(
        f"{name}_vjp", expr,
        "The backward is g^T J: the identity part a g plus one channel reduction per power "
        "of y_i in the off-diagonal entry.",
        (equal("a = diagonal - off-diagonal at j = i does not depend on y",
               sp.diff(a, y), 0),
         *(_explicit_obligation(name, n) for n in (2, 3, 4))),
    )), scale_sym


def functions(Function) -> list:
    """forward(x, epsilon) and backward(grad, x, epsilon) of both norms."""
    out = []
    for name in NORMS:
        (step, scale_sym) = vjp_step(name)
        scale, y_x = _scale_and_y(name)
        grad_x = step.expr.subs(y, y_x).subs(scale_sym, scale)
        title = result(name).title
        out.append(Function(f"{name}_forward", (x, epsilon), (("y", Rewritten(y_x)),),
                            f"{title}, all channels: y = {sp.sstr(y_x)}",
                            ("C = x.shape[-1]",)))
        out.append(Function(f"{name}_backward", (g, x, epsilon), (("grad_x", Rewritten(grad_x)),),
                            f"{name}: grad_x = g^T J = {sp.sstr(step.expr)},\n"
                            f"with y and {scale_sym} recomputed from x.", ("C = x.shape[-1]",)))
    return out
