"""Reference RMSNorm and LayerNorm whose forward and backward are generated from the
derived Jacobians (numeric/generated/norms.py). They match torch.nn.RMSNorm and
torch.nn.LayerNorm, which checks the Jacobians against an implementation written elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from .layers import _size


class RMSNorm(nn.Module):
    """RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight over the last dimension.

    Shapes: x (..., C) -> (..., C); weight (C,) or None.
    """

    def __init__(self, normalized_shape, eps: float = 1e-6, elementwise_affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (_size(normalized_shape, "normalized_shape"),)
        self.eps = float(eps)
        self.weight = (nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
                       if elementwise_affine else None)

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, affine={self.weight is not None}"


class LayerNorm(nn.Module):
    """LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension.

    Shapes: x (..., C) -> (..., C); weight, bias (C,) or None.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (_size(normalized_shape, "normalized_shape"),)
        self.eps = float(eps)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, **kw)) if elementwise_affine else None
        self.bias = (nn.Parameter(torch.zeros(self.normalized_shape, **kw))
                     if elementwise_affine and bias else None)

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, affine={self.weight is not None}"
