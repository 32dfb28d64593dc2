"""What the derived counterparts are, beyond their derivation: facts proven as steps.

The procedure (:mod:`derive.procedure`) derives every form; the steps here prove the
stated properties of the named ones (DyT, DyISRU, their LayerNorm forms, the
p = 1 counterpart's saturating exponential), and DyISRU's second, exact derivative route.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from . import normalizations, ode
from .procedure import Counterparts, counterparts
from .properties import shape_obligations
from .steps import Step, check, equal, limit, series
from .symbols import C, C_AT_LEAST_2, K, S, alpha, beta, epsilon, gamma, sigma, u, x, y


def of(name: str) -> Counterparts:
    """The procedure's results for the catalog's norm called ``name``."""
    return counterparts(normalizations.definition(name))


def _dyt():
    return of("rmsnorm").derivative_space_form


def _dyisru():
    return of("rmsnorm").function_space


@cache
def dyt_properties() -> Step:
    dyt = _dyt()
    return check(Step(
        "dyt_properties", dyt,
        "DyT is odd, strictly increasing, bounded by gamma, with slope gamma*alpha at 0, and "
        "saturates exponentially.",
        (*shape_obligations(dyt, gamma, gamma * alpha),
         limit("saturates exponentially: (gamma - DyT) e^(2 alpha x) -> 2 gamma",
               (gamma - dyt) * sp.exp(2 * alpha * x), x, sp.oo, 2 * gamma,
               far=30 / alpha, rel=1e-20),),
    ))


@cache
def dyisru_properties() -> Step:
    dyisru = _dyisru()
    a = sp.Symbol("a", positive=True)
    isru = lambda t: t / sp.sqrt(1 + a * t**2)  # noqa: E731  (ISRU_a, Carlile et al. 2017)
    inverse = sp.sqrt(beta) * y / sp.sqrt(C - y**2)
    return check(Step(
        "dyisru_properties", dyisru,
        "DyISRU is odd, strictly increasing, bounded by sqrt(C), with slope sqrt(C/beta) at 0, "
        "saturates as 1/x^2, is sqrt(C) ISRU_1(x/sqrt(beta)), and has a closed-form inverse.",
        (*shape_obligations(dyisru, sp.sqrt(C), sp.sqrt(C / beta)),
         limit("saturates as 1/x^2: (sqrt(C) - DyISRU) x^2 -> sqrt(C) beta / 2",
               (sp.sqrt(C) - dyisru) * x**2, x, sp.oo, sp.sqrt(C) * beta / 2,
               far=10**8 * sp.sqrt(beta), rel=1e-12),
         equal("DyISRU = sqrt(C) ISRU_1(x / sqrt(beta))",
               dyisru, sp.sqrt(C) * isru(x / sp.sqrt(beta)).subs(a, 1)),
         equal("inverse: x = sqrt(beta) y / sqrt(C - y^2) recovers x",
               inverse.subs(y, dyisru), x)),
    ))


@cache
def exact_derivative_route() -> Step:
    """1/r -> y/x instead of freezing: the ODE's odd solutions are the DyISRU family."""
    rms = of("rmsnorm")
    r = rms.scale.subs(rms.frozen_values)           # sigma in x and S
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
        (equal("y/x = 1/r on RMSNorm", rms.per_channel_form / x, 1 / r),
         equal("with 1/r = y/x the decoupled ODE is dy/dx = (y/x)(1 - y^2/C)",
               ode.rhs_of(rms.decouple.expr).subs(r, x / y), ode.rhs_of(eq)),
         equal("F'(u) = 1/(u (1 - u^2))", sp.diff(F, u), 1 / (u * (1 - u**2))),
         equal("the family solves dy/dx = (y/x)(1 - y^2/C)",
               sp.diff(family, x), ode.rhs_of(eq).subs(y, family)),
         equal("the family is DyISRU with beta = K", family, _dyisru().subs(beta, K))),
    ))


