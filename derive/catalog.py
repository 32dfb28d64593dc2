"""The catalog: result name -> which norm, which route of the procedure, which facts.

Every result is one route of :func:`derive.procedure.counterparts` applied to a norm of
:mod:`derive.normalizations`, followed by the result-specific steps of :mod:`derive.activations`;
a form not derived from a norm (Derf) is its expression with the steps that prove its facts.
``result(name)`` derives (and checks) only what that result needs, ``catalog()``
derives everything; the procedure's steps are made once per norm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import sympy as sp

from . import activations as facts
from . import cache as disk
from . import derf
from .procedure import Counterparts
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
class Route:
    """One result of the procedure: what it is, its expression, parameters and steps."""

    title: str
    expr: Callable[[Counterparts], sp.Expr]
    params: Callable[[Counterparts], dict]
    steps: Callable[[Counterparts], tuple[Step, ...]]


#: route name -> how a Counterparts gives it (the order of `dynorm derive`'s output).
ROUTES: dict[str, Route] = {
    "per_channel": Route("the norm's channel i, the other channels folded into constants",
                         lambda c: c.per_channel_form, lambda c: {},
                         lambda c: (c.per_channel,)),
    "jacobian_diag": Route("Jacobian, diagonal entry (general C)",
                           lambda c: c.jacobian_diag, lambda c: {},
                           lambda c: (c.split, c.jacobian_diag_step)),
    "jacobian_offdiag": Route("Jacobian, off-diagonal entry (general C)",
                              lambda c: c.jacobian_offdiag, lambda c: {},
                              lambda c: (c.split, c.jacobian_offdiag_step)),
    "derivative_space": Route("derivative space: the diagonal kept, the statistics frozen",
                              lambda c: c.derivative_space_form,
                              lambda c: c.derivative_space_params,
                              lambda c: c.derivative_space_steps),
    "function_space": Route("function space: the constants promoted, exact",
                            lambda c: c.function_space, lambda c: c.function_space_params,
                            lambda c: c.function_space_steps),
}


def route_result(name: str, title: str, cp: Counterparts, route: str,
                 extra: tuple[Step, ...] = ()) -> Result:
    """The Result of one route of the procedure, with result-specific steps after it."""
    r = ROUTES[route]
    return Result(name, title, r.expr(cp), r.params(cp), tuple(r.steps(cp)) + tuple(extra))


def counterpart_results(cp: Counterparts) -> dict[str, Result]:
    """Every route of the procedure on one norm, named after the route (a user's norm)."""
    return {route: route_result(route, r.title, cp, route) for route, r in ROUTES.items()}


@dataclass(frozen=True)
class Entry:
    title: str
    norm: str | None      # a name in derive.normalizations; None for a form not derived from a norm
    route: str | None     # a key of ROUTES
    facts: tuple[Callable[[], Step], ...] = field(default=())
    form: Callable[[], tuple[sp.Expr, dict]] | None = None   # (expr, params) without a norm


_DYT_FACTS = (facts.dyt_properties, facts.matched_slope)
_DYISRU_FACTS = (facts.exact_derivative_route, facts.dyisru_properties, facts.matched_slope,
                 facts.papers_forms)

#: result name -> entry; the order is the order of the CLI's list and of the notes.
ENTRIES: dict[str, Entry] = {
    "rmsnorm": Entry("RMSNorm, channel i", "rmsnorm", "per_channel"),
    "rmsnorm_jacobian_diag": Entry("RMSNorm Jacobian, diagonal entry", "rmsnorm",
                                   "jacobian_diag"),
    "rmsnorm_jacobian_offdiag": Entry("RMSNorm Jacobian, off-diagonal entry", "rmsnorm",
                                      "jacobian_offdiag"),
    "dyt": Entry("DyT from RMSNorm (derivative space, sigma frozen)", "rmsnorm",
                 "derivative_space", _DYT_FACTS),
    "dyisru": Entry("DyISRU from RMSNorm (function space, exact)", "rmsnorm",
                    "function_space", _DYISRU_FACTS),
    "layernorm": Entry("LayerNorm, channel i", "layernorm", "per_channel"),
    "layernorm_jacobian_diag": Entry("LayerNorm Jacobian, diagonal entry", "layernorm",
                                     "jacobian_diag"),
    "layernorm_jacobian_offdiag": Entry("LayerNorm Jacobian, off-diagonal entry", "layernorm",
                                        "jacobian_offdiag"),
    "dyt_ln": Entry("DyT from LayerNorm (derivative space, mu and s frozen)", "layernorm",
                    "derivative_space", (facts.dyt_ln_properties,)),
    "dyisru_ln": Entry("DyISRU from LayerNorm (function space, exact)", "layernorm",
                       "function_space", (facts.dyisru_ln_properties,)),
    "derf": Entry("Derf (not from a norm: its properties, and its shift tied to the LayerNorm "
                  "forms')", None, None, (derf.derf_properties, derf.derf_shift),
                  lambda: (derf.DERF, derf.DERF_PARAMS)),
    "pnorm_jacobian_diag": Entry("p-norm Jacobian, diagonal entry (general p)", "pnorm",
                                 "jacobian_diag"),
    "pnorm_function_space": Entry("From the p-norm (function space, exact, general p)",
                                  "pnorm", "function_space"),
    "pnorm1_derivative_space": Entry("From the 1-norm (derivative space, sigma frozen): a "
                                     "saturating exponential", "pnorm1", "derivative_space",
                                     (facts.pnorm1_properties,)),
    "pnorm4_derivative_space": Entry("From the 4-norm (derivative space, sigma frozen): an "
                                     "implicit relation", "pnorm4", "derivative_space"),
    "scalenorm_derivative_space": Entry("From ScaleNorm (derivative space, its scale frozen)",
                                        "scalenorm", "derivative_space"),
    "scalenorm_function_space": Entry("From ScaleNorm (function space, exact)", "scalenorm",
                                      "function_space"),
}

NAMES = tuple(ENTRIES)


#: Called with a result's name before it is derived (not read from the disk cache): the
#: command line says what takes the time (``announce``).
ANNOUNCE: Callable[[str], None] | None = None


def announce(fn: Callable[[str], None] | None) -> None:
    """Call fn(name) before each result that is derived rather than read from the cache."""
    global ANNOUNCE
    ANNOUNCE = fn


@cache
def result(name: str) -> Result:
    """One result, derived and checked (or read back from the disk cache, where a run with
    the same source and libraries stored it: derive/cache.py); KeyError for an unknown name."""
    if name not in ENTRIES:
        raise KeyError(name)
    stored = disk.load(name)
    if isinstance(stored, Result):
        return stored
    if ANNOUNCE is not None:
        ANNOUNCE(name)
    out = _derive(name)
    disk.store(name, out)
    return out


def _derive(name: str) -> Result:
    e = ENTRIES[name]
    steps = tuple(f() for f in e.facts)
    if e.norm is None:
        expr, params = e.form()
        return Result(name, e.title, expr, dict(params), steps)
    return route_result(name, e.title, facts.of(e.norm), e.route, steps)


def catalog() -> dict[str, Result]:
    """Every result, derived and checked."""
    return {name: result(name) for name in NAMES}
