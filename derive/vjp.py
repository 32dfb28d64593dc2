"""The norms' backward as the vector-Jacobian product of their derived Jacobians.

The general-C Jacobian is J_ij = a * delta_ij + o(y_i, y_j): ``a`` is the diagonal entry
minus the off-diagonal one taken at j = i, and ``o`` (the off-diagonal entry) is a
polynomial in y_i and y_j. Hence, for an upstream gradient g,

    (g^T J)_j = a g_j + sum over terms c y_i^p y_j^q of  c y_j^q sum_i g_i y_i^p,

one channel reduction per power p. Checked against Matrix.jacobian for explicit C.

The printed forward and VJP scale each row before squaring: with a = max(max_k |x_k|,
sqrt(eps)), u = x / a and d = sqrt(eps) / a, the norms are written in u, d and
rho = hypot(rms of u (centred), d) = sigma / a (the same functions of x: a step checks it).
Nothing is squared but u, which is at most 2 in size: x*x overflows in float32 for |x| >=
1.8e19, where the norm returned 0; eps / a^2 would underflow for large a, where a constant
row (LayerNorm's centred u all 0) has the gradient (g - mean g) / sqrt(eps).
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from . import normalizations
from .catalog import result
from .rules import ChannelSum, Hypot, Rewritten
from .steps import Step, check, equal
from .symbols import C, epsilon, grad, s, sigma, x, y, y_k

g = grad
_r = sp.Symbol("r", positive=True)
#: The row's scale a, the scaled input u = x / a, the scaled root of eps d = sqrt(eps) / a
#: (in [0, 1]), rho = sigma / a and LayerNorm's centred u, c.
a = sp.Symbol("a", positive=True)
u = sp.Symbol("u", real=True)
d = sp.Symbol("d", nonnegative=True)
rho = sp.Symbol("rho", positive=True)
c = sp.Symbol("c", real=True)
#: How the printed code computes a, u and d (x in the compute dtype, epsilon a float). a is a
#: constant to autograd: the printed functions of (u, d, a) equal the norm's at every a > 0,
#: so their derivatives at fixed a are the norm's (the double backward differentiates the
#: printed VJP).
SCALED = (
    "r = torch.sqrt(torch.as_tensor(epsilon, dtype=x.dtype, device=x.device))",
    "a = torch.maximum(torch.amax(torch.abs(x), dim=-1, keepdim=True).detach(), r).clamp("
    "min=torch.finfo(x.dtype).tiny)",
    "u = x / a",
    "d = r / a",
)

#: norm -> (Jacobian names, its scale symbol, forward (y, scale) in channel sums of x).
NORMS = {
    "rmsnorm": ("rmsnorm_jacobian_diag", "rmsnorm_jacobian_offdiag", sigma),
    "layernorm": ("layernorm_jacobian_diag", "layernorm_jacobian_offdiag", s),
}


def _scale_and_y(name: str):
    """(scale, y) of the vectorised forward, written with channel sums of x."""
    centred = x if name == "rmsnorm" else x - ChannelSum(x) / C
    scale = sp.sqrt(ChannelSum(centred**2) / C + epsilon)
    return scale, centred / scale


def _scaled(name: str) -> Rewritten:
    """y in u and rho, with the temporaries: LayerNorm's centred u, c = u - mean(u), and
    rho = hypot(sqrt(mean(c^2)), d) = sigma / a."""
    defs = {} if name == "rmsnorm" else {c: u - ChannelSum(u) / C}
    centred = u if name == "rmsnorm" else c
    defs[rho] = Hypot(sp.sqrt(ChannelSum(centred**2 / C)), d)
    return Rewritten(centred / rho, defs)


def _explicit(e: sp.Expr, n: int) -> sp.Expr:
    """e for channel 0 of n explicit channels: ChannelSum(f) -> f(x_0, g_0) + ... ."""
    xs, gs = normalizations.channels(n), sp.symbols(f"g0:{n}", real=True)
    e = e.replace(ChannelSum, lambda f: sum(f.subs({x: xk, g: gk}, simultaneous=True)
                                            for xk, gk in zip(xs, gs)))
    return e.subs({x: xs[0], g: gs[0], C: n}, simultaneous=True)


@cache
def scaled_step(name: str) -> Step:
    """The forward and the VJP in u = x / a, d = sqrt(eps) / a, rho = sigma / a and
    sigma = a rho: equal to the definitions for every a > 0 (checked for explicit C)."""
    step, scale_sym = vjp_step(name)
    plain_scale, plain_y = _scale_and_y(name)
    y_u = _scaled(name)
    scaled = (y_u, Rewritten(step.expr.subs(y, y_u.expr), {**y_u.defs, scale_sym: a * rho}))
    plain = (plain_y, step.expr.subs(y, plain_y).subs(scale_sym, plain_scale))
    back = {u: x / a, d: sp.sqrt(epsilon) / a}
    return check(Step(
        f"{name}_scaled", sp.Tuple(*(r.expr for r in scaled)),
        "Scale the row before squaring: x = a u with a = max(max |x_k|, sqrt(eps)), "
        "sqrt(eps) = a d; the norm is a function of x alone, so a cancels.",
        tuple(equal(f"C = {n}: {what} in u = x/a, d = sqrt(eps)/a equals the definition's",
                    _explicit(r.unfolded().subs(back), n), _explicit(p, n))
              for n in (2, 3) for what, r, p in zip(("y", "g^T J"), scaled, plain)),
    )), scaled


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
    xs, gs = normalizations.channels(n), sp.symbols(f"g0:{n}", real=True)
    vector, scale_fn = ((normalizations.rmsnorm_vector, normalizations.rms) if name == "rmsnorm"
                        else (normalizations.layernorm_vector, normalizations.std))
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
        step, scale_sym = vjp_step(name)
        y_x = _scale_and_y(name)[1]
        _, (y_u, grad_x) = scaled_step(name)
        title = result(name).title
        prologue = ("C = x.shape[-1]", *SCALED)
        out.append(Function(f"{name}_forward", (x, epsilon), (("y", y_u),),
                            f"{title}, all channels: y = {sp.sstr(y_x)},\n"
                            f"computed as y = {sp.sstr(y_u.expr)}, "
                            + ", ".join(f"{k} = {sp.sstr(v)}" for k, v in y_u.defs.items())
                            + " (u = x/a, d = sqrt(epsilon)/a).",
                            prologue))
        out.append(Function(f"{name}_backward", (g, x, epsilon), (("grad_x", grad_x),),
                            f"{name}: grad_x = g^T J = {sp.sstr(step.expr)},\n"
                            f"with y = {sp.sstr(y_u.expr)} and {scale_sym} = a*rho "
                            "recomputed from u = x/a.", prologue))
    return out
