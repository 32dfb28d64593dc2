"""From RMSNorm to DyT (derivative space) and DyISRU (function space): MATH.md 2-4.

One function per step; each returns a Step whose obligations SymPy checks. Steps are
cached, so a step shared by several results is derived and checked once.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from . import norms, ode
from .explicit import jacobian_obligations
from .properties import shape_obligations
from .steps import Step, check, equal, limit, series
from .symbols import C, K, R, S, alpha, beta, epsilon, gamma, sigma, u, x, x_k, y, y_k

SIZES = range(2, 7)  # the concrete C checked against Matrix.jacobian


def _in_sigma_y(expr: sp.Expr) -> sp.Expr:
    """Rewrite an expression in x, x_k, R into sigma, y, y_k (the definitions inverted)."""
    rest = C * (sigma**2 - epsilon) - x**2 - x_k**2   # from sigma = RMS of the vector
    e = expr.subs(R, rest).subs({x: y * sigma, x_k: y_k * sigma})
    return sp.factor(sp.simplify(e))


def _back(expr: sp.Expr) -> sp.Expr:
    """sigma, y, y_k -> their definitions in x, x_k, R (to check a rewrite)."""
    r = norms.rms_split()
    return expr.subs({y: x / r, y_k: x_k / r}).subs(sigma, r)


@cache
def split() -> Step:
    r = norms.rms_split()
    return check(Step(
        "split_channels", x / r,
        "Write RMSNorm's channel i with channels i and k explicit and R the sum of squares "
        "of the other C - 2 channels, so that d/dx_i and d/dx_k are ordinary derivatives.",
        (equal("the split RMS squared is the mean of squares plus epsilon",
               r**2, (x**2 + x_k**2 + R) / C + epsilon),),
    ))


def _jacobian(name: str, wrt: sp.Symbol, target: sp.Expr, diagonal: bool) -> Step:
    derived = _in_sigma_y(sp.diff(split().expr, wrt))
    return check(Step(
        name, target,
        f"Differentiate y_i by x_{'i' if diagonal else 'k'} and rewrite in sigma and y.",
        (equal("the derivative rewritten in sigma and y is the stated entry", derived, target),
         equal("the stated entry is the derivative (x, x_k, R form)",
               _back(target), sp.diff(split().expr, wrt)),
         *jacobian_obligations(norms.rmsnorm_vector, norms.rms, _explicit_entry,
                                   diagonal, SIZES)),
    ))


def _explicit_entry(xs, i, j, r):
    yi, yj = xs[i] / r, xs[j] / r
    return ((1 if i == j else 0) - yi * yj / len(xs)) / r


@cache
def jacobian_diag() -> Step:
    return _jacobian("jacobian_diag", x, (1 - y**2 / C) / sigma, True)


@cache
def jacobian_offdiag() -> Step:
    return _jacobian("jacobian_offdiag", x_k, -y * y_k / (C * sigma), False)


# -- derivative space: DyT --------------------------------------------------------------

@cache
def decouple() -> Step:
    r = norms.rms_split()
    rhs = (1 - y**2 / C) / r
    full = sum(_back(e.expr) * d for e, d in ((jacobian_diag(), 1), (jacobian_offdiag(), 0)))
    return check(Step(
        "decouple_derivative_space", ode.ode(rhs),
        "Decoupling in derivative space: keep the diagonal of the Jacobian, so that y_i is "
        "treated as a function of x_i alone (the other channels held fixed, dx_k = 0).",
        (equal("with dx_k = 0 the total differential of y_i is the diagonal entry times dx_i",
               full, rhs.subs(y, x / r)),),
    ))


@cache
def freeze_sigma() -> Step:
    rhs = (1 - y**2 / C) / sigma
    return check(Step(
        "freeze_sigma", ode.ode(rhs),
        "The approximation: the RMS r depends on x_i, but is frozen to the constant sigma; "
        "the ODE becomes autonomous (a Riccati equation).",
        (equal("the frozen right-hand side does not depend on x", sp.diff(rhs, x), 0),
         equal("it equals the decoupled one where r = sigma",
               ode.rhs_of(decouple().expr).subs(norms.rms_split(), sigma), rhs)),
    ))


@cache
def separate() -> Step:
    return ode.separate("separate_variables", C, C * sigma)


@cache
def integrate_ode() -> Step:
    return ode.integrate("integrate_with_y0", C, C * sigma, 0, freeze_sigma().expr)


DYT = gamma * sp.tanh(alpha * x)
DYT_PARAMS = {alpha: 1 / (sp.sqrt(C) * sigma), gamma: sp.sqrt(C)}


@cache
def identify_dyt() -> Step:
    sol = integrate_ode().expr.rhs
    return check(Step(
        "identify_dyt", DYT,
        "Read off DyT(x) = gamma tanh(alpha x) with gamma = sqrt(C), alpha = 1/(sqrt(C) sigma).",
        (equal("DyT with these parameters is the ODE's solution", DYT.subs(DYT_PARAMS), sol),
         *_alpha_at_eps0()),
    ))


def _alpha_at_eps0():
    """With eps = 0, alpha = 1/(sqrt(C) sigma) is 1/||x||_2, for explicit C."""
    out = []
    for n in SIZES:
        xs = norms.channels(n)
        sigma0 = norms.rms(xs).subs(epsilon, 0)
        out.append(equal(f"C = {n}, epsilon = 0: alpha = 1/||x||_2",
                         DYT_PARAMS[alpha].subs({sigma: sigma0, C: n}),
                         1 / sp.sqrt(sum(xi**2 for xi in xs))))
    return out


@cache
def dyt_properties() -> Step:
    return check(Step(
        "dyt_properties", DYT,
        "DyT is odd, strictly increasing, bounded by gamma, with slope gamma*alpha at 0, and "
        "saturates exponentially.",
        (*shape_obligations(DYT, gamma, gamma * alpha),
         limit("saturates exponentially: (gamma - DyT) e^(2 alpha x) -> 2 gamma",
               (gamma - DYT) * sp.exp(2 * alpha * x), x, sp.oo, 2 * gamma,
               far=30 / alpha, rel=1e-20),),
    ))


# -- function space: DyISRU -------------------------------------------------------------

DYISRU = sp.sqrt(C) * x / sp.sqrt(beta + x**2)
DYISRU_PARAMS = {beta: S + C * epsilon}


@cache
def per_channel() -> Step:
    form = sp.sqrt(C) * x / sp.sqrt(x**2 + S + C * epsilon)
    return check(Step(
        "rmsnorm_per_channel", form,
        "Write RMSNorm's channel i with the other channels folded into S = sum_{j != i} x_j^2.",
        (equal("equals x / sqrt((x^2 + S)/C + epsilon)", form, norms.rmsnorm_channel()),
         *_per_channel_explicit(form)),
    ))


def _per_channel_explicit(form):
    out = []
    for n in SIZES:
        xs = norms.channels(n)
        rest = sum(xi**2 for xi in xs[1:])
        out.append(equal(f"C = {n}: equals channel 0 of the explicit RMSNorm",
                         form.subs({x: xs[0], S: rest, C: n}), norms.rmsnorm_vector(xs)[0]))
    return out


@cache
def promote_beta() -> Step:
    exact = DYISRU.subs(DYISRU_PARAMS)
    diag = _back(jacobian_diag().expr).subs(R + x_k**2, S)
    return check(Step(
        "promote_beta", DYISRU,
        "Decoupling in function space: promote S + C*epsilon to one global parameter beta. "
        "No approximation: with beta = S + C*epsilon it is RMSNorm exactly.",
        (equal("with beta = S + C epsilon, DyISRU equals RMSNorm(x)_i", exact, per_channel().expr),
         equal("its derivative is sqrt(C) beta / (beta + x^2)^(3/2)",
               sp.diff(DYISRU, x), sp.sqrt(C) * beta / (beta + x**2) ** sp.Rational(3, 2)),
         equal("its derivative equals the Jacobian's diagonal entry", sp.diff(exact, x), diag)),
    ))


@cache
def exact_derivative_route() -> Step:
    """1/r -> y/x instead of freezing: the ODE's odd solutions are the DyISRU family."""
    r = norms.rms_split()
    eq = ode.ode(y / x * (1 - y**2 / C))
    # y = sqrt(C) u, 0 < u < 1: du / (u (1 - u^2)) = dx / x, F(u) = log(u / sqrt(1 - u^2)).
    F = sp.log(u) - sp.log(1 - u**2) / 2
    roots = sp.solve(sp.Eq(u**2 / (1 - u**2), x**2 / K), u)   # exp(2 F(u)) = exp(2 log x + c)
    odd = [e for e in roots if sp.sign(e.subs(x, 1)) == 1][0]
    family = sp.sqrt(C) * odd
    return check(Step(
        "exact_derivative_route", sp.Eq(ode.Y(x), family),
        "Replace 1/r by y/x (exact on RMSNorm) instead of freezing it: dy/dx = (y/x)(1 - y^2/C); "
        "separate with y = sqrt(C) u, integrate to log(u/sqrt(1-u^2)) = log x + c.",
        (equal("y/x = 1/r on RMSNorm", (y / x).subs(y, x / r), 1 / r),
         equal("F'(u) = 1/(u (1 - u^2))", sp.diff(F, u), 1 / (u * (1 - u**2))),
         equal("the family solves dy/dx = (y/x)(1 - y^2/C)",
               sp.diff(family, x), ode.rhs_of(eq).subs(y, family)),
         equal("the family is DyISRU with beta = K", family, DYISRU.subs(beta, K))),
    ))


