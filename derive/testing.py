"""Property tests of anyone's layer against the formulas: ``assert_matches``.

    from derive.testing import assert_matches
    assert_matches(lambda x, weight, bias, alpha: weight * torch.tanh(alpha * x) + bias, "dyt")

An implementation ``fn(x, weight, bias, **scalars)`` of y = weight * f(x; scalars) + bias
over the last dimension is checked against a layer form of the catalog (by name, e.g.
"dyt") or a formula f of x (a SymPy expression, or text read by ``derive.formula``). The
input of f is one number, so first every finite bfloat16 and float16 value, and every
binade of float32 and float64, goes through fn at a few settings of the scalars (the
sweeps: ``sweep_values``, ``sweep_scalars``), against tables of f and its derivatives that
mpmath computes once and ``derive.cache`` keeps; then hypothesis draws shapes, inputs up to
each dtype's finite maximum, weights, biases and scalars, evaluated by mpmath element by
element (50 digits, more where the formula cancels). Outputs and derivatives up to
``order`` are compared at the inputs exactly as cast, under one of two standards
(``STANDARDS``: "ulp", the one tolerance table ``TOLERANCES``; "torch",
torch.testing.assert_close's defaults). A mismatch raises an AssertionError (``Mismatch``)
naming the standard, the worst element, its input, the exact value and the error in ulps.
Every seed is fixed: the same call gives the same verdict on every run and machine.

This is the one module of ``derive`` that imports torch (and hypothesis, of the ``test``
extra); ``import derive`` never loads it. The project's own property tests use it too.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import mpmath
import sympy as sp
from mpmath.libmp import fzero as _FZERO
from mpmath.libmp import round_nearest as _NEAREST
from mpmath.libmp import to_float as _to_float
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import cache as _cache
from . import shell as _shell
from . import forms, symbols
from .catalog import NAMES
from .formula import FormulaError, parse
from .symbols import x

#: Before any comparison: one single-threaded call of each of torch's CPU math functions, the
#: same warm-up numeric's code runs at import (derive/shell.py, WARM_UP): an implementation
#: under test whose first tanh splits across threads could otherwise get MKL's low-accuracy
#: kernel in one thread's chunk (pytorch/pytorch#188792) and fail for a fault not its own.
exec(_shell.WARM_UP, {"torch": torch})  # noqa: S102 - the project's own source, not user text

__all__ = ["assert_matches", "assert_close", "Mismatch", "Unchecked", "Tol", "TOLERANCES",
           "TORCH_TOLERANCES", "STANDARDS", "DTYPES", "evaluate", "spec", "sweep_values",
           "recording", "report",
           "exhaustive_reference"]

# -- the one table of tolerances, and the one comparison ------------------------------------

#: When set, every comparison appends its largest error/allowed ratio here (one JSON line),
#: so a run can report the largest error seen per dtype and device against its tolerance.
ERROR_LOG = os.environ.get("DYNORM_ERROR_LOG")


@dataclass(frozen=True)
class Tol:
    """An element passes when |got - ref| <= atol + rtol * |ref| + ctol * scale, where
    ``scale`` is the size of the terms added to make ``ref`` (|w f| + |b| for y = w f + b;
    the sum of |terms| for a reduced gradient): cancellation is judged by the precision the
    terms were computed in, the final rounding by the output's dtype."""

    rtol: float  # the output dtype's rounding, with a few units of slack
    ctol: float  # the compute dtype's precision, relative to the terms' size
    atol: float  # underflow: results this small may flush or round to 0
    why: str
    standard: str = "ulp"  # the name a caller chooses it by (``STANDARDS``)


TOLERANCES = {
    # float64 computes in float64: tanh, hypot, cosh are within a few ulp (2.2e-16).
    torch.float64: Tol(1e-13, 1e-13, 1e-300, "float64 math: a few ulp, 64x slack"),
    # float32 computes in float32: 1 ulp = 1.2e-7; tanh/cosh/hypot/rsqrt and the
    # products around them stack up to ~10 ulp; 1e-5 leaves headroom, still catches a
    # wrong formula (those are off by 1e-2 or more).
    torch.float32: Tol(1e-5, 1e-5, 1e-35, "float32 math: ~10 ulp of float32"),
    # bfloat16 output: 8 significand bits, half an ulp is 2^-9 = 2e-3; 8e-3 allows the
    # float32 result to round either way plus the input's own rounding of the parameters.
    torch.bfloat16: Tol(8e-3, 1e-5, 1e-35, "bfloat16 output rounding, 2 ulp"),
    # float16 output: 11 significand bits, half an ulp is 2^-12 = 2.4e-4; subnormals
    # below 6e-8 round to a multiple of 6e-8.
    torch.float16: Tol(1e-3, 1e-5, 6e-8, "float16 output rounding, 2 ulp"),
}

DTYPES = tuple(TOLERANCES)

#: The second standard: torch.testing.assert_close's default rtol and atol for the dtype,
#: against the exact value. Its rtol also applies to the size of the terms added to make the
#: value (|w f| + |b|, a reduced gradient's sum of |terms|), as the ulp standard's ctol does:
#: the exact y = w f + b near 0 is a difference of terms the inputs' dtype rounds, and
#: assert_close's own tests compare with a reference computed from the same rounded terms.
TORCH_TOLERANCES = {
    torch.float64: Tol(1e-7, 1e-7, 1e-7, "torch.testing's float64 default: rtol 1e-7, "
                       "atol 1e-7", "torch"),
    torch.float32: Tol(1.3e-6, 1.3e-6, 1e-5, "torch.testing's float32 default: rtol 1.3e-6, "
                       "atol 1e-5", "torch"),
    torch.bfloat16: Tol(1.6e-2, 1.6e-2, 1e-5, "torch.testing's bfloat16 default: rtol 1.6e-2, "
                        "atol 1e-5", "torch"),
    torch.float16: Tol(1e-3, 1e-3, 1e-5, "torch.testing's float16 default: rtol 1e-3, "
                       "atol 1e-5", "torch"),
}

#: A caller's choice: "ulp" (is it exact, within a few ulps?) or "torch" (is it as close as
#: torch's own tests demand?).
STANDARDS = {"ulp": TOLERANCES, "torch": TORCH_TOLERANCES}


def tol_for(dtype: torch.dtype, standard: str = "ulp") -> Tol:
    return STANDARDS[standard][dtype]


