"""Derf (Chen et al. 2025): gamma * erf(alpha x + shift), not derived from a norm.

Its properties are proven as DyT's are, and its inner shift is tied to the LayerNorm forms'
input shift: with shift = -alpha mu it is gamma erf(alpha (x - mu)), the shape of dyt_ln with
erf in place of tanh.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from .properties import shape_obligations
from .steps import Step, check, equal, limit
from .symbols import alpha, gamma, mu, shift, u, x

DERF = gamma * sp.erf(alpha * x + shift)
DERF_PARAMS: dict = {}


@cache
def derf_properties() -> Step:
    centred = DERF.subs(x, x - shift / alpha)   # the centre x = -shift/alpha moved to 0
    return check(Step(
        "derf_properties", DERF,
        "Derf is bounded by gamma, strictly increasing, odd about x = -shift/alpha with slope "
        "2 gamma alpha/sqrt(pi) there, 2 gamma alpha exp(-shift^2)/sqrt(pi) at 0, and saturates "
        "like exp(-u^2)/u, faster than tanh's exp(-2u).",
        (*shape_obligations(centred, gamma, 2 * gamma * alpha / sp.sqrt(sp.pi)),
         equal("slope at 0 is 2 gamma alpha exp(-shift^2)/sqrt(pi)", sp.diff(DERF, x).subs(x, 0),
               2 * gamma * alpha * sp.exp(-shift**2) / sp.sqrt(sp.pi)),
         equal("its distance to the bound is gamma erfc(alpha x + shift)",
               gamma - DERF, gamma * sp.erfc(alpha * x + shift)),
         limit("saturates like exp(-u^2)/u: erfc(u) u exp(u^2) -> 1/sqrt(pi)",
               sp.erfc(u) * u * sp.exp(u**2), u, sp.oo, 1 / sp.sqrt(sp.pi),
               far=sp.Integer(100), rel=1e-4)),
    ))


@cache
def derf_shift() -> Step:
    return check(Step(
        "derf_shift", DERF.subs(shift, -alpha * mu),
        "The inner shift is the LayerNorm forms' input shift: shift = -alpha mu gives "
        "gamma erf(alpha (x - mu)), centred on the mean as dyt_ln and dyisru_ln are.",
        (equal("shift = -alpha mu: gamma erf(alpha (x - mu))", DERF.subs(shift, -alpha * mu),
               gamma * sp.erf(alpha * (x - mu))),),
    ))