@cache
def dyisru_properties() -> Step:
    a = sp.Symbol("a", positive=True)
    isru = lambda t: t / sp.sqrt(1 + a * t**2)  # noqa: E731  (ISRU_a, Carlile et al. 2017)
    inverse = sp.sqrt(beta) * y / sp.sqrt(C - y**2)
    return check(Step(
        "dyisru_properties", DYISRU,
        "DyISRU is odd, strictly increasing, bounded by sqrt(C), with slope sqrt(C/beta) at 0, "
        "saturates as 1/x^2, is sqrt(C) ISRU_1(x/sqrt(beta)), and has a closed-form inverse.",
        (*shape_obligations(DYISRU, sp.sqrt(C), sp.sqrt(C / beta)),
         limit("saturates as 1/x^2: (sqrt(C) - DyISRU) x^2 -> sqrt(C) beta / 2",
               (sp.sqrt(C) - DYISRU) * x**2, x, sp.oo, sp.sqrt(C) * beta / 2,
               far=10**8 * sp.sqrt(beta), rel=1e-12),
         equal("DyISRU = sqrt(C) ISRU_1(x / sqrt(beta))",
               DYISRU, sp.sqrt(C) * isru(x / sp.sqrt(beta)).subs(a, 1)),
         equal("inverse: x = sqrt(beta) y / sqrt(C - y^2) recovers x", inverse.subs(y, DYISRU), x)),
    ))


