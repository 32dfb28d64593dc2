"""The Triton backend: the generated kernels of the layer forms, as torch custom ops.

numeric.backends runs these for CUDA tensors (and, with set_backend("triton"), for CPU
tensors through Triton's interpreter, TRITON_INTERPRET=1); nothing calls them directly.

    forward(name, x, scalars, weight, bias) -> y
    backward(name, grad, x, scalars, weight) -> (grad_x, [grad of each scalar], grad_weight,
                                                 grad_bias)

as every backend (numeric/backends.py). Ops (torch.compile and torch.export see each as one
node, shapes from register_fake): ``dynorm::{form}_fwd(x, scalars..., weight, bias?) -> y``
and ``dynorm::{form}_bwd(grad, x, scalars..., weight) -> (grad_x, grad_scalars...,
grad_weight, grad_bias)``; grad_x in x's dtype, the parameters' gradients in float64.
The kernels (numeric/generated/kernels.py) load each tensor in its own dtype, compute in
float32, clamp x to float32's finite range and store in the output's dtype. The backward
recomputes from x and sums the parameters' gradients in two deterministic stages without
atomics: per row program in float32 (partials), then over the programs in float64.

Importing this module loads torch only: triton is imported when a kernel is first
launched. (The first call of any torch custom op imports torch._dynamo, which in turn
imports SymPy, and triton where it is installed: torch's doing, not a launch.)
"""
from __future__ import annotations

import os

import torch


#: Forward: elements per program of the 1-D grid.
BLOCK = 1024
#: Backward: channels per program (at most) and elements per (BLOCK_R, BLOCK_C) tile.
BLOCK_C_MAX = 128
TILE = 2048
#: Backward: at most this many row programs, so the partials are at most (k, 256, C);
#: a function of the shape only, so the sums' order is the same on every device.
ROW_PROGRAMS = 256


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(x: torch.Tensor) -> None:
    """Raise unless the kernels can run on x's device: CUDA, or a CPU under the interpreter."""
    if x.device.type == "cuda" or (x.device.type == "cpu" and _interpreting()):
        return
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


# -- the launches -------------------------------------------------------------------------

def backward_grid(N: int, C: int) -> dict:
    """Block sizes and programs of the backward for N rows of C channels."""
    block_c = min(BLOCK_C_MAX, 1 << max(C - 1, 0).bit_length())
    block_r = TILE // block_c
    rows_per_program = block_r * _cdiv(_cdiv(N, block_r), ROW_PROGRAMS)
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "rows_per_program": rows_per_program,
            "programs": _cdiv(N, rows_per_program), "channel_blocks": _cdiv(C, block_c)}


@torch.library.custom_op("dynorm::form_forward", mutates_args=())
def forward(name: str, x: torch.Tensor, scalars: list[torch.Tensor], weight: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    """y = weight * f(x; scalars) + bias of form ``name`` by its Triton kernel."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        kernel = getattr(_kernels(x), f"{name}_forward_kernel")
        kernel[(_cdiv(n, BLOCK),)](x, *(s.reshape(()) for s in scalars), weight.contiguous(),
                                   None if bias is None else bias.contiguous(), y, n,
                                   x.shape[-1], HAS_BIAS=bias is not None, BLOCK=BLOCK)
    return y


@forward.register_fake
def _(name, x, scalars, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("dynorm::form_backward", mutates_args=())
def backward(name: str, grad: torch.Tensor, x: torch.Tensor, scalars: list[torch.Tensor],
             weight: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor,
                                            torch.Tensor]:
    """(grad_x, [grad of each scalar], grad_weight, grad_bias) of form ``name`` by its
    Triton kernel: grad_x in x's dtype, the sums in float64."""
    x, grad = x.contiguous(), grad.contiguous()
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
            grad, x, *(s.reshape(()) for s in scalars), weight.contiguous(), grad_x, partials,
            N, C, g["rows_per_program"], BLOCK_R=g["BLOCK_R"], BLOCK_C=g["BLOCK_C"])
    totals = partials.sum(1, dtype=torch.float64)  # stage two: (k, C), a fixed order
    n = len(scalars)
    return grad_x, [totals[k].sum() for k in range(n)], totals[n].clone(), totals[n + 1].clone()


@backward.register_fake
def _(name, grad, x, scalars, weight):
    C, f64 = x.shape[-1], torch.float64
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            [x.new_empty((), dtype=f64) for _ in scalars],
            x.new_empty((C,), dtype=f64), x.new_empty((C,), dtype=f64))
