"""A derivation is data: ordered steps, each with obligations checked by two witnesses.

An :class:`Obligation` is a claim ``lhs == rhs`` (or ``expr > 0``, a limit, a series). The
exact witness asks SymPy to reduce the difference to 0; the numeric witness evaluates
both sides at random rational points at 50 digits. A step whose obligation fails raises
:class:`DerivationError` naming the step and the claim.

The exact witness has no bound of its own: SymPy's simplify may take minutes on a large
expression. Inside ``with bounded(seconds) as b:`` each exact witness that has not decided
within ``seconds`` is abandoned; the claim then rests on the numeric witness alone, and
``b.numeric_only`` lists it (the caller says so). The catalog's derivations run unbounded.
"""
from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import sympy as sp

DIGITS = 50
POINTS = 3
_SEED = 20250327


class DerivationError(RuntimeError):
    """An obligation of a step failed: the derivation stops here."""


# -- exact witness ---------------------------------------------------------------------

def _rewrite_exp(e: sp.Expr) -> sp.Expr:
    return sp.simplify(e.rewrite(sp.exp))


def _radicands(e: sp.Expr) -> set:
    return {q.base for q in e.atoms(sp.Pow) if not q.exp.is_integer and not q.base.is_Atom}


def _free_radicals(e: sp.Expr) -> sp.Expr:
    """Each radicand (base of a non-integer power) -> a free positive symbol in every power
    of it, then cancel.

    If the result is 0 for every value of those symbols, it is 0 at the bases' values:
    a stronger claim, rational where the original has radicals, proven by cancel at once.
    """
    bases = _radicands(e)
    if not bases:
        return e
    free = {b: sp.Dummy("r", positive=True) for b in sorted(bases, key=sp.default_sort_key)}
    return sp.cancel(e.replace(lambda q: q.is_Pow and q.base in free,
                               lambda q: free[q.base] ** q.exp))


def _factored_radicals(e: sp.Expr) -> sp.Expr:
    """Factor each radicand first, in every power of it (sqrt((n+1)^2 P) = (n+1) sqrt(P)
    for n + 1 > 0), so that equal radicands written differently become one; then free
    them as above."""
    bases = _radicands(e)
    return _free_radicals(e.replace(lambda q: q.is_Pow and q.base in bases,
                                    lambda q: sp.factor(q.base) ** q.exp))


def _abs_term(term: sp.Expr) -> sp.Expr:
    """In one product: t^k sign(t) -> t^(k-1) |t|, then t^(2j) |t|^q -> |t|^(2j+q)."""
    for f in sp.Mul.make_args(term):
        if isinstance(f, sp.sign):
            t = f.args[0]
            k = sp.S(term.as_powers_dict().get(t, 0))
            if k.is_Integer and k >= 1:
                term = term / (f * t) * sp.Abs(t)
    powers = term.as_powers_dict()
    for a in [f for f in powers if isinstance(f, sp.Abs)]:
        k = sp.S(powers.get(a.args[0], 0))
        if k.is_Integer and k % 2 == 0 and k > 0:
            term = term / a.args[0] ** k * a ** k
    return term


def abs_products(e: sp.Expr) -> sp.Expr:
    """t sign(t) -> |t| and t^2 |t| -> |t|^3 in each term, t real (the derivative of
    |t|^p brings sign(t))."""
    return sp.Add(*(_abs_term(t) for t in sp.Add.make_args(sp.expand(e))))


#: The hyperbolic functions as rational functions of w = exp(u) (w > 0).
_HYPERBOLIC = {sp.tanh: lambda w: (w**2 - 1) / (w**2 + 1), sp.cosh: lambda w: (w + 1 / w) / 2,
               sp.sinh: lambda w: (w - 1 / w) / 2}


