"""The LayerNorm counterparts (MATH.md sections 2 and 5): dyt_ln and dyisru_ln.

The same two routes as for RMSNorm; the mean adds an input shift and lowers the bound
from sqrt(C) to sqrt(C - 1).
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from . import norms, ode
from .explicit import jacobian_obligations
from .properties import shape_obligations
from .rmsnorm import SIZES
from .steps import Step, check, equal, limit
from .symbols import C, C_AT_LEAST_2, Q, T, U, alpha, beta, epsilon, gamma, m, mu, s, x, x_k, y, y_k


def _in_s_y(expr: sp.Expr) -> sp.Expr:
    """Rewrite an expression in x, x_k, T, U into mu, s, y, y_k (the definitions inverted)."""
    rest = {T: C * mu - x - x_k, U: C * (s**2 - epsilon + mu**2) - x**2 - x_k**2}
    e = expr.subs(rest).subs({x: mu + y * s, x_k: mu + y_k * s})
    return sp.factor(sp.simplify(e))


def _back(expr: sp.Expr) -> sp.Expr:
    """mu, s, y, y_k -> their definitions in x, x_k, T, U."""
    mean, sd = norms.layernorm_split()
    return expr.subs({y: (x - mu) / s, y_k: (x_k - mu) / s}).subs({mu: mean, s: sd})


@cache
def split() -> Step:
    mean, sd = norms.layernorm_split()
    return check(Step(
        "ln_split_channels", (x - mean) / sd,
        "Write LayerNorm's channel i with channels i and k explicit; T and U are the sum and "
        "the sum of squares of the other C - 2 channels.",
        (equal("the split variance is mean of squares minus squared mean",
               sd**2 - epsilon, (x**2 + x_k**2 + U) / C - ((x + x_k + T) / C) ** 2),),
    ))


def _explicit_entry(xs, i, j, sd):
    n, mean = len(xs), norms.mean(xs)
    yi, yj = (xs[i] - mean) / sd, (xs[j] - mean) / sd
    return ((1 if i == j else 0) - sp.Rational(1, n) - yi * yj / n) / sd


def _jacobian(name: str, wrt: sp.Symbol, target: sp.Expr, diagonal: bool) -> Step:
    d = sp.diff(split().expr, wrt)
    return check(Step(
        name, target,
        f"Differentiate y_i by x_{'i' if diagonal else 'k'} and rewrite in s, mu and y.",
        (equal("the derivative rewritten in s and y is the stated entry", _in_s_y(d), target),
         equal("the stated entry is the derivative (x, x_k, T, U form)", _back(target), d),
         *jacobian_obligations(norms.layernorm_vector, norms.std, _explicit_entry,
                               diagonal, SIZES)),
    ))


@cache
def jacobian_diag() -> Step:
    return _jacobian("ln_jacobian_diag", x, (1 - 1 / C - y**2 / C) / s, True)


@cache
def jacobian_offdiag() -> Step:
    return _jacobian("ln_jacobian_offdiag", x_k, -(1 + y * y_k) / (C * s), False)


# -- derivative space: dyt_ln -----------------------------------------------------------

@cache
def freeze_mu_s() -> Step:
    rhs = (1 - 1 / C - y**2 / C) / s
    return check(Step(
        "ln_decouple_and_freeze", ode.ode(rhs),
        "Keep the diagonal (decoupling in derivative space), then freeze mu and s to "
        "constants (the approximation); y(mu) = 0 since the output vanishes at the mean.",
        (equal("the right-hand side is the diagonal entry", rhs, jacobian_diag().expr),
         equal("the frozen right-hand side does not depend on x", sp.diff(rhs, x), 0)),
    ))


@cache
def separate() -> Step:
    return ode.separate("ln_separate_variables", C - 1, C * s)


@cache
def integrate_ode() -> Step:
    return ode.integrate("ln_integrate_with_y_mu", C - 1, C * s, mu, freeze_mu_s().expr)


DYT_LN = gamma * sp.tanh(alpha * (x - mu))
DYT_LN_PARAMS = {alpha: sp.sqrt(C - 1) / (C * s), gamma: sp.sqrt(C - 1)}


@cache
def identify_dyt_ln() -> Step:
    return check(Step(
        "identify_dyt_ln", DYT_LN,
        "Read off gamma tanh(alpha (x - mu)): gamma = sqrt(C-1), alpha = sqrt(C-1)/(C s); "
        "the input shift is the mean.",
        (equal("with these parameters it is the ODE's solution",
               DYT_LN.subs(DYT_LN_PARAMS), integrate_ode().expr.rhs),
         *shape_obligations(DYT_LN.subs(x, x + mu), gamma, gamma * alpha, where=C_AT_LEAST_2)),
    ))


# -- function space: dyisru_ln ----------------------------------------------------------

DYISRU_LN = sp.sqrt(C - 1) * (x - m) / sp.sqrt(beta + (x - m) ** 2)
DYISRU_LN_PARAMS = {beta: C * (Q + C * epsilon) / (C - 1)}


@cache
def ln_per_channel() -> Step:
    form = sp.sqrt(C - 1) * (x - m) / sp.sqrt((x - m) ** 2 + C * (Q + C * epsilon) / (C - 1))
    return check(Step(
        "layernorm_per_channel", form,
        "Write LayerNorm's channel i with the other channels folded into their mean m and "
        "their sum of squared deviations Q.",
        (equal("equals LayerNorm(x)_i in m and Q", form, norms.layernorm_channel()),
         equal("LayerNorm(x)_i in m and Q is (x - mu)/s", norms.layernorm_channel(),
               (x - norms.layernorm_channel_parts()[0]) / norms.layernorm_channel_parts()[1]),
         *_explicit(form),
         limit("bounded by sqrt(C - 1) at epsilon = 0", form.subs(epsilon, 0), x, sp.oo,
               sp.sqrt(C - 1))),
    ))


def _explicit(form):
    """For explicit C: the mean and the squared deviations, written in m and Q, are exact."""
    out = []
    for n in SIZES:
        xs = norms.channels(n)
        rest = xs[1:]
        mr = norms.mean(rest)
        at = {x: xs[0], m: mr, Q: sum((xj - mr) ** 2 for xj in rest), C: n}
        mean, sd = norms.layernorm_channel_parts()
        out.append(equal(f"C = {n}: mu and s written in m and Q are those of the explicit vector",
                         sp.Matrix([mean.subs(at), sd.subs(at) ** 2]),
                         sp.Matrix([norms.mean(xs), norms.std(xs) ** 2])))
    return out


@cache
def ln_promote_beta() -> Step:
    exact = DYISRU_LN.subs(DYISRU_LN_PARAMS)
    # In s rather than Q: Q = C (s^2 - epsilon) - (C - 1) (x - m)^2 / C, y = (x - mu)/s.
    in_s = {Q: C * (s**2 - epsilon) - (C - 1) * (x - m) ** 2 / C}
    diag = jacobian_diag().expr.subs(y, (C - 1) * (x - m) / (C * s))
    return check(Step(
        "ln_promote_beta", DYISRU_LN,
        "Promote C (Q + C epsilon)/(C - 1) to one global beta, keep the shift m: exact, like "
        "DyISRU, and a reason for an inner shift (as Derf's erf(alpha x + s) has).",
        (equal("with beta = C (Q + C epsilon)/(C - 1) it equals LayerNorm(x)_i",
               exact, ln_per_channel().expr),
         equal("its derivative equals the LayerNorm Jacobian's diagonal entry",
               sp.diff(exact, x).subs(in_s), diag),
         *shape_obligations(DYISRU_LN.subs(x, x + m), sp.sqrt(C - 1), sp.sqrt((C - 1) / beta),
                            where=C_AT_LEAST_2)),
    ))
