"""Property tests of anyone's layer against the formulas: ``assert_matches``.

    from derive.testing import assert_matches
    assert_matches(lambda x, weight, bias, alpha: weight * torch.tanh(alpha * x) + bias, "dyt")

An implementation ``fn(x, weight, bias, **scalars)`` of y = weight * f(x; scalars) + bias
over the last dimension is checked against a layer form of the catalog (by name, e.g.
"dyt") or a formula f of x (a SymPy expression, or text read by ``derive.formula``):
hypothesis draws shapes, inputs up to each dtype's finite maximum, weights, biases and
scalars; the output and the derivatives up to ``order`` are compared, element by element,
with the formula and its SymPy derivatives evaluated by mpmath (50 digits, more where the
formula cancels) at the inputs exactly as cast, through the one tolerance table
(``TOLERANCES``). A mismatch raises an AssertionError (``Mismatch``) naming the worst
element, its input and its reference.

This is the one module of ``derive`` that imports torch (and hypothesis, of the ``test``
extra); ``import derive`` never loads it. The project's own property tests use it too.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache

import mpmath
import sympy as sp
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import layers, symbols
from .catalog import NAMES
from .formula import FormulaError, parse
from .symbols import x

__all__ = ["assert_matches", "assert_close", "Mismatch", "Tol", "TOLERANCES", "DTYPES",
           "evaluate", "spec"]

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


def tol_for(dtype: torch.dtype) -> Tol:
    return TOLERANCES[dtype]


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


def _at(v, i: int, n: int):
    """An input at the worst element i of n: its own element, its one value, or all of it
    (the worst element of a reduced gradient is a sum over every input)."""
    if not isinstance(v, torch.Tensor):
        return v
    if v.numel() == n:
        return v.flatten()[i].item()
    return v.item() if v.numel() == 1 else v.detach().flatten().tolist()


def assert_close(got: torch.Tensor, ref: torch.Tensor, *, scale=None, dtype=None,
                 inputs: dict | None = None, what: str = "output") -> None:
    """Compare got (any dtype) with a float64 reference; raise Mismatch with the worst element."""
    t = tol_for(dtype or got.dtype)
    got64, ref64 = got.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    scale64 = ref64.abs() if scale is None else torch.as_tensor(scale, dtype=torch.float64).cpu()
    if got64.shape != ref64.shape:
        raise Mismatch(f"{what}: shape {tuple(got64.shape)} != reference {tuple(ref64.shape)}")
    both_nan = got64.isnan() & ref64.isnan()
    # +-inf is the dtype's rounding of a value beyond its finite range
    beyond = ref64.abs() > torch.finfo(dtype or got.dtype).max
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
        _log(got, dtype or got.dtype, what, ratio, err, not bad.any())
    if bad.any():
        excess = torch.where(bad, ratio, torch.zeros_like(err))
        i = int(excess.flatten().argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), ref64.shape))
        at = {k: _at(v, i, ref64.numel()) for k, v in (inputs or {}).items()}
        raise Mismatch(f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst at {idx}: "
                       f"got {got64.flatten()[i].item()!r}, reference {ref64.flatten()[i].item()!r}, "
                       f"allowed {allowed.flatten()[i].item():.3g}; inputs {at} "
                       f"(tolerance for {dtype or got.dtype}: {t.why})")


# -- what is tested: a layer y = weight * f + bias -------------------------------------------

def _formula_form(name: str, f: sp.Expr) -> layers.Form:
    f = f.subs({s: x for s in f.free_symbols if s.name == x.name and s != x})
    if x not in f.free_symbols:
        raise FormulaError(f"form {name!r} is neither a layer form of the catalog "
                           f"({', '.join(layers.FORMS)}) nor a formula of x")
    taken = {s.name for s in f.free_symbols} & {symbols.weight.name, symbols.bias.name}
    if taken:
        raise FormulaError(f"the formula may not use {sorted(taken)}: y = weight * f + bias")
    return layers.Form.of(name, f)


def spec(form) -> layers.Form:
    """What is tested against, as the generated code is made from it (``layers.Form``: the
    layer weight * f + bias and its scalars): a layer form's name ("dyt"), a formula of x
    (text or SymPy), or a Form."""
    if isinstance(form, layers.Form):
        return form
    if isinstance(form, str):
        if form in layers.FORMS:
            return layers.FORMS[form]
        if form in NAMES:
            raise ValueError(f"form {form!r} is a result of the catalog but not an element-wise "
                             f"layer form ({', '.join(layers.FORMS)})")
        return _formula_form(form, parse(form))
    if isinstance(form, sp.Expr):
        return _formula_form(sp.sstr(form), form)
    raise TypeError(f"form must be a layer form's name, a formula of x (str or SymPy) or a "
                    f"layers.Form, got {type(form).__name__}")


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


def _symbols(s: layers.Form, what: str) -> tuple[sp.Symbol, ...]:
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
def _lambda(s: layers.Form, what: str):
    """The mpmath callable of (x, scalars..., weight, bias) for ``what``: "y", "f", a first
    derivative "d_a" or a second derivative "d2_a_b"."""
    e = s.layer
    if what == "f":
        e = (e - symbols.bias) / symbols.weight
    elif what.startswith("d2_"):
        # over one denominator: 1 - x^2/(beta + x^2) would cancel at every precision below
        e = sp.factor(sp.together(sp.diff(e, *_symbols(s, what))))
    elif what != "y":
        # SymPy's exact simplification keeps e.g. beta/(beta + x^2)^(3/2) from being
        # evaluated as the difference of two nearly equal terms.
        e = sp.simplify(sp.diff(e, *_symbols(s, what)))
    return sp.lambdify((x, *s.params, symbols.weight, symbols.bias), e, "mpmath")


def evaluate(form, what: str, x_t, scalars, w_t, b_t) -> torch.Tensor:
    """float64 tensor of ``what`` ('y', 'f', 'd_x', 'd_alpha', 'd2_x_alpha', ...) at every
    element. x_t (..., C), scalars 0-dim, w_t and b_t (C,): all exactly as cast to the
    tested dtype."""
    fn = _lambda(spec(form), what)
    xs = x_t.detach().to(torch.float64).cpu()
    C = xs.shape[-1]
    ws = w_t.detach().to(torch.float64).cpu().tolist()
    bs = b_t.detach().to(torch.float64).cpu().tolist() if b_t is not None else [0.0] * C
    ss = [float(s) for s in scalars]
    flat = xs.reshape(-1, C).tolist()
    out = [[_stable(fn, v, ss, ws[c], bs[c]) for c, v in enumerate(row)] for row in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(xs.shape)


def _stable(fn, v, ss, w, b) -> float:
    """fn at x = v, raising the precision until two precisions agree to 25 digits or round
    to the same float64 (exp(-u^2) at u = 1e300 never agrees to 25 digits: u^2 carries an
    absolute error of 1e550 at 50 digits; both are 0.0 in float64)."""
    prev = None
    for dps in PRECISIONS:
        with mpmath.workdps(dps):
            xv = mpmath.mpf(v)
            if mpmath.isinf(xv):  # the limit, from a huge finite x of the same sign
                xv = mpmath.mpf(10) ** 400 * (1 if xv > 0 else -1)
            try:
                val = fn(xv, *(mpmath.mpf(t) for t in ss), mpmath.mpf(w), mpmath.mpf(b))
            except (ZeroDivisionError, ValueError):  # a pole or outside the domain
                return math.nan
            if isinstance(val, mpmath.mpc):  # e.g. sqrt of a negative: no real value
                return math.nan
            if prev is not None and (mpmath.isnan(val) or abs(val - prev) <= abs(val) * 1e-25
                                     or float(val) == float(prev)):
                return float(val)
            prev = val
    return float(prev)


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


def _call(fn, s: layers.Form, x_t, scalars, w, b):
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


def _inputs(s: layers.Form, x_t, scalars):
    return {"x": x_t, **{p.name: v for p, v in zip(s.params, scalars)}}


def _label(s: layers.Form, x_t, w) -> str:
    dt = lambda d: str(d).replace("torch.", "")  # noqa: E731
    pd = "" if w.dtype == x_t.dtype else f", parameters {dt(w.dtype)}"
    return f"{s.name} ({dt(x_t.dtype)}{pd}, {x_t.device.type})"


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


def check_first(fn, form, x_t, scalars, w, b, g):
    """The output and every gradient of fn against the formula."""
    s = spec(form)
    y, gx, gs, gw, gb = first_order(fn, s, x_t, scalars, w, b, g)
    ev = lambda what: evaluate(s, what, x_t, scalars, w, b).to(x_t.device)  # noqa: E731
    label, inputs = _label(s, x_t, w), _inputs(s, x_t, scalars)
    f = ev("f")
    assert_close(y, ev("y"), scale=_value_scale(s, ev, x_t, scalars, w, b, f), dtype=x_t.dtype,
                 inputs=inputs, what=f"{label} y")
    g64 = g.double()
    dx = g64 * ev("d_x")
    assert_close(gx, dx, scale=dx.abs(), dtype=x_t.dtype, inputs=inputs, what=f"{label} grad x")
    for p, v, got in zip(s.params, scalars, gs):
        terms = g64 * ev(f"d_{p.name}")
        assert_close(got, terms.sum(), scale=terms.abs().sum(), dtype=v.dtype, inputs=inputs,
                     what=f"{label} grad {p.name}")
    C = x_t.shape[-1]
    terms = (g64 * f).reshape(-1, C)
    assert_close(gw, terms.sum(0), scale=terms.abs().sum(0), dtype=w.dtype, inputs=inputs,
                 what=f"{label} grad weight")
    if b is not None:
        gg = g64.reshape(-1, C)
        assert_close(gb, gg.sum(0), scale=gg.abs().sum(0), dtype=b.dtype,
                     what=f"{label} grad bias")


def check_values(fn, form, x_t, scalars, w, b, g=None):
    """The output of fn against the formula (no derivatives)."""
    s = spec(form)
    with torch.no_grad():
        y = _call(fn, s, x_t, scalars, w, b)
    ev = lambda what: evaluate(s, what, x_t, scalars, w, b).to(x_t.device)  # noqa: E731
    f = ev("f")
    if not isinstance(y, torch.Tensor) or y.shape != x_t.shape or y.dtype != x_t.dtype:
        raise Mismatch(f"{s.name}: the output must have x's shape and dtype "
                       f"{tuple(x_t.shape)} {x_t.dtype}")
    assert_close(y, evaluate(s, "y", x_t, scalars, w, b).to(x_t.device),
                 scale=_value_scale(s, ev, x_t, scalars, w, b, f), dtype=x_t.dtype,
                 inputs=_inputs(s, x_t, scalars), what=f"{_label(s, x_t, w)} y")


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


def check_second(fn, form, x_t, scalars, w, b, g, v):
    """Every second derivative along v against the formula's, summed as autograd sums them:
    h_a = sum over elements of g * sum_b v_b d2y/(da db); and in g, sum_b v_b dy/db."""
    s = spec(form)
    *got, got_g = second_order(fn, s, x_t, scalars, w, b, g, v)
    names = [a.name for a in wrt(s)]
    ev = lambda what: evaluate(s, what, x_t, scalars, w, b).to(x_t.device)  # noqa: E731
    g64, C = g.double(), x_t.shape[-1]
    v64 = [t.double() for t in v]
    label, inputs = _label(s, x_t, w), _inputs(s, x_t, scalars)
    # d2y/(da db) = d2y/(db da): each pair evaluated once; d2y/dweight^2 = 0
    d2 = {(a, bn): ev(f"d2_{a}_{bn}") for i, a in enumerate(names) for bn in names[i:]
          if (a, bn) != ("weight", "weight")}
    pair = lambda a, bn: d2.get((a, bn), d2.get((bn, a), 0.0))  # noqa: E731
    for a, out, like in zip(names, got, (x_t, *scalars, w)):
        parts = [g64 * pair(a, bn) * v64[j] for j, bn in enumerate(names)]
        terms, size = sum(parts), sum(p.abs() for p in parts)
        if a == "x":
            ref, scale = terms, size
        elif a == "weight":
            ref, scale = terms.reshape(-1, C).sum(0), size.reshape(-1, C).sum(0)
        else:
            ref, scale = terms.sum(), size.sum()
        if out.dtype != like.dtype:
            raise Mismatch(f"{label} second derivative in {a}: dtype {out.dtype}, want "
                           f"{like.dtype}")
        assert_close(out, ref, scale=scale, dtype=like.dtype, inputs=inputs,
                     what=f"{label} second derivative in {a}")
    parts = [ev(f"d_{bn}") * v64[j] for j, bn in enumerate(names)]
    assert_close(got_g, sum(parts), scale=sum(p.abs() for p in parts), dtype=g.dtype,
                 inputs=inputs, what=f"{label} forward-mode product (the gradient in grad)")


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


def assert_matches(fn, form, *, dtypes=DTYPES, device="cpu", examples: int = 200,
                   order: int = 1, ranges: dict | None = None, bias_none: bool = False) -> None:
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

    Inputs run over each dtype's whole finite range (the S-curve's bend, anything finite,
    +-max); the references are the formula evaluated by mpmath at the inputs as cast.
    Raises Mismatch (an AssertionError) naming the worst element, its input and reference.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if order not in (0, 1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples must be a positive int, got {examples!r}")
    s = spec(form)
    pairs = _pairs(dtypes)
    device = torch.device(device)
    unknown = set(ranges or {}) - {p.name for p in s.params}
    if unknown:
        raise ValueError(f"ranges: {sorted(unknown)} are not scalars of {s.name} "
                         f"({', '.join(p.name for p in s.params) or 'none'})")
    check = {0: check_values, 1: check_first}.get(order)
    for dtype, pdtype in pairs:
        strategy = cases(s, dtype, pdtype, device, ranges=ranges, bias_none=bias_none)
        if order == 2:
            strategy = strategy.flatmap(lambda c: st.tuples(st.just(c), directions(c)))

        @settings(max_examples=examples, deadline=None, database=None, phases=PHASES,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.differing_executors])
        @given(strategy)
        def run(case):
            if order == 2:
                c, v = case
                check_first(fn, s, *c)
                check_second(fn, s, *c, v)
            else:
                check(fn, s, *case)

        run()