def ulps(err: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """err in units in the last place of ``dtype`` at ref (the spacing of dtype's values
    around ref; the smallest subnormal at 0 and below the normal range)."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(ref.abs().nan_to_num(0.0, posinf=fi.max).clamp(max=fi.max))
    spacing = torch.ldexp(torch.full_like(ref, fi.eps), e - 1).clamp(min=fi.smallest_normal
                                                                     * fi.eps)
    return err / spacing


def _log(got: torch.Tensor, dtype, what: str, ratio: torch.Tensor, err: torch.Tensor,
         passed: bool) -> None:
    finite = err.nan_to_num(0.0, posinf=0.0)
    line = {"dtype": str(dtype).replace("torch.", ""), "device": got.device.type, "what": what,
            "passed": passed,
            "max_err_over_allowed": float(ratio.max()) if ratio.numel() else 0.0,
            "max_abs_err": float(finite.max()) if finite.numel() else 0.0}
    with open(ERROR_LOG, "a") as f:
        f.write(json.dumps(line) + "\n")


class Mismatch(AssertionError):
    """A comparison failed; the message names the worst element, its input and reference."""


#: While ``recording()`` is active, each comparison's worst element (else None).
_RECORD: list | None = None


@contextmanager
def recording():
    """Within it every comparison (``assert_close``) appends its worst element, against
    the allowed error, to the list it yields: what was compared, the dtype, the error in
    ulps and as a fraction of the allowed, the input there (what ``report`` summarizes)."""
    global _RECORD
    saved, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = saved


def _record(what: str, dtype, got64, ref64, ratio, inputs, standard: str) -> None:
    i = int(ratio.flatten().argmax())
    g, r = got64.flatten()[i], ref64.flatten()[i]
    _RECORD.append({"what": what, "dtype": dtype, "standard": standard,
                    "over_allowed": float(ratio.flatten()[i]),
                    "ulps": float(ulps((g - r).abs(), r, dtype)), "got": g.item(),
                    "exact": r.item(),
                    "at": {k: _at(v, i, ref64.numel()) for k, v in (inputs or {}).items()}})


def _at(v, i: int, n: int):
    """An input at the worst element i of n: its own element, its one value, or all of it
    (the worst element of a reduced gradient is a sum over every input)."""
    if not isinstance(v, torch.Tensor):
        return v
    if v.numel() == n:
        return v.flatten()[i].item()
    if v.numel() == 1:
        return v.item()
    if v.numel() <= 16:
        return v.detach().flatten().tolist()
    f = v.detach().double().flatten()       # a sweep's thousands of values: their span
    return f"{v.numel()} values from {f.min().item()!r} to {f.max().item()!r}"


def assert_close(got: torch.Tensor, ref: torch.Tensor, *, scale=None, dtype=None,
                 inputs: dict | None = None, what: str = "output", standard: str = "ulp",
                 skip: torch.Tensor | None = None) -> None:
    """Compare got (any dtype) with a float64 reference under ``standard`` ("ulp" or
    "torch"); raise Mismatch with the worst element. Elements where ``skip`` is True are not
    compared (a derivative not defined there)."""
    dtype = dtype or got.dtype
    t = tol_for(dtype, standard)
    got64, ref64 = got.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    scale64 = ref64.abs() if scale is None else torch.as_tensor(scale, dtype=torch.float64).cpu()
    if got64.shape != ref64.shape:
        raise Mismatch(f"{what}: shape {tuple(got64.shape)} != reference {tuple(ref64.shape)}")
    if skip is not None:
        skip = torch.as_tensor(skip).cpu().expand_as(ref64)
        got64, ref64 = got64.masked_fill(skip, 0.0), ref64.masked_fill(skip, 0.0)
    both_nan = got64.isnan() & ref64.isnan()
    # +-inf is the dtype's rounding of a value beyond its finite range
    beyond = ref64.abs() > torch.finfo(dtype).max
    same_inf = got64.isinf() & ((got64 == ref64) | (beyond & (got64.sign() == ref64.sign())))
    err = (got64 - ref64).abs()
    allowed = t.atol + t.rtol * ref64.abs() + t.ctol * scale64.expand_as(ref64)
    ok = both_nan | same_inf | (err <= allowed)
    bad = ~ok
    # err / allowed of every element that is not a matching NaN or inf (a NaN against a
    # number counts as infinitely far): what the log records, passing or failing
    ratio = torch.where(both_nan | same_inf, torch.zeros_like(err),
                        (err / allowed).nan_to_num(float("inf")))
    if ERROR_LOG:
        _log(got, dtype, what, ratio, err, not bad.any())
    if _RECORD is not None and ratio.numel():
        _record(what, dtype, got64, ref64, ratio, inputs, t.standard)
    if bad.any():
        excess = torch.where(bad, ratio, torch.zeros_like(err))
        i = int(excess.flatten().argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), ref64.shape))
        at = {k: _at(v, i, ref64.numel()) for k, v in (inputs or {}).items()}
        g, r = got64.flatten()[i], ref64.flatten()[i]
        u = ulps((g - r).abs(), r, dtype).item()
        raise Mismatch(f"{what}: {int(bad.sum())} of {bad.numel()} elements off the "
                       f"{t.standard!r} standard; worst at {idx}: got {g.item()!r} against "
                       f"the exact reference {r.item()!r}, error {u:.3g} ulps of "
                       f"{str(dtype).replace('torch.', '')} (allowed "
                       f"{allowed.flatten()[i].item():.3g}); inputs {at} ({t.why})")


# -- what is tested: a layer y = weight * f + bias -------------------------------------------

def _formula_form(name: str, f: sp.Expr) -> forms.Form:
    f = f.subs({s: x for s in f.free_symbols if s.name == x.name and s != x})
    if x not in f.free_symbols:
        raise FormulaError(f"form {name!r} is neither a layer form of the catalog "
                           f"({', '.join(forms.FORMS)}) nor a formula of x")
    taken = {s.name for s in f.free_symbols} & {symbols.weight.name, symbols.bias.name}
    if taken:
        raise FormulaError(f"the formula may not use {sorted(taken)}: y = weight * f + bias")
    return forms.Form.of(name, f)


def spec(form) -> forms.Form:
    """What is tested against, as the generated code is made from it (``forms.Form``: the
    layer weight * f + bias and its scalars): a layer form's name ("dyt"), a formula of x
    (text or SymPy), or a Form."""
    if isinstance(form, forms.Form):
        return form
    if isinstance(form, str):
        if form in forms.FORMS:
            return forms.FORMS[form]
        if form in NAMES:
            raise ValueError(f"form {form!r} is a result of the catalog but not an element-wise "
                             f"layer form ({', '.join(forms.FORMS)})")
        return _formula_form(form, parse(form))
    if isinstance(form, sp.Expr):
        return _formula_form(sp.sstr(form), form)
    raise TypeError(f"form must be a layer form's name, a formula of x (str or SymPy) or a "
                    f"forms.Form, got {type(form).__name__}")


def layer_expr(form) -> sp.Expr:
    """weight * f + bias (for a catalog form, the checked step of the derivation)."""
    return spec(form).layer


def params(form) -> tuple[sp.Symbol, ...]:
    """The form's scalar parameters, as symbols, in the order of the functional signature."""
    return spec(form).params


def wrt(form) -> tuple[sp.Symbol, ...]:
    """What the derivatives are taken in: x, the scalars, weight."""
    return (x, *params(form), symbols.weight)


# -- references: the formulas in mpmath ------------------------------------------------------

DIGITS = 50
#: Working precisions tried in turn: 50 digits, then more where the formula cancels
#: (1 - tanh(u)^2 loses about 0.87 |u| digits; at 450 digits every value still
#: representable in float64 survives).
PRECISIONS = (DIGITS, 120, 450)


def _symbols(s: forms.Form, what: str) -> tuple[sp.Symbol, ...]:
    """The symbols of "d_a" or "d2_a_b" (a, b among x, the scalars, weight)."""
    names = {v.name: v for v in wrt(s)}
    if what.startswith("d2_"):
        rest = what[3:]
        for a in names:
            if rest.startswith(a + "_") and rest[len(a) + 1:] in names:
                return names[a], names[rest[len(a) + 1:]]
    elif what.startswith("d_") and what[2:] in names:
        return (names[what[2:]],)
    raise ValueError(f"unknown reference {what!r} for {s.name} (y, f, d_a, d2_a_b with a, b "
                     f"in {', '.join(names)})")


@cache
def _derivative(e: sp.Expr, syms: tuple[sp.Symbol, ...]) -> sp.Expr:
    """e differentiated in ``syms``, written so that mpmath need not cancel: a first
    derivative simplified (beta/(beta + x^2)^(3/2), not the difference of two nearly equal
    terms); a second one the derivative of that, over one denominator (1 - x^2/(beta + x^2)
    would cancel at every precision below; the raw second derivative of tanh is
    (tanh - 1)(tanh + 1) tanh, 0 at 120 digits where it is 1e-238)."""
    if not syms:
        return e
    if len(syms) == 2:
        d = sp.diff(_derivative(e, syms[:1]), syms[1])
        nice = sp.factor(sp.together(d))
        # a simplified first derivative with abs in it is a Piecewise: simplify that
        return sp.simplify(d) if nice.has(sp.Piecewise) else nice
    return sp.simplify(sp.diff(e, *syms))


@cache
def _expr(s: forms.Form, what: str) -> sp.Expr:
    """The layer's "y", "f", first derivative "d_a" or second derivative "d2_a_b"."""
    if what == "f":
        return (s.layer - symbols.bias) / symbols.weight
    return _derivative(s.layer, () if what == "y" else _symbols(s, what))


@cache
def _f_expr(s: forms.Form, what: str) -> sp.Expr:
    """f's "f", "d_a" or "d2_a_b" (a, b among x and the scalars): what the tables hold."""
    f = (s.layer - symbols.bias) / symbols.weight
    return _derivative(f, () if what == "f" else _symbols(s, what))


@cache
def _where_undefined(s: forms.Form, what: str, layer: bool = True):
    """(u, why) for each term that leaves ``what`` (the layer's, or f's) undefined where
    u = 0: a DiracDelta of SymPy's plain derivative (the form compared may have cancelled
    it: x DiracDelta(x) is 0, but the derivative before it jumps at 0), a sign or Heaviside
    of the form compared (it jumps there)."""
    if what in ("y", "f"):
        return ()
    e = s.layer if layer else (s.layer - symbols.bias) / symbols.weight
    raw = sp.diff(e, *_symbols(s, what))
    found = {(a.args[0], f"DiracDelta({sp.sstr(a.args[0])}): a point mass there")
             for a in raw.atoms(sp.DiracDelta)}
    done = _expr(s, what) if layer else _f_expr(s, what)
    found |= {(a.args[0], f"{a.func.__name__}({sp.sstr(a.args[0])}): it jumps there")
              for a in done.atoms(sp.sign, sp.Heaviside)}
    return tuple(sorted(found, key=lambda p: (sp.default_sort_key(p[0]), p[1])))


def _regular_part(*args):
    """DiracDelta(u) (or a derivative of it) away from u = 0: 0. Where u = 0 the
    derivative is a distribution; ``singular`` marks those elements."""
    return 0


def _heaviside(u, h0=0.5):
    """SymPy's Heaviside (the derivative of Max and Min): 1/2 at 0, as torch's maximum
    splits a tie's gradient."""
    return 1 if u > 0 else 0 if u < 0 else h0


#: What mpmath cannot evaluate and the references take in its place.
_MODULES = [{"DiracDelta": _regular_part, "Heaviside": _heaviside}, "mpmath"]


@cache
def _lambda(s: forms.Form, what: str):
    """The mpmath callable of (x, scalars..., weight, bias) for ``what``: "y", "f", a first
    derivative "d_a" or a second derivative "d2_a_b"."""
    return sp.lambdify((x, *s.params, symbols.weight, symbols.bias), _expr(s, what), _MODULES)


@cache
def _singular_lambda(us: tuple[sp.Expr, ...], args: tuple[sp.Symbol, ...]):
    return sp.lambdify(args, list(us), "mpmath")


def _is_singular(fn, v: float, ss) -> bool:
    with mpmath.workdps(DIGITS):
        return any(u == 0 for u in fn(mpmath.mpf(v), *(mpmath.mpf(t) for t in ss)))


def evaluate(form, what: str, x_t, scalars, w_t, b_t) -> torch.Tensor:
    """float64 tensor of ``what`` ('y', 'f', 'd_x', 'd_alpha', 'd2_x_alpha', ...) at every
    element. x_t (..., C), scalars 0-dim, w_t and b_t (C,): all exactly as cast to the
    tested dtype. Where ``what`` has a DiracDelta term, its regular part (``singular`` says
    where the rest lives)."""
    fn = _lambda(spec(form), what)
    xs = x_t.detach().to(torch.float64).cpu()
    C = xs.shape[-1]
    ws = w_t.detach().to(torch.float64).cpu().tolist()
    bs = b_t.detach().to(torch.float64).cpu().tolist() if b_t is not None else [0.0] * C
    ss = [float(s) for s in scalars]
    flat = xs.reshape(-1, C).tolist()
    out = [[_stable(fn, v, ss, ws[c], bs[c]) for c, v in enumerate(row)] for row in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(xs.shape)


def singular(form, what: str, x_t, scalars) -> torch.Tensor | None:
    """Where ``what`` is not defined (``_where_undefined``): a bool tensor of x's shape, or
    None where it is defined everywhere."""
    s = spec(form)
    us = tuple(dict.fromkeys(u for u, _ in _where_undefined(s, what)))
    if not us:
        return None
    fn = _singular_lambda(us, (x, *s.params, symbols.weight, symbols.bias))
    ss = [float(t) for t in scalars] + [1.0, 0.0]
    xs = x_t.detach().to(torch.float64).cpu()
    return torch.tensor([_is_singular(fn, v, ss) for v in xs.flatten().tolist()],
                        dtype=torch.bool).reshape(xs.shape)


def _stable(fn, v, ss, w, b) -> float:
    """fn at x = v, raising the precision until two precisions agree to 25 digits or round
    to the same float64 (exp(-u^2) at u = 1e300 never agrees to 25 digits: u^2 carries an
    absolute error of 1e550 at 50 digits; both are 0.0 in float64)."""
    return _stable_at(fn, v, [*ss, w, b])


def _stable_at(fn, v, rest, precisions=PRECISIONS) -> float:
    prev = None
    for dps in precisions:
        with mpmath.workdps(dps):
            xv = mpmath.mpf(v)
            if mpmath.isinf(xv):  # the limit, from a huge finite x of the same sign
                xv = mpmath.mpf(10) ** 400 * (1 if xv > 0 else -1)
            try:
                val = fn(xv, *(mpmath.mpf(t) for t in rest))
            except (ZeroDivisionError, ValueError):  # a pole or outside the domain
                return math.nan
            if isinstance(val, mpmath.mpc):  # e.g. sqrt of a negative: no real value
                return math.nan
            val = mpmath.mpf(val)
            # two exact zeros are not agreement: cancellation loses everything alike
            if prev is not None and (mpmath.isnan(val) or abs(val - prev) <= abs(val) * 1e-25
                                     or float(val) == float(prev)) and (val or prev):
                return float(val)
            prev = val
    return float(prev)


# -- every value: the sweeps and their cached references -----------------------------------

#: Significands visited in every binade of float32 and float64, with the binade's largest.
SIGNIFICANDS = (1.0, 1.2345678901234567, 1.6180339887498949)
#: The two cheap precisions a table is evaluated in; where they differ by more than 1e-17
#: (cancellation), or both are exactly 0, the value is evaluated again in PRECISIONS.
TABLE_DIGITS = (20, 26)
#: What the stored references depend on besides their key: bump it when the evaluation does.
TABLE_VERSION = 1


@cache
def every_value(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of a 16-bit dtype (bfloat16: 65,280; float16: 63,488), by bits."""
    bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    v = bits.view(dtype)
    return v[torch.isfinite(v)]


@cache
def binade_sweep(dtype: torch.dtype) -> torch.Tensor:
    """Both signs of SIGNIFICANDS times every power of two of ``dtype`` and each binade's
    largest value, from the subnormals to the largest finite value, and +-0."""
    fi = torch.finfo(dtype)
    digits = round(1 - math.log2(fi.eps))                 # significand bits, the leading one's too
    low = round(math.log2(fi.smallest_normal)) - digits + 1   # the smallest subnormal's exponent
    top = math.frexp(fi.max)[1] - 1                     # the largest binade's exponent
    vals = [0.0, fi.max]
    for e in range(low, top + 1):
        vals += [math.ldexp(m, e) for m in SIGNIFICANDS]
        unit = max(math.ldexp(1.0, e - digits + 1), math.ldexp(1.0, low))   # the binade's ulp
        vals.append(math.ldexp(2.0, e) - unit if e < top else fi.max)
    t = torch.tensor(vals, dtype=torch.float64).to(dtype)
    t = torch.unique(t[torch.isfinite(t)])
    return torch.cat([-t.flip(0), t])


def sweep_values(dtype: torch.dtype) -> torch.Tensor:
    """The inputs every sweep of ``dtype`` visits: each value of a 16-bit dtype, each binade
    of float32 and float64."""
    return every_value(dtype) if dtype.itemsize == 2 else binade_sweep(dtype)


def _table_key(s: forms.Form, what: str, scalars, dtype) -> str:
    f = (s.layer - symbols.bias) / symbols.weight
    text = repr((TABLE_VERSION, mpmath.__version__, sp.__version__, sp.srepr(f),
                 [p.name for p in s.params], [float(t).hex() for t in scalars], what,
                 str(dtype), len(sweep_values(dtype))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


#: This process's tables (the disk cache holds them across processes and runs).
_TABLES: dict = {}


def exhaustive_reference(form, what: str, scalars, dtype: torch.dtype) -> torch.Tensor:
    """f's ``what`` ("f", "d_x", "d_alpha", "d2_x_alpha", ...) by mpmath at every input of
    ``sweep_values(dtype)`` with the scalars' values ``scalars``: a float64 tensor, computed
    once and cached (``derive.cache.references()``)."""
    return _tables(spec(form), (what,), tuple(float(t) for t in scalars), dtype)[what][0]


def _tables(s: forms.Form, whats, scalars, dtype) -> dict:
    """what -> (values, indices where it is not defined) over sweep_values(dtype): from this
    process, the disk cache, or mpmath (every missing one in one pass)."""
    out, missing = {}, []
    for what in whats:
        key = _table_key(s, what, scalars, dtype)
        if key not in _TABLES:
            stored = _cache.load_reference(key)
            if stored is not None:
                vals, sing = stored
                _TABLES[key] = (torch.frombuffer(bytearray(vals), dtype=torch.float64), sing)
        if key in _TABLES:
            out[what] = _TABLES[key]
        else:
            missing.append((what, key))
    if missing:
        xs = sweep_values(dtype).to(torch.float64).tolist()
        computed = _evaluate_table(s, tuple(w for w, _ in missing), scalars, xs)
        for (what, key), (vals, sing) in zip(missing, computed):
            arr = array("d", vals)
            _cache.store_reference(key, (arr.tobytes(), sing))
            _TABLES[key] = out[what] = (torch.tensor(arr, dtype=torch.float64), sing)
    return out


@cache
def _f_lambdas(s: forms.Form, whats: tuple[str, ...]):
    """One mpmath callable of (x, scalars...) for all of ``whats`` (common terms once), and
    one for each."""
    args, exprs = (x, *s.params), [_f_expr(s, w) for w in whats]
    return (sp.lambdify(args, exprs, _MODULES, cse=True),
            [sp.lambdify(args, e, _MODULES) for e in exprs])


def _floats(fn, v, ss) -> list | None:
    """fn's values at x = v as floats (correctly rounded), None for one that is exactly 0
    (exact, or all lost to cancellation: more digits tell) or not real; None for all where
    fn raises (a pole, outside the domain)."""
    try:
        vals = fn(mpmath.mpf(v), *ss)
    except (ZeroDivisionError, ValueError):
        return None
    out = []
    for q in vals:
        m = getattr(q, "_mpf_", None)
        if m is None:
            out.append(float(q) if isinstance(q, (int, float)) and q != 0 else None)
        else:
            out.append(None if m == _FZERO else _to_float(m, rnd=_NEAREST))
    return out


def _evaluate_table(s: forms.Form, whats, scalars, xs: list[float]):
    """[(values, singular indices)] of each of ``whats`` at each x of xs: two cheap
    precisions for all (TABLE_DIGITS); where they do not round to the same float64, or a
    value is exactly 0, PRECISIONS for that value."""
    together, each = _f_lambdas(s, tuple(whats))
    zero = [_f_expr(s, w) == 0 for w in whats]
    passes = []
    for dps in TABLE_DIGITS:
        with mpmath.workdps(dps):
            ss = [mpmath.mpf(t) for t in scalars]
            passes.append([_floats(together, v, ss) for v in xs])
    cols = [[0.0] * len(xs) for _ in whats]
    for i, (v, lo, hi) in enumerate(zip(xs, *passes)):
        for q, col in enumerate(cols):
            if zero[q]:
                continue
            a = b = None
            if lo is not None and hi is not None:
                a, b = lo[q], hi[q]
            if a is not None and (a == b or (a != a and b != b)):
                col[i] = b
            else:
                col[i] = _stable_at(each[q], v, scalars)
    sings = []
    for w in whats:
        us = tuple(dict.fromkeys(u for u, _ in _where_undefined(s, w, layer=False)))
        if not us:
            sings.append([])
            continue
        fn = _singular_lambda(us, (x, *s.params))
        sings.append([i for i, v in enumerate(xs) if _is_singular(fn, v, scalars)])
    return list(zip(cols, sings))


# -- hypothesis strategies -------------------------------------------------------------------

#: (input dtype, parameter dtype): same dtype, and float32 parameters under mixed precision.
DTYPE_PAIRS = [(torch.float64, torch.float64), (torch.float32, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
               (torch.float16, torch.float16), (torch.float16, torch.float32)]
#: Where each scalar of the catalog's forms is drawn; any other scalar from DEFAULT_RANGE.
SCALAR_RANGES = {"alpha": (1e-3, 10.0), "beta": (1e-3, 1e4), "shift": (-10.0, 10.0)}
DEFAULT_RANGE = (0.01, 10.0)


def values(dtype, bend: float = 8.0):
    """Inputs: where the S-curve bends, anywhere in the finite range, and the ends."""
    big = torch.finfo(dtype).max
    return st.one_of(st.floats(-bend, bend), st.floats(-big, big),
                     st.sampled_from([0.0, big, -big, 1e4, -1e4]))


def _tensor(draw, elements, shape, dtype, device):
    n = math.prod(shape)
    data = draw(st.lists(elements, min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float64).reshape(shape).to(dtype).to(device)


@st.composite
def cases(draw, form, dtype, pdtype, device="cpu", shape=None, elements=None, ranges=None,
          bias_none=True):
    """(x, scalars, weight, bias, upstream gradient); a random small shape unless ``shape``
    is given; each scalar from ``ranges`` (name -> (low, high)), SCALAR_RANGES or
    DEFAULT_RANGE; bias None in about half the cases if ``bias_none``."""
    if shape is None:
        shape = (*draw(st.lists(st.integers(1, 3), max_size=2)), draw(st.integers(1, 6)))
    C = shape[-1]
    x_t = _tensor(draw, elements or values(dtype), shape, dtype, device)
    ranges = {**SCALAR_RANGES, **(ranges or {})}
    scalars = [torch.tensor(draw(st.floats(*ranges.get(p.name, DEFAULT_RANGE))), dtype=pdtype,
                            device=device) for p in params(form)]
    w = _tensor(draw, st.floats(-3, 3), (C,), pdtype, device)
    has_bias = draw(st.booleans()) if bias_none else True
    b = _tensor(draw, st.floats(-3, 3), (C,), pdtype, device) if has_bias else None
    g = _tensor(draw, st.floats(-2, 2), shape, dtype, device)
    return x_t, scalars, w, b, g


@st.composite
def directions(draw, case):
    """A direction v (x's shape and dtype, each scalar's, weight's) for the double backward."""
    x_t, scalars, w, _, _ = case
    return [_tensor(draw, st.floats(-2, 2), tuple(t.shape), t.dtype, t.device)
            for t in (x_t, *scalars, w)]


# -- the checks ------------------------------------------------------------------------------

def _leaves(x_t, scalars, w, b):
    return ([t.clone().requires_grad_(True) for t in (x_t, *scalars, w)]
            + [None if b is None else b.clone().requires_grad_(True)])


def _call(fn, s: forms.Form, x_t, scalars, w, b):
    return fn(x_t, w, b, **{p.name: v for p, v in zip(s.params, scalars)})


def first_order(fn, form, x_t, scalars, w, b, g):
    """y and the gradients (x, [scalars], weight, bias or None) of fn(x, weight, bias,
    **scalars) for the upstream gradient g."""
    s = spec(form)
    xl, *sl, wl, bl = _leaves(x_t, scalars, w, b)
    y = _call(fn, s, xl, sl, wl, bl)
    if not isinstance(y, torch.Tensor) or y.shape != x_t.shape or y.dtype != x_t.dtype:
        got = (f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor)
               else type(y).__name__)
        raise Mismatch(f"{s.name}: the output must have x's shape and dtype "
                       f"{tuple(x_t.shape)} {x_t.dtype}, got {got}")
    ins = [t for t in (xl, *sl, wl, bl) if t is not None]
    grads = torch.autograd.grad(y, ins, g, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, ins)]
    gx, *gs = grads[:1 + len(sl)]
    gw, *gb = grads[1 + len(sl):]
    return y, gx, gs, gw, (gb[0] if gb else None)


def _inputs(s: forms.Form, x_t, scalars):
    return {"x": x_t, **{p.name: v for p, v in zip(s.params, scalars)}}


def _label(s: forms.Form, x_t, w) -> str:
    dt = lambda d: str(d).replace("torch.", "")  # noqa: E731
    pd = "" if w.dtype == x_t.dtype else f", parameters {dt(w.dtype)}"
    return f"{s.name} ({dt(x_t.dtype)}{pd}, {x_t.device.type})"


class Pointwise:
    """The references of one case, by mpmath at each element (hypothesis's draws):
    ``ref(what)`` a float64 tensor on x's device, ``ref.skip(what)`` where it is not
    defined (None: everywhere defined)."""

    def __init__(self, s: forms.Form, x_t, scalars, w, b):
        self.s, self.x, self.scalars, self.w, self.b = s, x_t, scalars, w, b
        self._memo: dict = {}

    def __call__(self, what: str) -> torch.Tensor:
        if what not in self._memo:
            self._memo[what] = evaluate(self.s, what, self.x, self.scalars, self.w,
                                        self.b).to(self.x.device)
        return self._memo[what]

    def skip(self, what: str) -> torch.Tensor | None:
        m = singular(self.s, what, self.x, self.scalars)
        return None if m is None else m.to(self.x.device)


class Tabled:
    """The references of a sweep: f's tables (``_tables``, over x's rows) made the layer's,
    y = w f + b and its derivatives, which are linear in w."""

    def __init__(self, s: forms.Form, tables: dict, singular_at: dict, x_t, w, b):
        self.s, self.t, self.sing, self.x = s, tables, singular_at, x_t
        self.w = w.double().to(x_t.device)
        self.b = None if b is None else b.double().to(x_t.device)

    def __call__(self, what: str) -> torch.Tensor:
        if what == "y":
            out = self.w * self.t["f"]
            return out if self.b is None else out + self.b
        if what == "f":
            return self.t["f"]
        names = [v.name for v in _symbols(self.s, what)]
        rest = [n for n in names if n != symbols.weight.name]
        if not rest:
            return torch.zeros_like(self.t["f"]) if len(names) == 2 else self.t["f"]
        fw = ("d_" if len(rest) == 1 else "d2_") + "_".join(rest)
        return self.t[fw] if len(rest) < len(names) else self.w * self.t[fw]

    def skip(self, what: str) -> torch.Tensor | None:
        if what in ("y", "f"):
            return None
        rest = [v.name for v in _symbols(self.s, what) if v != symbols.weight]
        fw = ("d_" if len(rest) == 1 else "d2_") + "_".join(rest) if rest else "f"
        return self.sing.get(fw)


def _skips(ref, whats) -> torch.Tensor | None:
    """Where any of ``whats`` is not defined (None: nowhere)."""
    masks = [m for m in (ref.skip(w) for w in whats) if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out | m
    return out


def _reduced(mask, C: int | None = None):
    """Where a gradient summed over the elements (over the rows if C) is not defined."""
    if mask is None:
        return None
    return mask.reshape(-1, C).any(0) if C else mask.any()


def _value_scale(s, ev, x_t, scalars, w, b, f):
    """What a correct float computation of y can be off by, in units of its precision: the
    terms added to make y (|w f| + |b|) and the inputs' own rounding carried through, the
    condition terms |a dy/da| for a in x and the scalars (alpha x + shift cancels where Derf
    crosses 0: u = 9.986 - 10 in float32 is 3.5e-5 relative off before erf is taken)."""
    b64 = b.double() if b is not None else torch.zeros_like(w.double())
    scale = (w.double() * f).abs() + b64.abs()
    scale = scale + (x_t.double() * ev("d_x")).abs().nan_to_num(0.0, posinf=0.0)
    for p, v in zip(s.params, scalars):
        scale = scale + (float(v) * ev(f"d_{p.name}")).abs().nan_to_num(0.0, posinf=0.0)
    return scale


def check_first(fn, form, x_t, scalars, w, b, g, *, standard: str = "ulp", ref=None):
    """The output and every gradient of fn against the formula (``ref``: the references,
    ``Pointwise`` by default), under ``standard``."""
    s = spec(form)
    y, gx, gs, gw, gb = first_order(fn, s, x_t, scalars, w, b, g)
    ev = ref or Pointwise(s, x_t, scalars, w, b)
    label, inputs = _label(s, x_t, w), _inputs(s, x_t, scalars)
    close = lambda *a, **k: assert_close(*a, standard=standard, **k)  # noqa: E731
    f = ev("f")
    close(y, ev("y"), scale=_value_scale(s, ev, x_t, scalars, w, b, f), dtype=x_t.dtype,
          inputs=inputs, what=f"{label} y")
    g64 = g.double()
    dx = g64 * ev("d_x")
    close(gx, dx, scale=dx.abs(), dtype=x_t.dtype, inputs=inputs, what=f"{label} grad x",
          skip=ev.skip("d_x"))
    for p, v, got in zip(s.params, scalars, gs):
        terms = g64 * ev(f"d_{p.name}")
        close(got, terms.sum(), scale=terms.abs().sum(), dtype=v.dtype, inputs=inputs,
              what=f"{label} grad {p.name}", skip=_reduced(ev.skip(f"d_{p.name}")))
    C = x_t.shape[-1]
    terms = (g64 * f).reshape(-1, C)
    close(gw, terms.sum(0), scale=terms.abs().sum(0), dtype=w.dtype, inputs=inputs,
          what=f"{label} grad weight")
    if b is not None:
        gg = g64.reshape(-1, C)
        close(gb, gg.sum(0), scale=gg.abs().sum(0), dtype=b.dtype, what=f"{label} grad bias")


def check_values(fn, form, x_t, scalars, w, b, g=None, *, standard: str = "ulp", ref=None):
    """The output of fn against the formula (no derivatives)."""
    s = spec(form)
    with torch.no_grad():
        y = _call(fn, s, x_t, scalars, w, b)
    ev = ref or Pointwise(s, x_t, scalars, w, b)
    if not isinstance(y, torch.Tensor) or y.shape != x_t.shape or y.dtype != x_t.dtype:
        raise Mismatch(f"{s.name}: the output must have x's shape and dtype "
                       f"{tuple(x_t.shape)} {x_t.dtype}")
    assert_close(y, ev("y"), scale=_value_scale(s, ev, x_t, scalars, w, b, ev("f")),
                 dtype=x_t.dtype, inputs=_inputs(s, x_t, scalars),
                 what=f"{_label(s, x_t, w)} y", standard=standard)


def second_order(fn, form, x_t, scalars, w, b, g, v):
    """The double backward along v = (v_x, [v_scalars], v_weight): the gradient of
    <first-order gradients, v> in x, each scalar, weight and the upstream gradient g (a
    Hessian-vector product, and the forward-mode product in g)."""
    s = spec(form)
    xl, *sl, wl, bl = _leaves(x_t, scalars, w, b)
    gl = g.clone().requires_grad_(True)
    y = _call(fn, s, xl, sl, wl, bl)
    ins = [xl, *sl, wl]
    grads = torch.autograd.grad(y, ins, gl, create_graph=True)
    dot = sum((gr.double() * vv.double()).sum() for gr, vv in zip(grads, v))
    if not dot.requires_grad:  # first derivatives without a graph: every second one is 0
        return [torch.zeros_like(t) for t in (*ins, gl)]
    out = torch.autograd.grad(dot, [*ins, gl], allow_unused=True)
    return [torch.zeros_like(t) if o is None else o for o, t in zip(out, [*ins, gl])]


def check_second(fn, form, x_t, scalars, w, b, g, v, *, standard: str = "ulp", ref=None):
    """Every second derivative along v against the formula's, summed as autograd sums them:
    h_a = sum over elements of g * sum_b v_b d2y/(da db); and in g, sum_b v_b dy/db."""
    s = spec(form)
    *got, got_g = second_order(fn, s, x_t, scalars, w, b, g, v)
    names = [a.name for a in wrt(s)]
    ev = ref or Pointwise(s, x_t, scalars, w, b)
    g64, C = g.double(), x_t.shape[-1]
    v64 = [t.double() for t in v]
    label, inputs = _label(s, x_t, w), _inputs(s, x_t, scalars)
    close = lambda *a, **k: assert_close(*a, standard=standard, **k)  # noqa: E731
    # d2y/(da db) = d2y/(db da): each pair evaluated once; d2y/dweight^2 = 0
    key = {(a, bn): (a, bn) for i, a in enumerate(names) for bn in names[i:]}
    key.update({(bn, a): k for (a, bn), k in list(key.items())})
    d2 = {k: ev(f"d2_{k[0]}_{k[1]}") for k in set(key.values()) if k != ("weight", "weight")}
    pair = lambda a, bn: d2.get(key[(a, bn)], 0.0)  # noqa: E731
    for a, out, like in zip(names, got, (x_t, *scalars, w)):
        parts = [g64 * pair(a, bn) * v64[j] for j, bn in enumerate(names)]
        terms, size = sum(parts), sum(p.abs() for p in parts)
        mask = _skips(ev, [f"d2_{key[(a, bn)][0]}_{key[(a, bn)][1]}" for bn in names
                           if key[(a, bn)] != ("weight", "weight")])
        if a == "x":
            ref_a, scale = terms, size
        elif a == "weight":
            ref_a, scale = terms.reshape(-1, C).sum(0), size.reshape(-1, C).sum(0)
            mask = _reduced(mask, C)
        else:
            ref_a, scale = terms.sum(), size.sum()
            mask = _reduced(mask)
        if out.dtype != like.dtype:
            raise Mismatch(f"{label} second derivative in {a}: dtype {out.dtype}, want "
                           f"{like.dtype}")
        close(out, ref_a, scale=scale, dtype=like.dtype, inputs=inputs,
              what=f"{label} second derivative in {a}", skip=mask)
    parts = [ev(f"d_{bn}") * v64[j] for j, bn in enumerate(names)]
    close(got_g, sum(parts), scale=sum(p.abs() for p in parts), dtype=g.dtype, inputs=inputs,
          what=f"{label} forward-mode product (the gradient in grad)",
          skip=_skips(ev, [f"d_{bn}" for bn in names]))


# -- assert_matches --------------------------------------------------------------------------

def _pairs(dtypes) -> list[tuple[torch.dtype, torch.dtype]]:
    if isinstance(dtypes, torch.dtype):
        dtypes = [dtypes]
    out = []
    for d in dtypes:
        pair = tuple(d) if isinstance(d, (tuple, list)) else (d, d)
        if len(pair) != 2 or any(p not in TOLERANCES for p in pair):
            raise ValueError(f"dtypes: each must be one of {', '.join(map(str, DTYPES))} or an "
                             f"(input dtype, parameter dtype) pair of them, got {d!r}")
        out.append(pair)
    if not out:
        raise ValueError("dtypes must name at least one dtype")
    return out


#: Hypothesis reports the first failing example as found, without shrinking it: every example
#: costs mpmath evaluations, and shrinking one takes hundreds (a minute) for an input that
#: the message names anyway (the worst element, its x and scalars).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)

#: A sweep's input: rows of SWEEP_C channels, SWEEP_ROWS rows per call of fn (the parameter
#: gradients are sums over one call's elements: a few thousand, as in a layer's use).
SWEEP_C, SWEEP_ROWS = 8, 512
#: Parameter settings per dtype at which every value (every binade) is checked by default.
SWEEPS = 3


class Unchecked(UserWarning):
    """A derivative that is not a function everywhere (a DiracDelta term): where it is not
    defined it is not compared; everywhere else it is."""


def sweep_scalars(form, k: int = SWEEPS, ranges: dict | None = None) -> list[tuple]:
    """k settings of the scalars, each drawn from its range (log-uniform where the range is
    positive and spans two decades or more, uniform otherwise) by a generator seeded with the
    form's name, the same on every run and machine; each rounded to a bfloat16 value, which
    every dtype holds, so that every (input, parameter) dtype pair shares the references."""
    s = spec(form)
    rng = random.Random(f"dynorm sweep {s.name}")   # a str seed is hashed (sha512): portable
    bounds = {**SCALAR_RANGES, **(ranges or {})}
    out = []
    for _ in range(k):
        vals = []
        for p in s.params:
            lo, hi = bounds.get(p.name, DEFAULT_RANGE)
            v = (math.exp(rng.uniform(math.log(lo), math.log(hi))) if 0 < 100 * lo <= hi
                 else rng.uniform(lo, hi))
            vals.append(float(torch.tensor(v).to(torch.bfloat16)))
        out.append(tuple(vals))
    return list(dict.fromkeys(out))     # a form without scalars has one setting


def _table_whats(s: forms.Form, order: int) -> tuple[str, ...]:
    """f's quantities a sweep of ``order`` compares with: f and its first derivatives (the
    gradients, and the value's condition terms), its second derivatives at order 2."""
    names = [v.name for v in (x, *s.params)]
    first = ("f", *(f"d_{n}" for n in names))
    if order < 2:
        return first
    return first + tuple(f"d2_{a}_{b}" for i, a in enumerate(names) for b in names[i:])


def _unchecked(s: forms.Form, order: int) -> list[str]:
    """What cannot be compared everywhere at ``order``: one line per derivative that is not
    a function somewhere (a DiracDelta term; sign or Heaviside, which jump)."""
    out = []
    for what in _table_whats(s, order)[1:] if order else ():
        found = _where_undefined(s, what, layer=False)
        if found:
            names = [v.name for v in _symbols(s, what)]
            of = f"{names[0]} twice" if len(set(names)) < len(names) else " and ".join(names)
            where = " or ".join(f"{sp.sstr(u)} = 0" for u in dict.fromkeys(u for u, _ in found))
            kind = "second derivative" if what.startswith("d2_") else "derivative"
            why = "; ".join(w for _, w in found)
            out.append(f"{s.name}: the {kind} in {of} is not defined where {where} ({why}): "
                       f"those elements, and the sums over them, are not compared; everywhere "
                       f"else they are")
    return out


def _sweep(fn, s: forms.Form, dtype, pdtype, device, order: int, standard: str,
           settings: list[tuple]) -> None:
    """Every value of ``sweep_values(dtype)`` through fn at each setting of the scalars:
    outputs and derivatives up to ``order`` against the cached mpmath tables. Weight, bias,
    the upstream gradient and the direction of the double backward come from a fixed seed."""
    xs = sweep_values(dtype)
    n, C = len(xs), SWEEP_C
    R = -(-n // C)
    idx = torch.cat([torch.arange(n), torch.arange(R * C - n)]).reshape(R, C)
    x_all = xs[idx]                    # padded with the first values again
    gen = torch.Generator().manual_seed(0)

    def draw(shape, half, d):
        return ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * half).to(d)
    w, b, g = draw((C,), 3, pdtype), draw((C,), 3, pdtype), draw((R, C), 2, dtype)
    v = [draw((R, C), 2, dtype), *(draw((), 2, pdtype) for _ in s.params), draw((C,), 2, pdtype)]
    whats = _table_whats(s, order)
    on = lambda t: t.to(device)  # noqa: E731
    for setting in settings:
        scalars = [torch.tensor(t, dtype=pdtype) for t in setting]
        tabs = _tables(s, whats, tuple(float(t) for t in scalars), dtype)
        full = {q: tabs[q][0][idx] for q in whats}
        sing = {}
        for q in whats:
            if tabs[q][1]:
                m = torch.zeros(n, dtype=torch.bool)
                m[torch.tensor(tabs[q][1])] = True
                sing[q] = m[idx]
        for r in range(0, R, SWEEP_ROWS):
            rows = slice(r, r + SWEEP_ROWS)
            xc = on(x_all[rows])
            ref = Tabled(s, {q: on(t[rows]) for q, t in full.items()},
                         {q: on(t[rows]) for q, t in sing.items()}, xc, on(w), on(b))
            case = (fn, s, xc, [on(t) for t in scalars], on(w), on(b), on(g[rows]))
            if order == 0:
                check_values(*case, standard=standard, ref=ref)
                continue
            check_first(*case, standard=standard, ref=ref)
            if order == 2:
                check_second(*case, [on(v[0][rows]), *(on(t) for t in v[1:])],
                             standard=standard, ref=ref)


def assert_matches(fn, form, *, dtypes=DTYPES, device="cpu", examples: int = 200,
                   order: int = 1, ranges: dict | None = None, bias_none: bool = False,
                   tolerance: str = "ulp", sweep: int = SWEEPS) -> None:
    """Property-test ``fn(x, weight, bias, **scalars)`` against ``form``.

    form: a layer form of the catalog ("dyt", "dyisru", "dyt_ln", "dyisru_ln", "derf") or a
    formula f of x (text such as "x / (1 + abs(x))", or a SymPy expression) for the layer
    y = weight * f + bias; its other free symbols are the scalars, passed to fn by name.
    dtypes: the input dtypes, each also the parameters' dtype, or (input, parameter) pairs.
    examples: hypothesis examples per dtype. order: 0 compares the output only; 1 also every
    first derivative (x, each scalar, weight, bias); 2 also the double backward along a
    random direction (every second derivative, and the forward-mode product).
    ranges: name -> (low, high) for a scalar (defaults: SCALAR_RANGES, else DEFAULT_RANGE).
    bias_none: also call fn with bias=None (meaning 0) in about half the examples.
    tolerance: the standard, "ulp" (``TOLERANCES``: a few ulps of the exact value, what the
    project's own layers meet) or "torch" (``TORCH_TOLERANCES``: torch.testing.assert_close's
    rtol and atol for the dtype, against the exact value).
    sweep: at this many settings of the scalars (``sweep_scalars``), every finite value of
    bfloat16 and float16, and every binade of float32 and float64 (``binade_sweep``), goes
    through fn before hypothesis's draws; 0 leaves the draws only. Its mpmath references
    are computed once and cached (``derive.cache.references()``).

    The same call gives the same verdict on every run and machine (fixed seeds, hypothesis
    derandomized). Inputs run over each dtype's whole finite range; the references are the
    formula evaluated by mpmath at the inputs as cast. A derivative with a DiracDelta term
    is compared where it is defined, with an ``Unchecked`` warning saying where it is not.
    Raises Mismatch (an AssertionError) naming the standard, the worst element, its input,
    the exact value and the error in ulps.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if order not in (0, 1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples must be a positive int, got {examples!r}")
    if tolerance not in STANDARDS:
        raise ValueError(f"tolerance must be 'ulp' or 'torch', got {tolerance!r}")
    if isinstance(sweep, bool) or not isinstance(sweep, int) or sweep < 0:
        raise ValueError(f"sweep must be an int >= 0, got {sweep!r}")
    s = spec(form)
    pairs = _pairs(dtypes)
    device = torch.device(device)
    unknown = set(ranges or {}) - {p.name for p in s.params}
    if unknown:
        raise ValueError(f"ranges: {sorted(unknown)} are not scalars of {s.name} "
                         f"({', '.join(p.name for p in s.params) or 'none'})")
    for line in _unchecked(s, order):
        warnings.warn(line, Unchecked, stacklevel=2)
    settings_ = sweep_scalars(s, sweep, ranges) if sweep else []
    check = {0: check_values, 1: check_first}.get(order)
    for dtype, pdtype in pairs:
        _sweep(fn, s, dtype, pdtype, device, order, tolerance, settings_)
        strategy = cases(s, dtype, pdtype, device, ranges=ranges, bias_none=bias_none)
        if order == 2:
            strategy = strategy.flatmap(lambda c: st.tuples(st.just(c), directions(c)))

        @settings(max_examples=examples, deadline=None, database=None, phases=PHASES,
                  derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.differing_executors])
        @given(strategy)
        def run(case):
            if order == 2:
                c, v = case
                check_first(fn, s, *c, standard=tolerance)
                check_second(fn, s, *c, v, standard=tolerance)
            else:
                check(fn, s, *case, standard=tolerance)

        run()


def _order(what: str) -> int:
    """The derivative order a comparison's ``what`` belongs to (see check_first and
    check_second): the output 0, a gradient 1, a second derivative or the double backward's
    forward-mode product 2."""
    if what.endswith(" y"):
        return 0
    return 2 if ("second derivative" in what or "forward-mode" in what) else 1


def report(fn, form, *, dtypes=DTYPES, order: int = 1, **kwargs) -> list[dict]:
    """``assert_matches`` run dtype by dtype, recording every comparison: per (dtype,
    order), the worst error in ulps (at the element worst against the allowed error), as a
    fraction of the allowed, and where; a dtype whose check failed carries the Mismatch's
    message (``failed``) and the orders it did not reach are absent. Takes
    ``assert_matches``'s arguments and raises what it raises, but a Mismatch."""
    rows = []
    for pair in _pairs(dtypes):
        with recording() as seen:
            try:
                assert_matches(fn, form, dtypes=[pair], order=order, **kwargs)
                failed = None
            except Mismatch as e:
                failed = str(e)
        worst: dict[int, dict] = {}
        for r in seen:
            k = _order(r["what"])
            if k not in worst or r["over_allowed"] > worst[k]["over_allowed"]:
                worst[k] = r
        for k in sorted(worst):
            rows.append({"dtype": pair[0], "pdtype": pair[1], "order": k, **worst[k],
                         "failed": failed if worst[k]["over_allowed"] > 1 else None})
        if failed and not any(r["failed"] for r in rows if r["dtype"] == pair[0]):
            rows.append({"dtype": pair[0], "pdtype": pair[1], "order": None, "what": "",
                         "failed": failed})
    return rows