def _hyperbolic(e: sp.Expr) -> sp.Expr:
    """tanh(u), cosh(u), sinh(u) -> rational functions of a free positive symbol w_u per
    argument u (w_u stands for exp(u)), radicals freed as above, then cancel.

    If the result is 0 for every value of the w_u, it is 0 at w_u = exp(u): the derivatives
    of a sum of tanh terms are proven by one cancel, where simplify takes minutes."""
    calls = {f for f in e.atoms(sp.Function) if f.func in _HYPERBOLIC}
    if not calls:
        return e
    w = {u: sp.Dummy("w", positive=True)
         for u in sorted({f.args[0] for f in calls}, key=sp.default_sort_key)}
    rational = e.xreplace({f: _HYPERBOLIC[f.func](w[f.args[0]]) for f in calls})
    return _free_radicals(sp.cancel(rational))


def _signs(e: sp.Expr) -> sp.Expr:
    return sp.cancel(abs_products(e)) if e.has(sp.sign) else e


def _powers(e: sp.Expr) -> sp.Expr:
    """(a b)^q -> a^q b^q and (a^r)^q -> a^(r q) where the assumptions allow, then
    a a^(q-1) -> a^q: symbolic exponents (a p-norm's) that cancel cannot see."""
    return sp.cancel(sp.powsimp(sp.expand(sp.powdenest(sp.expand_power_base(e)))))


#: Tried in order, cheapest first; the first that yields 0 proves the claim.
_REDUCERS: tuple[Callable[[sp.Expr], sp.Expr], ...] = (
    lambda e: e,
    _hyperbolic,
    _free_radicals,
    _factored_radicals,
    sp.expand,
    sp.cancel,
    _signs,
    _powers,
    sp.simplify,
    _rewrite_exp,
    lambda e: sp.simplify(e.rewrite(sp.erf)),   # erfc(u) = 1 - erf(u)
)


def _entries(e) -> list:
    """The entries of a matrix, or [e] for a scalar."""
    return list(e) if isinstance(e, sp.MatrixBase) else [e]


def is_zero(e: sp.Expr) -> bool:
    """True when SymPy reduces ``e`` (every entry, for a matrix) to exactly 0."""
    return all(any(reduce(entry) == 0 for reduce in _REDUCERS)
               for entry in _entries(sp.sympify(e).doit()))


def is_positive(e: sp.Expr) -> bool:
    """True when SymPy proves ``e > 0`` from the symbols' assumptions."""
    e = sp.sympify(e).doit()
    return any(reduce(e).is_positive is True for reduce in _REDUCERS)


# -- a bound on the exact witness ----------------------------------------------------------

class Bound:
    """How long each exact witness may take (``seconds``; all of them together ``total``),
    and the claims that went over it: step name and claim, checked numerically only."""

    def __init__(self, seconds: float, total: float):
        self.seconds, self.left = seconds, total
        self.numeric_only: list[str] = []


_BOUND: list[Bound] = []


@contextlib.contextmanager
def bounded(seconds: float, total: float | None = None) -> Iterator[Bound]:
    """Within the block, an exact witness that has not decided in ``seconds`` (or once
    ``total`` seconds of exact witnesses are spent) gives up: the claim rests on the numeric
    witness, and the Bound yielded lists it. The clock interrupts SymPy only in the main
    thread (SIGALRM); elsewhere the block runs unbounded."""
    _BOUND.append(Bound(seconds, float("inf") if total is None else total))
    try:
        yield _BOUND[-1]
    finally:
        _BOUND.pop()


class _Overtime(Exception):
    """An exact witness ran past its bound."""


def _overtime(signum, frame):
    raise _Overtime


def _can_interrupt() -> bool:
    return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0)   # no other timer running


def _exact_within(o: "Obligation", bound: Bound) -> bool | None:
    """o's exact witness, or None where it went over the bound."""
    seconds = min(bound.seconds, bound.left)
    if seconds <= 0 or not _can_interrupt():
        return None if seconds <= 0 else _EXACT[o.kind](o)
    start, previous = time.monotonic(), signal.signal(signal.SIGALRM, _overtime)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        try:
            return _EXACT[o.kind](o)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Overtime:   # also when the clock rang while the witness was returning
        return None
    finally:
        signal.signal(signal.SIGALRM, previous)
        bound.left -= time.monotonic() - start


