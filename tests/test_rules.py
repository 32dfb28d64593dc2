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