@cache
def matched_slope() -> Step:
    """tanh u = u - u^3/3 + ..., u/sqrt(1+u^2) = u - u^3/2 + ... with u = alpha x."""
    matched = {gamma: sp.sqrt(C), beta: 1 / alpha**2, x: u / alpha}
    return check(Step(
        "matched_slope_series",
        sp.Eq(DYT.subs(matched), sp.simplify(DYISRU.subs(matched))),
        "With matched slope (u = alpha x, beta = 1/alpha^2, gamma = sqrt(C)) the two agree "
        "to first order and differ at third: -u^3/3 against -u^3/2.",
        (equal("same slope at 0", sp.diff(DYT, x).subs({x: 0, gamma: sp.sqrt(C)}),
               sp.diff(DYISRU, x).subs({x: 0, beta: 1 / alpha**2})),
         series("DyT = sqrt(C) (u - u^3/3) + O(u^5)", DYT.subs(matched), u, 5,
                sp.sqrt(C) * (u - u**3 / 3)),
         series("DyISRU = sqrt(C) (u - u^3/2) + O(u^5)", DYISRU.subs(matched), u, 5,
                sp.sqrt(C) * (u - u**3 / 2))),
    ))


@cache
def papers_forms() -> Step:
    return check(Step(
        "epsilon_zero", sp.sqrt(C) * x / sp.sqrt(x**2 + S),
        "Setting epsilon = 0 recovers the papers' forms: beta = S and alpha = 1/||x||_2.",
        (equal("beta = S at epsilon = 0", DYISRU_PARAMS[beta].subs(epsilon, 0), S),
         equal("RMSNorm(x)_i = sqrt(C) x / sqrt(x^2 + S) at epsilon = 0",
               norms.rmsnorm_channel().subs(epsilon, 0), sp.sqrt(C) * x / sp.sqrt(x**2 + S)),
         *_alpha_at_eps0()),
    ))
