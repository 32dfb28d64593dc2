"""A user's formula gets the numerical-safety rules wherever their pattern occurs: the module
``dynorm generate --form`` writes for x/sqrt(beta + x^2) is as exact as the built-in DyISRU,
in the output, the gradients and the second derivative, far out where x^2 overflows and where
the literal derivative 1/h - x^2/h^3 cancels. References: mpmath on the formula, with its
derivatives from sympy.diff, at 200 digits, on the input as cast to the tested dtype."""
from __future__ import annotations

import importlib.util
import re

import mpmath
import pytest
import sympy as sp
import torch

from derive import formgen
from derive.formula import parse
from derive.symbols import x as X
from derive.testing import assert_close
from tests.strategies import DEVICES

#: name -> (formula, --init values).
FORMS = {
    "isru": ("x/sqrt(beta+x**2)", {"beta": 1.0}),
    "isru_one": ("x/sqrt(1+x**2)", {}),
    "hyp": ("sqrt(1+x**2)", {}),
    "cauchy": ("x/(beta+x**2)", {"beta": 1.0}),
    # both rules in one sum: 1 - tanh(x)^2 among the derivative's terms, and p^2/h kept
    # apart from 1/cosh(x)^2 (one fraction of the two is inf/inf at x = 1000)
    "mixed": ("tanh(x)+x/sqrt(1+4*x**2)", {}),
    # two bases, each term in its own h (one h for both was NaN at x = 1e20)
    "two": ("x/sqrt(1+x**2)+x/sqrt(2+x**2)", {}),
}
#: Inputs where the literal code fails: x^2 overflows (1e20, -3e30, 1e5 in the second
#: derivative's cube), the derivative cancels (1000, 1e5), and ordinary ones.
XS = {torch.float32: [0.0, 0.75, -2.5, 1000.0, 1e5, 1e20, -3e30, 3e38],
      torch.bfloat16: [0.75, -2.5, 99840.0, 1e20, -3e30]}


@pytest.fixture(scope="module", params=list(FORMS))
def generated(request, tmp_path_factory):
    name = request.param
    text, inits = FORMS[name]
    path = tmp_path_factory.mktemp("safety") / f"{name}.py"
    path.write_text(formgen.module(name, text, inits))
    spec = importlib.util.spec_from_file_location(f"_safety_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return name, module, path.read_text()


def _reference(text, inits, wrt, xs):
    """d^k f / d wrt... at each x (exact), f the formula at the --init values."""
    f = parse(text)
    scalars = {s: sp.Rational(repr(inits[s.name])) for s in f.free_symbols if s != X}
    e = (sp.diff(f, *wrt) if wrt else f).subs(scalars)
    fn = sp.lambdify(X, e, modules="mpmath")
    with mpmath.workdps(200):
        return [float(fn(mpmath.mpf(v))) for v in xs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(XS), ids=lambda d: str(d)[6:])
def test_output_gradients_and_second_derivative_are_the_formulas(generated, dtype, device):
    name, m, _ = generated
    text, inits = FORMS[name]
    fn = getattr(m, name)
    xs = torch.tensor(XS[dtype], dtype=dtype, device=device)
    at = [float(v) for v in xs.cpu().to(torch.float64)]           # the input as cast
    scalars = {k: torch.tensor(v, dtype=dtype, device=device, requires_grad=True)
               for k, v in m.INITS.items()}
    ys, gxs, g2xs, jvps, gss = [], [], [], [], {k: [] for k in scalars}
    for i in range(len(at)):   # one element at a time: the scalars' gradients are per x
        xi = xs[i:i + 1].clone().requires_grad_(True)
        y = fn(xi, torch.ones(1, dtype=dtype, device=device), None, **scalars)
        gx, *gs = torch.autograd.grad(y.sum(), [xi, *scalars.values()], create_graph=True)
        (g2x,) = torch.autograd.grad(gx.sum(), [xi])
        _, y_t = torch.func.jvp(lambda t: fn(t, torch.ones(1, dtype=dtype, device=device), None,
                                             **{k: v.detach() for k, v in scalars.items()}),
                                (xi.detach(),), (torch.ones_like(xi),))
        ys.append(y), gxs.append(gx), g2xs.append(g2x), jvps.append(y_t)
        for k, g in zip(scalars, gs):
            gss[k].append(g.reshape(1))
    inputs = {"x": xs}
    for what, got, wrt in [("y", ys, ()), ("grad x", gxs, (X,)), ("jvp", jvps, (X,)),
                           ("d2y/dx2", g2xs, (X, X)),
                           *((f"grad {k}", gss[k], (sp.Symbol(k, real=True),))
                             for k in scalars)]:
        ref = torch.tensor(_reference(text, inits, wrt, at), dtype=torch.float64)
        assert_close(torch.cat(got).detach(), ref, dtype=dtype, inputs=inputs,
                     what=f"{name} {what}")


def test_printed_with_the_rules_of_the_built_in_dyisru(generated):
    """hypot where the literal code squares x; no derivative as a difference of terms."""
    name, _, source = generated
    code = re.sub(r'"""(.*?)"""', "", source.split("# -- the autograd shell")[0], flags=re.S)
    assert "hypot(" in code and "(x * x)" not in code


@pytest.mark.parametrize("device", DEVICES)
def test_a_negative_rooted_scalar_is_one_clear_error(generated, device):
    """The layer takes sqrt(beta) to stay finite for every x; with beta < 0 that is NaN for
    every x (where x/sqrt(beta + x^2) is real for |x| > sqrt(-beta)): a CPU scalar's value
    is checked at the call and named; a CUDA one's is not read (it would wait for the
    device), as for the built-in DyISRU's beta."""
    name, m, _ = generated
    fn, rooted = getattr(m, name), m.ROOTED
    assert rooted == (("beta",) if "beta" in FORMS[name][0] else ()), rooted
    if not rooted:
        pytest.skip(f"{FORMS[name][0]} takes no root of a scalar")
    x, w = torch.tensor([2.0, 10.0], device=device), torch.ones(2, device=device)
    if device == "cpu":
        with pytest.raises(ValueError, match=r"beta must be >= 0, got -1: .* sqrt\(beta\)"):
            fn(x, w, beta=torch.tensor(-1.0, device=device))
    assert torch.isfinite(fn(x, w, beta=torch.tensor(1.0, device=device))).all()
