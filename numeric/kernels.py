"""Fused kernels of the layer forms as torch custom ops: one op each way per form.

Same signatures as numeric.functional (x: (..., C); scalars 0-dim; weight, bias (C,)):

    dyt(x, alpha, weight, bias)             weight * tanh(alpha x) + bias
    dyisru(x, beta, weight, bias)           weight * x / sqrt(beta + x^2) + bias
    dyt_ln(x, alpha, shift, weight, bias)   weight * tanh(alpha (x - shift)) + bias
    dyisru_ln(x, beta, shift, weight, bias) weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias

Ops (torch.compile and torch.export see each as one node, shapes from register_fake):
``dynorm::{form}_fwd(x, scalars..., weight, bias?) -> y`` and
``dynorm::{form}_bwd(grad, x, scalars..., weight) -> (grad_x, grad_scalars..., grad_weight,
grad_bias)``; grad_x in x's dtype, the parameters' gradients in the compute dtype (cast to
each parameter's dtype by the autograd formula). The backward recomputes from x: the
forward saves x and the parameters only. No double backward.

Backends, chosen per call from the tensor's device and a switch (``set_backend`` or the
environment variable DYNORM_BACKEND, read at import):

- ``"auto"`` (default): the Triton kernels (numeric/generated/kernels.py) for CUDA tensors
  when triton is installed, the generated PyTorch code (numeric/generated/layers.py)
  elsewhere;
- ``"triton"``: the Triton kernels; CPU tensors run through Triton's interpreter, which
  needs TRITON_INTERPRET=1 in the environment before triton is first imported;
- ``"torch"``: the generated PyTorch code.

float64 input always takes the PyTorch path: the kernels compute in float32. Whichever
path runs, the dtype policy is numeric.functional's: compute in float32 (float64 for
float64), return x's dtype, +-inf saturates with zero gradient, NaN stays in its element.
Both paths are deterministic: the Triton backward sums the parameters' gradients in two
fixed-order stages (per-program partials, then a sum), without atomics.

Importing this module loads torch only: triton is imported when a kernel is first
launched. (The first call of any torch custom op imports torch._dynamo, which in turn
imports SymPy, and triton where it is installed: torch's doing, not a launch.)
"""
from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

from ._autograd import FUNCTIONS, _prepare, _scalar, compute_dtype
from ._switch import Switch
from .generated import layers as G

__all__ = ["dyt", "dyisru", "dyt_ln", "dyisru_ln", "set_backend", "get_backend", "OPS"]

BACKENDS = ("auto", "triton", "torch")
#: form -> names of its 0-dim parameters, in the order of the functional signature.
SCALARS = {"dyt": ("alpha",), "dyisru": ("beta",), "dyt_ln": ("alpha", "shift"),
           "dyisru_ln": ("beta", "shift")}

#: Forward: elements per program of the 1-D grid.
BLOCK = 1024
#: Backward: channels per program (at most) and elements per (BLOCK_R, BLOCK_C) tile.
BLOCK_C_MAX = 128
TILE = 2048
#: Backward: at most this many row programs, so the partials are at most (k, 256, C);
#: a function of the shape only, so the sums' order is the same on every device.
ROW_PROGRAMS = 256


BACKEND = Switch("backend", BACKENDS, "DYNORM_BACKEND", "auto")


def set_backend(name: str) -> str:
    """Choose "auto", "triton" or "torch" for every later call; returns the previous one."""
    return BACKEND.set(name)


def get_backend() -> str:
    return BACKEND.value


@cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def uses_triton(x: torch.Tensor) -> bool:
    """Whether a call with input x runs the Triton kernels under the current backend."""
    backend = BACKEND.value
    if x.dtype == torch.float64 or backend == "torch":
        return False
    if x.device.type == "cuda":
        return backend == "triton" or _triton_installed()
    if backend == "auto":
        return False
    if x.device.type == "cpu" and _interpreting():
        return True
    raise RuntimeError(
        f"backend 'triton' cannot run a {x.device.type} tensor: Triton runs CPU tensors only "
        "through its interpreter (TRITON_INTERPRET=1 before triton is imported); "
        "use set_backend('auto') or 'torch'")


def _kernels(x: torch.Tensor):
    """The generated kernels module (importing triton: only here, at the first launch)."""
    from .generated import kernels

    if x.device.type == "cpu":
        import triton.language as tl

        if {type(f).__name__ for f in (tl.sum, kernels.dyt_forward_kernel)} != {
                "InterpretedFunction"}:
            raise RuntimeError(
                "Triton's interpreter needs TRITON_INTERPRET=1 before triton (or "
                "numeric.generated.kernels) is first imported; it was set later")
    return kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- the two paths ---------------------------------------------------------------------------

def _torch_forward(name, x, scalars, weight, bias):
    return FUNCTIONS[name].forward(x, weight, bias, *scalars)


def _torch_backward(name, grad, x, scalars, weight):
    xc = _prepare(x)
    ct = xc.dtype
    gx, *gs, gw = getattr(G, f"{name}_backward")(
        grad.to(ct), xc, *(s.to(ct) for s in scalars), weight.to(ct))
    C = x.shape[-1]
    rows = lambda g: g.reshape(-1, C).sum(0)  # noqa: E731  (N, C) -> (C,)
    return (gx.to(x.dtype), *(g.sum() for g in gs), rows(gw), rows(grad.to(ct)))


