"""Functional forms of the layers: y = weight * f(x) + bias over the last dimension.

Each computes in float32 (float64 for float64 input) and returns the input's dtype,
whatever the parameters' dtype (float32 parameters under mixed precision are fine).

    dyt(x, alpha, weight, bias)            weight * tanh(alpha x) + bias
    dyisru(x, beta, weight, bias)          weight * x / sqrt(beta + x^2) + bias
    dyt_ln(x, alpha, shift, weight, bias)  weight * tanh(alpha (x - shift)) + bias
    dyisru_ln(x, beta, shift, weight, bias) weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias

x: (..., C); alpha, beta, shift: 0-dim; weight, bias: (C,) or None (bias None means 0).

CPU inputs of at least 65,536 elements run fused (torch.compile of the same generated code,
compiled on the first such call); ``set_fusion("off")`` or DYNORM_FUSION=off turns that off.
"""
from __future__ import annotations

from . import _autograd
from ._autograd import compute_dtype, get_fusion, set_fusion  # noqa: F401  (the API)


def dyt(x, alpha, weight, bias=None):
    """DyT (Zhu et al. 2025): weight * tanh(alpha * x) + bias."""
    return _autograd.apply("dyt", x, (alpha,), weight, bias)


def dyisru(x, beta, weight, bias=None):
    """DyISRU (Stollenwerk 2025): weight * x / sqrt(beta + x^2) + bias."""
    return _autograd.apply("dyisru", x, (beta,), weight, bias)


def dyt_ln(x, alpha, shift, weight, bias=None):
    """DyT's LayerNorm form: weight * tanh(alpha * (x - shift)) + bias."""
    return _autograd.apply("dyt_ln", x, (alpha, shift), weight, bias)


def dyisru_ln(x, beta, shift, weight, bias=None):
    """DyISRU's LayerNorm form: weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias."""
    return _autograd.apply("dyisru_ln", x, (beta, shift), weight, bias)


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last dimension, forward and backward from the derived Jacobian."""
    return _autograd.apply_norm("rmsnorm", x, weight, None, eps)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dimension, forward and backward from the derived Jacobian."""
    return _autograd.apply_norm("layernorm", x, weight, bias, eps)

