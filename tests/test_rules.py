"""Each numerical-safety rule twice: SymPy proves it, and a number shows what it fixes."""
from __future__ import annotations

import mpmath
import pytest
import torch

from derive.rules import RULES
from derive.steps import check, Step
from numeric import functional as F


@pytest.mark.parametrize("name", RULES)
def test_rule_is_proven(name):
    rule = RULES[name]
    obligations = tuple(rule.proof())
    step = check(Step(name, 0, rule.fixes, obligations))   # raises on a failed obligation
    assert obligations and len(step.checks) == len(obligations)   # and none was skipped


def test_sech2_fixes_the_tanh_derivative_underflow():
    """float32, u = 12: 1 - tanh(u)^2 is 0; the layer's gradient is sech^2(12) = 1.5e-10."""
    u = torch.tensor([12.0])
    literal = 1 - torch.tanh(u) ** 2
    assert literal.item() == 0.0
    x = u.clone().requires_grad_(True)
    F.dyt(x, torch.tensor(1.0), torch.ones(1)).sum().backward()
    with mpmath.workdps(50):
        want = float(mpmath.sech(12) ** 2)
    assert x.grad.item() == pytest.approx(want, rel=1e-5)


def test_isru_hypot_fixes_the_square_overflow():
    """float32, x = 1e20: x / sqrt(beta + x^2) gives 0 (x^2 = inf); the layer gives 1."""
    x = torch.tensor([1e20])
    beta = torch.tensor(4.0)
    literal = x * torch.rsqrt(beta + x * x)
    assert literal.item() == 0.0
    assert F.dyisru(x, beta, torch.ones(1)).item() == 1.0


def test_isru_hypot_keeps_the_backward_accurate_far_out():
    """float32, x = 1e13: beta/(beta + x^2)^(3/2) overflows in the literal form (-> 0)."""
    x = torch.tensor([1e13], requires_grad=True)
    beta = torch.tensor(1e6)
    literal = beta / (beta + x.detach() ** 2) ** 1.5
    assert literal.item() == 0.0
    F.dyisru(x, beta, torch.ones(1)).sum().backward()
    assert x.grad.item() == pytest.approx(1e6 / 1e39, rel=1e-5)


# -- the safety rules wherever their pattern occurs (a user's formula) -----------------------

def test_isru_hypot_finds_its_pattern_in_any_expression():
    import sympy as sp

    from derive.rules import isru_sites
    from derive.symbols import x
    beta, c, alpha = (sp.Symbol(n, real=True) for n in ("beta", "c", "alpha"))
    found = lambda e: [(s.z, s.a, s.b) for s in isru_sites(e, x)]  # noqa: E731
    assert found(x / sp.sqrt(beta + x**2)) == [(x, beta, 1)]
    assert found(sp.tanh(x) + x / sp.sqrt(1 + 4 * x**2)) == [(x, sp.Rational(1, 4), 4)]
    assert found(1 / (beta + (x - c) ** 2)) == [(x - c, beta, 1)]
    assert found(sp.sqrt(x**2 + 2 * x + 5)) == [(x + 1, 4, 1)]
    assert found(x / sp.sqrt(2 + x**2)) == [(x / sp.sqrt(2), 1, 2)]   # hypot(1, .), no float
    assert found(x / sp.sqrt(x**2 - 1)) == []           # a < 0: not real for |x| < 1
    assert found(x / sp.sqrt(1 + (alpha * x) ** 2)) == []   # alpha may be 0
    assert found((1 + x**2) ** 2) == []                 # a polynomial: its overflow is its value


@pytest.mark.parametrize("text,want", [
    # d/dx x/sqrt(1 + x^2) = 1/h - x^2/h^3 literally: p^2/h, p = 1/h
    ("x/sqrt(1+x**2)", "p**2/h"),
    # d/dx sqrt(1 + x^2) = q; d/dx tanh(x) + ... keeps 1/cosh(x)^2 apart from p^2/h
    ("sqrt(1+x**2)", "q"),
    ("tanh(x)+x/sqrt(1+x**2)", "p**2/h + cosh(x)**(-2)"),
])
def test_the_derivative_is_printed_in_a_form_that_does_not_cancel(text, want):
    import sympy as sp

    from derive.formula import parse
    from derive.rules import safety_rewrite
    from derive.symbols import x
    e = sp.diff(parse(text), x)
    r = safety_rewrite(e, x, "test")      # each application checked (raises if not equal)
    assert r.expr == sp.sympify(want, locals={"x": x, **{s.name: s for s in r.defs}})


def test_a_users_isru_gets_what_the_catalogs_dyisru_gets():
    """The rule found by its pattern in a user's x/sqrt(beta + x^2) rewrites every printed
    function (forward, derivatives, jvp, hvp) as the catalog's DyISRU has it."""
    import sympy as sp

    from derive.forms import FORMS, Form, layer_functions
    from derive.symbols import beta, x
    mine = layer_functions(Form.of("isru", x / sp.sqrt(beta + x**2)))
    built_in = layer_functions(FORMS["dyisru"])
    for f, g in zip(mine, built_in, strict=True):
        assert [(n, r.expr, r.defs) for n, r in f.outputs] == \
            [(n, r.expr, r.defs) for n, r in g.outputs], f.name
