"""The catalog: result name -> how to derive it (the steps) and what it is (expr, params).

Names are fixed by DESIGN.md; ``result(name)`` derives (and checks) only what that result
needs, ``catalog()`` derives everything. Steps are cached, so shared steps run once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import sympy as sp

from . import derf
from . import layernorm as ln
from . import norms
from . import rmsnorm as rms
from .steps import Step


@dataclass(frozen=True)
class Result:
    """A closed form with the derivation that produced it."""

    name: str
    title: str
    expr: sp.Expr
    params: dict[sp.Symbol, sp.Expr]
    steps: tuple[Step, ...]

    @property
    def symbols(self) -> list[sp.Symbol]:
        """Every symbol of the expression and the parameters' values, sorted by name."""
        free = set(self.expr.free_symbols)
        for p, e in self.params.items():
            free |= {p} | e.free_symbols
        return sorted(free, key=lambda s: s.name)


@dataclass(frozen=True)
class Entry:
    title: str
    expr: Callable[[], sp.Expr]
    steps: tuple[Callable[[], Step], ...]
    params: dict = None


_JAC_RMS = (rms.split, rms.jacobian_diag, rms.jacobian_offdiag)
_JAC_LN = (ln.split, ln.jacobian_diag, ln.jacobian_offdiag)

#: result name -> entry; the order is the order of the CLI's list and of the notes.
ENTRIES: dict[str, Entry] = {
    "rmsnorm": Entry("RMSNorm, channel i", norms.rmsnorm_channel, (rms.per_channel,)),
    "rmsnorm_jacobian_diag": Entry(
        "RMSNorm Jacobian, diagonal entry", lambda: rms.jacobian_diag().expr, _JAC_RMS[:2]),
    "rmsnorm_jacobian_offdiag": Entry(
        "RMSNorm Jacobian, off-diagonal entry", lambda: rms.jacobian_offdiag().expr,
        (_JAC_RMS[0], _JAC_RMS[2])),
    "dyt": Entry(
        "DyT from RMSNorm (derivative space, sigma frozen)", lambda: rms.DYT,
        (*_JAC_RMS[:2], rms.decouple, rms.freeze_sigma, rms.separate, rms.integrate_ode,
         rms.identify_dyt, rms.dyt_properties, rms.matched_slope), rms.DYT_PARAMS),
    "dyisru": Entry(
        "DyISRU from RMSNorm (function space, exact)", lambda: rms.DYISRU,
        (rms.per_channel, rms.promote_beta, rms.exact_derivative_route, rms.dyisru_properties,
         rms.matched_slope, rms.papers_forms), rms.DYISRU_PARAMS),
    "layernorm": Entry("LayerNorm, channel i", norms.layernorm_channel, (ln.ln_per_channel,)),
    "layernorm_jacobian_diag": Entry(
        "LayerNorm Jacobian, diagonal entry", lambda: ln.jacobian_diag().expr, _JAC_LN[:2]),
    "layernorm_jacobian_offdiag": Entry(
        "LayerNorm Jacobian, off-diagonal entry", lambda: ln.jacobian_offdiag().expr,
        (_JAC_LN[0], _JAC_LN[2])),
    "dyt_ln": Entry(
        "DyT from LayerNorm (derivative space, mu and s frozen)", lambda: ln.DYT_LN,
        (*_JAC_LN[:2], ln.freeze_mu_s, ln.separate, ln.integrate_ode, ln.identify_dyt_ln),
        ln.DYT_LN_PARAMS),
    "dyisru_ln": Entry(
        "DyISRU from LayerNorm (function space, exact)", lambda: ln.DYISRU_LN,
        (ln.ln_per_channel, ln.ln_promote_beta), ln.DYISRU_LN_PARAMS),
    "derf": Entry(
        "Derf (not from a norm: its properties, and its shift tied to the LayerNorm forms')",
        lambda: derf.DERF, (derf.derf_properties, derf.derf_shift), derf.DERF_PARAMS),
}

NAMES = tuple(ENTRIES)


@cache
def result(name: str) -> Result:
    """Derive (and check) one result; KeyError for an unknown name."""
    e = ENTRIES[name]
    return Result(name, e.title, e.expr(), dict(e.params or {}), tuple(f() for f in e.steps))


def catalog() -> dict[str, Result]:
    """Every result, derived and checked."""
    return {name: result(name) for name in NAMES}
