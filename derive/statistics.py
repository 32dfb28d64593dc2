"""A normalization as statistics over the channels, split into channel i and the rest.

A per-token norm gives channel x the output N(x; t_1, ..., t_k): each statistic t_m is a
``mean`` (or ``sum``) over the channels of a summand h_m(x_j), which may use earlier
statistics (LayerNorm's variance uses the mean). Splitting a statistic into the channels
written out and the others, mean(h) = (h(x) + rest) / C, needs the rest as constants: h is
expanded into terms c(t) g(x_j), and each g gets one constant, the sum of g over the other
channels. For channel i alone (the per-channel form) those sums are named after the papers'
(S for x^2, m and Q for x and x^2, R for any other one); for channels i and k written out
(the split form of the Jacobian) they are T (or T_1, T_2, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import sympy as sp

from .parser import MEAN, SUM
from .symbols import C, Q, R, S, m, x

_KINDS = {MEAN: "mean", SUM: "sum"}


class ProcedureError(ValueError):
    """The procedure cannot handle this norm; the message says why."""


@dataclass(frozen=True)
class Statistic:
    """t = mean (or sum) over the channels j of h(x_j); in h, x stands for x_j."""

    symbol: sp.Symbol
    kind: str
    h: sp.Expr

    def of(self, total: sp.Expr, count=C) -> sp.Expr:
        """The statistic whose sum over the channels is ``total``."""
        return total / count if self.kind == "mean" else total

    def call(self) -> sp.Expr:
        """The statistic as written, e.g. mean(x**2)."""
        return (MEAN if self.kind == "mean" else SUM)(self.h)


def _stat_symbol(name: str, h: sp.Expr) -> sp.Symbol:
    """A statistic's symbol: real, and nonnegative where its summand is (a mean of
    |x|^(1/2) is, so |epsilon + tau| is epsilon + tau in what it derives)."""
    return sp.Symbol(name, real=True, nonnegative=True) if h.is_nonnegative else \
        sp.Symbol(name, real=True)


def extract(norm: sp.Expr) -> tuple[sp.Expr, tuple[Statistic, ...]]:
    """(body, statistics): the norm with each mean/sum replaced by its symbol tau_m.

    Innermost first, so a statistic's summand refers to earlier ones by their symbols;
    the same statistic written twice is one statistic.
    """
    stats: list[Statistic] = []

    def visit(e):
        if e.func in _KINDS:
            if len(e.args) != 1:
                raise ProcedureError(f"{e.func}() takes one argument: {e}")
            h = visit(e.args[0])
            for st in stats:
                if (st.kind, st.h) == (_KINDS[e.func], h):
                    return st.symbol
            stats.append(Statistic(_stat_symbol(f"tau_{len(stats) + 1}", h),
                                   _KINDS[e.func], h))
            return stats[-1].symbol
        if not e.args:
            return e
        return e.func(*(visit(a) for a in e.args))

    body = visit(norm)
    if len(stats) == 1:  # one statistic: call it tau
        only = Statistic(_stat_symbol("tau", stats[0].h), stats[0].kind, stats[0].h)
        body, stats = body.xreplace({stats[0].symbol: only.symbol}), [only]
    return body, tuple(stats)


def _terms(h: sp.Expr, earlier: set) -> list[tuple[sp.Expr, sp.Expr]]:
    """h as [(c, g)] with h = sum c g, c free of x, g a function of x alone (or 1)."""
    if not (h.free_symbols & earlier):  # one constant for the whole summand
        return [h.as_independent(x, as_Add=False)] if h.has(x) else [(h, sp.S.One)]
    out = []
    for term in sp.Add.make_args(sp.expand(h)):
        c, g = term.as_independent(x, as_Add=False)
        if g.free_symbols & earlier:
            raise ProcedureError(
                f"the summand {h} does not separate into the channel and the statistics "
                f"({g} mixes them), so the other channels do not fold into constants")
        out.append((c, g))
    return out


def _named(basis: tuple[sp.Expr, ...]) -> tuple[dict, dict, list]:
    """Names for the sums over the other channels (j != i) of each basis function g.

    Returns (sums, definitions, notes): sums[g] is the sum of g over the C - 1 others in
    the named constants; definitions[constant] is the constant in the raw sums P[g].
    """
    raw = {g: sp.Symbol(f"P_{k}") for k, g in enumerate(basis, 1)}
    sums, defs, notes = {}, {}, []
    if x in basis and x**2 in basis:     # LayerNorm's: the others' mean and deviations
        sums[x], sums[x**2] = (C - 1) * m, Q + (C - 1) * m**2
        defs[m], defs[Q] = raw[x] / (C - 1), raw[x**2] - raw[x] ** 2 / (C - 1)
        notes += ["m = mean of the other channels", "Q = sum over j != i of (x_j - m)^2"]
    elif x in basis:
        sums[x], defs[m] = (C - 1) * m, raw[x] / (C - 1)
        notes.append("m = mean of the other channels")
    elif x**2 in basis:
        sums[x**2], defs[S] = S, raw[x**2]
        notes.append("S = sum over j != i of x_j^2")
    rest = [g for g in basis if g not in sums]
    for k, g in enumerate(rest, 1):
        name = R if len(rest) == 1 and g.is_nonnegative else sp.Symbol(f"R_{k}", real=True)
        sums[g], defs[name] = name, raw[g]
        notes.append(f"{name} = sum over j != i of {g.subs(x, sp.Symbol('x_j'))}")
    return sums, defs, notes


@dataclass(frozen=True)
class Split:
    """The statistics with some channels written out and the others folded into constants."""

    channels: tuple[sp.Expr, ...]   # the channels written out (x, or x and x_k)
    count: sp.Expr                  # how many channels the constants stand for
    sums: dict                      # basis g -> sum of g over those channels


class Norm:
    """A normalization of channel x: its body, statistics and their splits."""

    def __init__(self, norm: sp.Expr):
        if not isinstance(norm, sp.Expr):
            raise ProcedureError(f"a norm is an expression, not {type(norm).__name__}: {norm}")
        if x not in norm.free_symbols:
            raise ProcedureError(f"the norm {norm} does not use the channel x")
        self.norm = norm
        self.body, self.stats = extract(norm)
        if not self.stats:
            raise ProcedureError(
                f"the norm {norm} has no statistic: write the channels' statistics with "
                "mean(...) or sum(...)")
        if x not in self.body.free_symbols:
            raise ProcedureError(f"the norm {norm} does not use the channel x outside its "
                                 "statistics")
        self.symbols = tuple(st.symbol for st in self.stats)
        self.terms = {}
        for k, st in enumerate(self.stats):
            self.terms[st.symbol] = _terms(st.h, set(self.symbols[:k]))
        basis = []
        for terms in self.terms.values():
            basis += [g for _, g in terms if g != 1 and g not in basis]
        self.basis = tuple(basis)

    # -- the statistics with channels written out ------------------------------------

    def values(self, split: Split, canon=lambda e: e, nested: bool = True) -> dict:
        """tau_m -> its value in the split's channels and constants.

        ``canon`` shapes each channel sum before it is divided by C; ``nested=False``
        leaves the earlier statistics in a value as their symbols (for the chain rule).
        """
        vals: dict = {}
        for st in self.stats:
            here = sum(st.h.subs(x, c) for c in split.channels)
            rest = sum(c * (split.count if g == 1 else split.sums[g])
                       for c, g in self.terms[st.symbol])
            total = (here + rest).xreplace(vals if nested else {})
            vals[st.symbol] = st.of(canon(total))
        return vals

    @cached_property
    def per_channel_names(self) -> tuple[dict, dict, list]:
        return _named(self.basis)

    @cached_property
    def per_channel_split(self) -> Split:
        return Split((x,), C - 1, self.per_channel_names[0])

    @cached_property
    def pair_constants(self) -> dict:
        """basis g -> T (or T_k): the sum of g over the C - 2 channels other than i, k.

        Positive where g >= 0: an empty sum (C = 2) is the limit T -> 0, and C = 2 is
        checked on its own against the explicit vector.
        """
        one = len(self.basis) == 1
        return {g: sp.Symbol("T" if one else f"T_{k}", real=True,
                             positive=g.is_nonnegative or None)
                for k, g in enumerate(self.basis, 1)}

    def pair_split(self, x_k: sp.Symbol) -> Split:
        return Split((x, x_k), C - 2, self.pair_constants)

    # -- the scale and the shift at fixed statistics -----------------------------------

    @cached_property
    def affine(self) -> tuple[sp.Expr, sp.Expr]:
        """(scale, shift) with N = (x - shift) / scale at fixed statistics."""
        slope = sp.diff(self.body, x)
        if sp.simplify(sp.diff(slope, x)) != 0:
            raise ProcedureError(
                f"the norm {self.norm} is not affine in x at fixed statistics, so its "
                "inverse x = N^-1(y) is not (x - shift) / scale")
        scale = sp.simplify(1 / slope)
        return scale, sp.simplify(-self.body.subs(x, 0) * scale)

    # -- an explicit vector --------------------------------------------------------------

    def explicit(self, xs) -> sp.Matrix:
        """N of the concrete vector xs (C = len(xs)), evaluated from the norm as written."""
        n = len(xs)

        def ev(e, xj):
            if e.func in _KINDS:
                total = sum(ev(e.args[0], xl) for xl in xs)
                return total / n if e.func == MEAN else total
            if e == x:
                return xj
            if e == C:
                return sp.Integer(n)
            if not e.args:
                return e
            return e.func(*(ev(a, xj) for a in e.args))

        return sp.Matrix([ev(self.norm, xi) for xi in xs])

    def constants_of(self, others, given: dict | None = None) -> dict:
        """The per-channel constants (S, or m and Q, ...) of the other channels' values."""
        raw = {sp.Symbol(f"P_{k}"): sum(g.subs(given or {}).subs(x, v) for v in others)
               for k, g in enumerate(self.basis, 1)}
        n = len(others) + 1
        return {c: d.xreplace(raw).subs(C, n) for c, d in self.per_channel_names[1].items()}