#: Deadlines longer than this (three years) are none: the timer cannot hold much more.
UNBOUNDED = 1e8


class Deadline(BaseException):
    """The time given to a whole derivation (``deadline``) ran out. ``steps`` names the steps
    it ran out in, innermost first (procedure's steps add themselves on the way out). A
    BaseException, so that no ``except Exception`` on the way (SymPy's own, a step's) takes
    it for a failure of the step."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds, self.steps = seconds, []


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, SymPy is interrupted after ``seconds`` with Deadline (in the main
    thread, by SIGALRM; elsewhere, under another timer, or for more than UNBOUNDED seconds,
    inf included, the block runs unbounded). The exact witnesses' own bounds stand aside
    meanwhile (one timer at a time)."""
    if not _can_interrupt() or not seconds <= UNBOUNDED:
        yield
        return

    def ring(signum, frame):
        raise Deadline(seconds)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- numeric witness --------------------------------------------------------------------

def _sample(sym: sp.Symbol, rng: random.Random) -> sp.Rational:
    if sym.is_integer:
        return sp.Integer(rng.randint(2, 64))
    q = Fraction(rng.randint(1, 4000), rng.randint(1, 997))
    if not (sym.is_positive or sym.is_nonnegative) and rng.random() < 0.5:
        q = -q
    return sp.Rational(q.numerator, q.denominator)


def random_points(symbols, n: int = POINTS, seed: int = _SEED) -> list[dict]:
    """``n`` random rational points for ``symbols``, respecting their assumptions."""
    rng = random.Random(seed)
    ordered = sorted(symbols, key=lambda s: s.name)
    return [{s: _sample(s, rng) for s in ordered} for _ in range(n)]


def evaluate(e: sp.Expr, point: dict):
    """e at the point, to DIGITS digits (rationals enter as floats of more digits: an
    exact rational power would factor its integers)."""
    floats = {k: q if q.is_Integer else sp.N(q, DIGITS + 10) for k, q in point.items()}
    return sp.N(sp.sympify(e).xreplace(floats).doit(), DIGITS)


def close(a, b, rel: float = 1e-30) -> bool:
    """Entry by entry, |a - b| <= rel * max(1, |a|, |b|), at DIGITS digits (a Python
    complex would round both to 16 digits: a claim off by 1e-20 would pass)."""
    pairs = zip(_entries(a), _entries(b), strict=True)
    try:
        return all(_close(sp.N(p, DIGITS), sp.N(q, DIGITS), rel) for p, q in pairs)
    except TypeError:  # something did not evaluate to a number: not witnessed
        return False


def _close(a: sp.Expr, b: sp.Expr, rel: float) -> bool:
    if not (a.is_number and b.is_number):
        raise TypeError("not a number")
    if not (a.is_finite and b.is_finite):   # oo, zoo, nan: nothing witnessed
        return False
    error = sp.N(abs(a - b), DIGITS)
    size = max(sp.S.One, sp.N(abs(a), DIGITS), sp.N(abs(b), DIGITS))
    return bool(error <= sp.Float(rel, DIGITS) * size)


# -- obligations --------------------------------------------------------------------------

@dataclass(frozen=True)
class Obligation:
    """One claim of a step, checked exactly and numerically."""

    claim: str
    lhs: sp.Expr
    rhs: sp.Expr = sp.S.Zero
    kind: str = "equal"  # equal | positive | limit | series
    var: sp.Symbol | None = None  # the variable of a limit or series
    at: sp.Expr | None = None     # limit point (+-oo) or series order n
    far: sp.Expr | None = None    # limit: where the numeric witness evaluates (|far| large)
    rel: float = 1e-30            # numeric witness: relative tolerance

    def exact(self) -> bool | None:
        """Whether SymPy proves the claim; None where it went over the bound of an
        enclosing ``bounded`` block."""
        return _exact_within(self, _BOUND[-1]) if _BOUND else _EXACT[self.kind](self)

    def numeric(self) -> bool:
        return _NUMERIC[self.kind](self)


