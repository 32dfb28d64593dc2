"""The comparison reports a wrong formula: a deliberately broken implementation must fail."""
from __future__ import annotations

import pytest
import torch

from derive.testing import Mismatch, assert_close
from tests import reference as R


def _wrong_dyisru(x, beta, w):
    """beta + x instead of beta + x^2: a plausible slip."""
    return w * x / torch.sqrt(beta + x.abs())


def _literal_dyt_grad(x, alpha, w):
    """1 - tanh^2 in float32: right formula, wrong numerics far out."""
    return w * alpha * (1 - torch.tanh(alpha * x) ** 2)


def test_a_wrong_formula_is_reported_with_its_worst_element():
    x = torch.tensor([[0.5, 2.0, -3.0]])
    beta, w = torch.tensor(2.0), torch.ones(3)
    ref = R.evaluate("dyisru", "y", x, [beta], w, None)
    with pytest.raises(Mismatch, match=r"worst at .* got .* reference"):
        assert_close(_wrong_dyisru(x, beta, w), ref, what="wrong dyisru")


def test_the_literal_tanh_derivative_is_reported_in_float32():
    x = torch.tensor([[1.0, 8.0, 12.0]])
    alpha, w = torch.tensor(1.0), torch.ones(3)
    ref = R.evaluate("dyt", "d_x", x, [alpha], w, None)
    with pytest.raises(Mismatch, match="grad"):
        assert_close(_literal_dyt_grad(x, alpha, w), ref, what="literal grad")
