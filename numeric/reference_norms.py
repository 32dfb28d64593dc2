"""Reference RMSNorm and LayerNorm whose forward and backward are generated from the
derived Jacobians (numeric/generated/norm_vjps.py). They match torch.nn.RMSNorm and
torch.nn.LayerNorm, which checks the Jacobians against an implementation written elsewhere.
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from .functional import check_eps
from .modules import check_size


class _Norm(nn.Module):
    """Shared shell: normalized_shape (C,), weight (ones) and bias (zeros) or None,
    reset_parameters, and an input check that names what is wrong."""

    def __init__(self, normalized_shape, eps, weight: bool, bias: bool, device, dtype):
        super().__init__()
        self.normalized_shape = (check_size(normalized_shape, "normalized_shape"),)
        self.eps = eps
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **kw)) if weight else None
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0 (as torch's norms)."""
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(f"input's last dimension must be {self.normalized_shape[0]}, "
                             f"got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, affine={self.weight is not None}"


class RMSNorm(_Norm):
    """RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight over the last dimension.

    ``eps=None`` (the default, as torch's) is the machine epsilon of the compute dtype:
    torch.finfo(float32).eps, and torch.finfo(float64).eps for float64 input.

    Shapes: x (..., C) -> (..., C); weight (C,) or None.
    """

    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None):
        super().__init__(normalized_shape, check_eps(eps, allow_none=True), elementwise_affine,
                         False, device, dtype)

    def forward(self, x):
        self._check_input(x)
        return F.rms_norm(x, self.weight, self.eps)


class LayerNorm(_Norm):
    """LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension.

    Shapes: x (..., C) -> (..., C); weight, bias (C,) or None.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(normalized_shape, check_eps(eps), elementwise_affine,
                         elementwise_affine and bias, device, dtype)

    def forward(self, x):
        self._check_input(x)
        return F.layer_norm(x, self.weight, self.bias, self.eps)