@cache
def matched_slope() -> Step:
    """tanh u = u - u^3/3 + ..., u/sqrt(1+u^2) = u - u^3/2 + ... with u = alpha x."""
    dyt, dyisru = _dyt(), _dyisru()
    matched = {gamma: sp.sqrt(C), beta: 1 / alpha**2, x: u / alpha}
    return check(Step(
        "matched_slope_series",
        sp.Eq(dyt.subs(matched), sp.simplify(dyisru.subs(matched))),
        "With matched slope (u = alpha x, beta = 1/alpha^2, gamma = sqrt(C)) the two agree "
        "to first order and differ at third: -u^3/3 against -u^3/2.",
        (equal("same slope at 0", sp.diff(dyt, x).subs({x: 0, gamma: sp.sqrt(C)}),
               sp.diff(dyisru, x).subs({x: 0, beta: 1 / alpha**2})),
         series("DyT = sqrt(C) (u - u^3/3) + O(u^5)", dyt.subs(matched), u, 5,
                sp.sqrt(C) * (u - u**3 / 3)),
         series("DyISRU = sqrt(C) (u - u^3/2) + O(u^5)", dyisru.subs(matched), u, 5,
                sp.sqrt(C) * (u - u**3 / 2))),
    ))


def _alpha_at_eps0():
    """With eps = 0, alpha = 1/(sqrt(C) sigma) is 1/||x||_2, for explicit C."""
    alpha0 = of("rmsnorm").derivative_space_params[alpha]
    out = []
    for k in (2, 3, 4):
        xs = normalizations.channels(k)
        sigma0 = normalizations.rms(xs).subs(epsilon, 0)
        out.append(equal(f"C = {k}, epsilon = 0: alpha = 1/||x||_2",
                         alpha0.subs({sigma: sigma0, C: k}),
                         1 / sp.sqrt(sum(xi**2 for xi in xs))))
    return out


@cache
def papers_forms() -> Step:
    rms = of("rmsnorm")
    papers = sp.sqrt(C) * x / sp.sqrt(x**2 + S)
    return check(Step(
        "epsilon_zero", papers,
        "Setting epsilon = 0 recovers the papers' forms: beta = S and alpha = 1/||x||_2.",
        (equal("beta = S at epsilon = 0", rms.function_space_params[beta].subs(epsilon, 0), S),
         equal("RMSNorm(x)_i = sqrt(C) x / sqrt(x^2 + S) at epsilon = 0",
               rms.per_channel_form.subs(epsilon, 0), papers),
         *_alpha_at_eps0()),
    ))


# -- the LayerNorm forms: a shift and the bound sqrt(C - 1) ---------------------------------

@cache
def dyt_ln_properties() -> Step:
    ln = of("layernorm")
    form = ln.derivative_space_form
    return check(Step(
        "dyt_ln_properties", form,
        "About its shift mu, DyT from LayerNorm is odd, strictly increasing, bounded by gamma "
        "= sqrt(C - 1), with slope gamma*alpha.",
        tuple(shape_obligations(form.subs(x, x + ln.shift), gamma, gamma * alpha,
                                where=C_AT_LEAST_2)),
    ))


@cache
def dyisru_ln_properties() -> Step:
    ln = of("layernorm")
    form, shift = ln.function_space, ln.function_space_shift
    return check(Step(
        "dyisru_ln_properties", form,
        "About its shift m, DyISRU from LayerNorm is odd, strictly increasing, bounded by "
        "sqrt(C - 1) (so is LayerNorm's channel at epsilon = 0), with slope sqrt((C - 1)/beta); "
        "an inner shift as Derf's erf(alpha x + s) has.",
        (*shape_obligations(form.subs(x, x + shift), sp.sqrt(C - 1), sp.sqrt((C - 1) / beta),
                            where=C_AT_LEAST_2),
         limit("LayerNorm's channel is bounded by sqrt(C - 1) at epsilon = 0",
               ln.per_channel_form.subs(epsilon, 0), x, sp.oo, sp.sqrt(C - 1))),
    ))


# -- the p-norm family's p = 1 member: a saturating exponential --------------------------

@cache
def pnorm1_properties() -> Step:
    form = of("pnorm1").derivative_space_form
    return check(Step(
        "pnorm1_properties", form,
        "The p = 1 counterpart is odd, bounded by gamma = C, with slope gamma*alpha at 0, and "
        "saturates exponentially, as tanh does, at the rate alpha instead of 2 alpha.",
        (limit("tends to gamma as x -> +oo", form, x, sp.oo, gamma),
         limit("tends to -gamma as x -> -oo", form, x, -sp.oo, -gamma),
         equal("odd: f(-x) = -f(x)", form.subs(x, -x), -form),
         equal("slope gamma*alpha just right of 0", sp.diff(form, x).subs(x, ode.w)
               .subs(ode.w, 0), gamma * alpha),
         limit("saturates exponentially: (gamma - f) e^(alpha x) -> gamma",
               (gamma - form) * sp.exp(alpha * x), x, sp.oo, gamma, far=30 / alpha)),
    ))