def _free(*exprs) -> set:
    return set().union(*(sp.sympify(e).free_symbols for e in exprs))


def _exact_equal(o: Obligation) -> bool:
    return is_zero(o.lhs - o.rhs)


def _numeric_equal(o: Obligation) -> bool:
    pts = random_points(_free(o.lhs, o.rhs))
    return all(close(evaluate(o.lhs, p), evaluate(o.rhs, p), o.rel) for p in pts)


def _exact_positive(o: Obligation) -> bool:
    return is_positive(o.lhs)


def _numeric_positive(o: Obligation) -> bool:
    return all(evaluate(o.lhs, p) > 0 for p in random_points(_free(o.lhs)))


def _exact_limit(o: Obligation) -> bool:
    return is_zero(sp.limit(o.lhs, o.var, o.at) - o.rhs)


def _numeric_limit(o: Obligation) -> bool:
    sign = 1 if o.at == sp.oo else -1
    far = sign * (sp.Integer(10) ** 40 if o.far is None else o.far)
    pts = random_points(_free(o.lhs, o.rhs, far) - {o.var})
    return all(close(evaluate(o.lhs, {**p, o.var: far.subs(p)}), evaluate(o.rhs, p), o.rel)
               for p in pts)


def _exact_series(o: Obligation) -> bool:
    return is_zero(sp.series(o.lhs, o.var, 0, o.at).removeO() - o.rhs)


def _numeric_series(o: Obligation) -> bool:
    h = sp.Rational(1, 10**6)
    pts = random_points(_free(o.lhs, o.rhs) - {o.var})
    bound = float(h) ** (int(o.at) - 0.5)
    return all(abs(evaluate(o.lhs - o.rhs, {**p, o.var: h})) < bound for p in pts)


_EXACT = {"equal": _exact_equal, "positive": _exact_positive,
          "limit": _exact_limit, "series": _exact_series}
_NUMERIC = {"equal": _numeric_equal, "positive": _numeric_positive,
            "limit": _numeric_limit, "series": _numeric_series}


def equal(claim, lhs, rhs) -> Obligation:
    """lhs == rhs (scalars, or matrices entry by entry)."""
    return Obligation(claim, sp.sympify(lhs), sp.sympify(rhs))


def positive(claim, expr) -> Obligation:
    return Obligation(claim, sp.sympify(expr), kind="positive")


def limit(claim, expr, var, at, value, far=None, rel=1e-20) -> Obligation:
    """lim_{var -> at} expr == value; the numeric witness evaluates at +-far."""
    far = None if far is None else sp.sympify(far)
    return Obligation(claim, sp.sympify(expr), sp.sympify(value), "limit", var, at, far, rel)


def series(claim, expr, var, order, poly) -> Obligation:
    """expr == poly + O(var**order) at var = 0."""
    return Obligation(claim, sp.sympify(expr), sp.sympify(poly), "series", var, order)


# -- steps ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """The outcome of one obligation: both witnesses (exact None: not decided within the
    bound, the numeric witness alone)."""

    claim: str
    exact: bool | None
    numeric: bool

    @property
    def ok(self) -> bool:
        return self.exact is not False and self.numeric


@dataclass(frozen=True)
class Step:
    """One step of a derivation: what it produces, why, and what it claims."""

    name: str
    expr: sp.Basic
    reason: str
    obligations: tuple[Obligation, ...] = ()
    checks: tuple[Check, ...] = field(default=(), compare=False)


def check(step: Step) -> Step:
    """Run every obligation of ``step``; raise DerivationError naming the first failure."""
    results = []
    for o in step.obligations:
        c = Check(o.claim, o.exact(), o.numeric())
        if not c.ok:
            witness = "exact" if c.exact is False else "numeric"
            raise DerivationError(
                f"step {step.name!r}: obligation failed ({witness} witness): {o.claim}")
        if c.exact is None:
            _BOUND[-1].numeric_only.append(f"{step.name}: {o.claim}")
        results.append(c)
    return Step(step.name, step.expr, step.reason, step.obligations, tuple(results))