def _triton_forward(name, x, scalars, weight, bias):
    y = torch.empty_like(x)                       # x: contiguous (..., C)
    n = x.numel()
    if n:
        kernel = getattr(_kernels(x), f"{name}_forward_kernel")
        kernel[(_cdiv(n, BLOCK),)](x, *scalars, weight, bias, y, n, x.shape[-1],
                                   HAS_BIAS=bias is not None, BLOCK=BLOCK)
    return y


def backward_grid(N: int, C: int) -> dict:
    """Block sizes and programs of the backward for N rows of C channels."""
    block_c = min(BLOCK_C_MAX, 1 << max(C - 1, 0).bit_length())
    block_r = TILE // block_c
    rows_per_program = block_r * _cdiv(_cdiv(N, block_r), ROW_PROGRAMS)
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "rows_per_program": rows_per_program,
            "programs": _cdiv(N, rows_per_program), "channel_blocks": _cdiv(C, block_c)}


def _triton_backward(name, grad, x, scalars, weight):
    C = x.shape[-1]
    N = x.numel() // C if C else 0
    grad_x = torch.empty_like(x)
    K = _kernels(x)
    sums = K.PARTIALS[name]                       # grad of each scalar, weight, bias
    if N == 0 or C == 0:
        partials = torch.zeros((len(sums), 1, C), dtype=torch.float32, device=x.device)
    else:
        g = backward_grid(N, C)
        partials = torch.empty((len(sums), g["programs"], C), dtype=torch.float32,
                               device=x.device)  # (k, row programs, C)
        kernel = getattr(K, f"{name}_backward_kernel")
        kernel[(g["programs"], g["channel_blocks"])](
            grad, x, *scalars, weight, grad_x, partials, N, C, g["rows_per_program"],
            BLOCK_R=g["BLOCK_R"], BLOCK_C=g["BLOCK_C"])
    totals = [p.sum(0) for p in partials]         # stage two: k times (C,), a fixed order
    n = len(scalars)
    return (grad_x, *(totals[k].sum() for k in range(n)), totals[n], totals[n + 1])


# -- the custom ops ------------------------------------------------------------------------------

def _schemas(name: str) -> tuple[str, str]:
    scalars = ", ".join(f"Tensor {s}" for s in SCALARS[name])
    outs = ", ".join(["Tensor"] * (len(SCALARS[name]) + 3))
    return (f"(Tensor x, {scalars}, Tensor weight, Tensor? bias) -> Tensor",
            f"(Tensor grad, Tensor x, {scalars}, Tensor weight) -> ({outs})")


def _define(name: str):
    """The forward and backward ops of one form, their fake kernels, their autograd."""
    fwd_schema, bwd_schema = _schemas(name)

    def forward(x, *args):
        *scalars, weight, bias = args
        impl = _triton_forward if uses_triton(x) else _torch_forward
        return impl(name, x.contiguous(), scalars, weight.contiguous(),
                    None if bias is None else bias.contiguous())

    def backward_op(grad, x, *args):
        *scalars, weight = args
        impl = _triton_backward if uses_triton(x) else _torch_backward
        return impl(name, grad.contiguous(), x.contiguous(), scalars, weight.contiguous())

    fwd = torch.library.custom_op(f"dynorm::{name}_fwd", forward, mutates_args=(),
                                  schema=fwd_schema)
    bwd = torch.library.custom_op(f"dynorm::{name}_bwd", backward_op, mutates_args=(),
                                  schema=bwd_schema)

    @fwd.register_fake
    def _(x, *args):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @bwd.register_fake
    def _(grad, x, *args):
        ct, C = compute_dtype(x.dtype), x.shape[-1]
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                *(x.new_empty((), dtype=ct) for _ in args[:-1]),
                x.new_empty((C,), dtype=ct), x.new_empty((C,), dtype=ct))

    def setup_context(ctx, inputs, output):
        x, *scalars, weight, bias = inputs
        ctx.save_for_backward(x, *scalars, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward(ctx, grad):
        x, *scalars, weight = ctx.saved_tensors
        gx, *gs, gw, gb = bwd(grad, x, *scalars, weight)
        return (gx, *(g.to(s.dtype) for g, s in zip(gs, scalars)), gw.to(weight.dtype),
                None if ctx.bias_dtype is None else gb.to(ctx.bias_dtype))

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd, bwd


#: form -> (forward op, backward op).
OPS = {name: _define(name) for name in SCALARS}


def _apply(name, x, scalars, weight, bias):
    C = x.shape[-1]
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"{arg} must have shape ({C},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
    ss = [_scalar(s, x).to(x.device).reshape(()) for s in scalars]
    return OPS[name][0](x, *ss, weight, bias)


def dyt(x, alpha, weight, bias=None):
    """DyT (Zhu et al. 2025): weight * tanh(alpha * x) + bias, one fused op each way."""
    return _apply("dyt", x, (alpha,), weight, bias)


def dyisru(x, beta, weight, bias=None):
    """DyISRU (Stollenwerk 2025): weight * x / sqrt(beta + x^2) + bias, fused."""
    return _apply("dyisru", x, (beta,), weight, bias)


def dyt_ln(x, alpha, shift, weight, bias=None):
    """DyT's LayerNorm form: weight * tanh(alpha * (x - shift)) + bias, fused."""
    return _apply("dyt_ln", x, (alpha, shift), weight, bias)


def dyisru_ln(x, beta, shift, weight, bias=None):
    """DyISRU's LayerNorm form: weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias, fused."""
    return _apply("dyisru_ln", x, (beta, shift), weight, bias)
