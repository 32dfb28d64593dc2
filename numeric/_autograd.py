"""One autograd.Function per generated form: it saves x (and the parameters) only,
recomputes in the backward, and applies the dtype policy once.

Policy: compute in float32 (float64 for float64 input) and return the input's dtype;
parameters may have another dtype (float32 parameters under bfloat16 autocast) and get
their gradients in their own dtype. x is clamped to the compute dtype's finite range
first, so +-inf saturates to the bound (and its gradient is 0) instead of giving NaN; a
NaN stays a NaN in its own element.
"""
from __future__ import annotations

import torch

from .generated import layers as G
from .generated import norms as N

#: form name -> the number of 0-dim parameters (alpha or beta, then shift).
SCALARS = {"dyt": 1, "dyisru": 1, "dyt_ln": 2, "dyisru_ln": 2}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(x: torch.Tensor) -> torch.Tensor:
    ct = compute_dtype(x.dtype)
    big = torch.finfo(ct).max
    return x.to(ct).clamp(-big, big)


def _sum_to(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient down to the shape (and dtype) of ``like``."""
    if like.dim() == 0:
        return g.sum().to(like.dtype)
    return g.reshape(-1, like.shape[-1]).sum(0).to(like.dtype)


def _form_function(name: str) -> type[torch.autograd.Function]:
    forward = getattr(G, f"{name}_forward")
    forward_nobias = getattr(G, f"{name}_forward_nobias")
    backward = getattr(G, f"{name}_backward")

    def forward_(x, weight, bias, *scalars):
        xc = _prepare(x)
        ct = xc.dtype
        ps = [p.to(ct) for p in scalars]
        w = weight.to(ct)
        y = forward_nobias(xc, *ps, w) if bias is None else forward(xc, *ps, w, bias.to(ct))
        return y.to(x.dtype)

    def setup_context(ctx, inputs, output):
        x, weight, bias, *scalars = inputs
        ctx.save_for_backward(x, weight, *scalars)
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward_(ctx, grad):
        x, weight, *scalars = ctx.saved_tensors
        xc = _prepare(x)
        ct = xc.dtype
        gx, *gscalars, gw = backward(grad.to(ct), xc, *(p.to(ct) for p in scalars),
                                     weight.to(ct))
        need = ctx.needs_input_grad
        out_x = gx.to(x.dtype) if need[0] else None
        out_w = _sum_to(gw, weight) if need[1] else None
        out_b = (_sum_to(grad.to(ct), weight).to(ctx.bias_dtype)
                 if ctx.bias_dtype is not None and need[2] else None)
        out_s = [_sum_to(g, p) if need[3 + i] else None
                 for i, (g, p) in enumerate(zip(gscalars, scalars))]
        return (out_x, out_w, out_b, *out_s)

    methods = {"forward": staticmethod(forward_), "setup_context": staticmethod(setup_context),
               "backward": staticmethod(backward_), "__doc__": f"{name}: saves x only."}
    return type(f"{name.title().replace('_', '')}Function", (torch.autograd.Function,), methods)


#: form name -> its autograd.Function.
FUNCTIONS = {name: _form_function(name) for name in SCALARS}


def _scalar(v, like: torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=like.device)


def apply(name: str, x, scalars, weight, bias):
    """y = weight * f(x; scalars) + bias through the generated forward and backward."""
    if len(scalars) != SCALARS[name]:
        raise ValueError(f"{name} takes {SCALARS[name]} scalar parameter(s), got {len(scalars)}")
    return FUNCTIONS[name].apply(x, weight, bias, *(_scalar(s, x) for s in scalars))


def _norm_function(name: str) -> type[torch.autograd.Function]:
    forward, backward = getattr(N, f"{name}_forward"), getattr(N, f"{name}_backward")

    class Norm(torch.autograd.Function):
        @staticmethod
        def forward(x, eps):
            return forward(x.to(compute_dtype(x.dtype)), eps).to(x.dtype)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.eps = inputs[1]

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            ct = compute_dtype(x.dtype)
            return backward(grad.to(ct), x.to(ct), ctx.eps).to(x.dtype), None

    Norm.__name__ = Norm.__qualname__ = f"{name.title()}Function"
    return Norm


NORMS = {name: _norm_function(name) for name in ("rmsnorm", "layernorm")}


def apply_norm(name: str, x, weight, bias, eps: float):
    """The norm (generated forward and VJP), then the affine part, all in the compute dtype."""
    ct = compute_dtype(x.dtype)
    y = NORMS[name].apply(x.to(ct), float(eps))
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(x.dtype)
