"""Provisional: plain torch compositions (replaced by the generated autograd Functions)."""
from __future__ import annotations

import torch


def _ct(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


_FORMS = {
    "dyt": lambda x, a: torch.tanh(a * x),
    "dyisru": lambda x, b: x * torch.rsqrt(b + x * x),
    "dyt_ln": lambda x, a, s: torch.tanh(a * (x - s)),
    "dyisru_ln": lambda x, b, s: (x - s) * torch.rsqrt(b + (x - s) ** 2),
}


def apply(name, x, scalars, weight, bias):
    ct = _ct(x.dtype)
    f = _FORMS[name](x.to(ct), *(p.to(ct) for p in scalars))
    y = weight.to(ct) * f
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(x.dtype)


def apply_norm(name, x, weight, bias, eps):
    ct = _ct(x.dtype)
    xc = x.to(ct)
    if name == "layernorm":
        xc = xc - xc.mean(-1, keepdim=True)
    y = xc * torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(x.dtype)
