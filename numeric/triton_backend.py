"""The Triton backend: the generated kernels of the layer forms, launched, and as torch ops.

numeric.backends runs these for CUDA tensors (and, with set_backend("triton"), for CPU
tensors through Triton's interpreter, TRITON_INTERPRET=1), given a form's row of the
generated table (numeric.generated.torch_forms.CODE):

    forward(code, x, scalars, weight, bias) -> y
    backward(code, grad, x, scalars, weight) -> (grad_x, [grad of each scalar],
                                                 grad_weight, grad_bias)

as every backend (numeric/backends.py). An eager call launches the kernels directly; a call
being traced (torch.compile, torch.export, make_fx) goes through the form's two custom ops,
which the graph shows as one node each, shapes from their fake kernels:
``dynorm::dyt_forward(x, alpha, weight, bias?) -> y`` and ``dynorm::dyt_backward(grad, x,
alpha, weight) -> (grad_x, grad_alpha, grad_weight, grad_bias)``, and so on per form; each
gradient in its input's dtype (grad_bias in the weight's), the parameters' summed in float64.

The kernels (numeric/generated/triton_kernels.py) load each tensor in its own dtype, compute in
float32, clamp x to float32's finite range and store in the output's dtype. The forward is
one launch of (BLOCK_R, BLOCK_C) tiles. The backward recomputes from x and sums the
parameters' gradients in two deterministic stages without atomics: per row program in
float32 (partials), then one launch that sums them over the programs in float64.

Importing this module loads torch only: triton is imported when a kernel is first
launched. (Defining and calling torch custom ops imports torch._dynamo, which in turn
imports SymPy, and triton where it is installed: torch's doing, not a launch.)
"""
from __future__ import annotations

import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from .generated.forms import FORMS
from .generated.torch_forms import CODE


#: Forward: elements per program (a (BLOCK_R, BLOCK_C) tile) and its widest BLOCK_C.
FORWARD_TILE = 4096
FORWARD_BLOCK_C_MAX = 1024
#: Backward: channels per program (at most) and elements per (BLOCK_R, BLOCK_C) tile.
BLOCK_C_MAX = 128
TILE = 2048
#: Backward: at most this many row programs, so the partials are at most (k, 256, C);
#: a function of the shape only, so the sums' order is the same on every device.
ROW_PROGRAMS = 256
#: Backward, stage two: the scalars' partials summed BLOCK at a time.
SUMS_BLOCK = 1024


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
    from .generated import triton_kernels as kernels

    if x.device.type == "cpu":
        import triton.language as tl

        if {type(f).__name__ for f in (tl.sum, kernels.dyt_forward_kernel)} != {
                "InterpretedFunction"}:
            raise RuntimeError(
                "Triton's interpreter needs TRITON_INTERPRET=1 before triton (or "
                "numeric.generated.triton_kernels) is first imported; it was set later")
    return kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# -- the grids ------------------------------------------------------------------------------

def forward_grid(N: int, C: int) -> dict:
    """Block sizes and grid of the forward for N rows of C channels: tiles of FORWARD_TILE
    elements (fewer where C is narrower), at most FORWARD_BLOCK_C_MAX channels wide."""
    block_c = min(FORWARD_BLOCK_C_MAX, _pow2(C))
    block_r = max(1, FORWARD_TILE // block_c)
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "grid": (_cdiv(N, block_r), _cdiv(C, block_c))}


def backward_grid(N: int, C: int) -> dict:
    """Block sizes and programs of the backward for N rows of C channels."""
    block_c = min(BLOCK_C_MAX, _pow2(C))
    block_r = TILE // block_c
    rows_per_program = block_r * _cdiv(_cdiv(N, block_r), ROW_PROGRAMS)
    return {"BLOCK_R": block_r, "BLOCK_C": block_c, "rows_per_program": rows_per_program,
            "programs": _cdiv(N, rows_per_program), "channel_blocks": _cdiv(C, block_c)}


# -- the launches: RUN["triton"] of numeric.backends -------------------------------------------

def forward(code, x, scalars, weight, bias, *, op: bool = True):
    """y = weight * f(x; scalars) + bias by the form's kernel (x (..., C); y x's dtype); a
    call being traced goes through the form's custom op instead (``op=False``: the op's own
    launch)."""
    if op and _traced(x):
        return OPS[code.name].forward_op(x, *scalars, weight, bias)
    x = x.contiguous()
    y = torch.empty_like(x)
    C = x.shape[-1]
    N = x.numel() // C if C else 0
    if N and C:
        g = forward_grid(N, C)
        _kernels(x).KERNELS[code.name].forward[g["grid"]](
            x, *(s.reshape(()) for s in scalars), weight.contiguous(),
            None if bias is None else bias.contiguous(), y, N, C, HAS_BIAS=bias is not None,
            BLOCK_R=g["BLOCK_R"], BLOCK_C=g["BLOCK_C"])
    return y


def backward(code, grad, x, scalars, weight, *, op: bool = True):
    """(grad_x, [grad of each scalar], grad_weight, grad_bias) by the form's two stages:
    grad_x in x's dtype, the parameters' gradients summed in float64 and stored in their
    dtypes (grad_bias in the weight's), written whole by the second stage (no fill, no cast
    after it)."""
    if op and _traced(x):
        gx, *gs, gw, gb = OPS[code.name].backward_op(grad, x, *scalars, weight)
        return gx, gs, gw, gb
    x, grad = x.contiguous(), grad.contiguous()
    C = x.shape[-1]
    N = x.numel() // C if C else 0
    grad_x = torch.empty_like(x)
    new = torch.empty if N and C else torch.zeros
    at = dict(device=x.device)
    sums = ([new((), dtype=s.dtype, **at) for s in scalars]
            + [new((C,), dtype=weight.dtype, **at) for _ in range(2)])
    if N and C:
        g = backward_grid(N, C)
        P, B = g["programs"], g["channel_blocks"]
        f32 = dict(dtype=torch.float32, device=x.device)
        partials = torch.empty((2, P, C), **f32)               # weight's, bias's
        scalar_partials = torch.empty((len(scalars), P, B), **f32)
        k = _kernels(x).KERNELS[code.name]
        k.backward[(P, B)](grad, x, *(s.reshape(()) for s in scalars), weight.contiguous(),
                           grad_x, partials, scalar_partials, N, C, g["rows_per_program"],
                           BLOCK_R=g["BLOCK_R"], BLOCK_C=g["BLOCK_C"])
        *gs, gw, gb = sums
        unused = [gw] * (2 - len(gs))                         # pointers N_SCALARS never reads
        k.sums[(B + 1,)](partials, scalar_partials, *gs, *unused, gw, gb, P, C, B,
                         N_SCALARS=k.scalars, BLOCK_C=g["BLOCK_C"], BLOCK=SUMS_BLOCK)
    *gs, gw, gb = sums
    return grad_x, gs, gw, gb


# -- the ops: what torch.compile and torch.export see ------------------------------------------

class FormOps:
    """One form's two custom ops, ``dynorm::{form}_forward`` and ``dynorm::{form}_backward``,
    in the functional's argument order (x, scalars..., weight, bias), each the launch
    above."""

    def __init__(self, code, scalars: tuple[str, ...]):
        form = code.name
        ts = "".join(f"Tensor {s}, " for s in scalars)
        outs = ", ".join(["Tensor grad_x", *(f"Tensor grad_{s}" for s in scalars),
                          "Tensor grad_weight", "Tensor grad_bias"])

        def forward_op(x, *args):
            *ss, weight, bias = args
            return forward(code, x, ss, weight, bias, op=False)

        def backward_op(grad, x, *args):
            *ss, weight = args
            gx, gs, gw, gb = backward(code, grad, x, ss, weight, op=False)
            return (gx, *gs, gw, gb)

        def forward_fake(x, *args):
            return torch.empty_like(x, memory_format=torch.contiguous_format)

        def backward_fake(grad, x, *args):
            *ss, weight = args
            C = x.shape[-1]
            return (torch.empty_like(x, memory_format=torch.contiguous_format),
                    *(x.new_empty((), dtype=s.dtype) for s in ss),
                    x.new_empty((C,), dtype=weight.dtype), x.new_empty((C,), dtype=weight.dtype))

        self.forward_op = torch.library.custom_op(
            f"dynorm::{form}_forward", forward_op, mutates_args=(),
            schema=f"(Tensor x, {ts}Tensor weight, Tensor? bias) -> Tensor")
        self.forward_op.register_fake(forward_fake)
        self.backward_op = torch.library.custom_op(
            f"dynorm::{form}_backward", backward_op, mutates_args=(),
            schema=f"(Tensor grad, Tensor x, {ts}Tensor weight) -> ({outs})")
        self.backward_op.register_fake(backward_fake)


def _traced(x: torch.Tensor) -> bool:
    """Whether a graph is being made of this call (torch.compile, torch.export, make_fx, a
    tensor subclass or a dispatch mode): then the op; else the kernels launch directly."""
    return (torch.compiler.is_compiling() or type(x) is not torch.Tensor
            or _current_dispatch_mode() is not None)


#: form -> its ops.
OPS = {name: FormOps(CODE[name], form.scalars) for name, form in FORMS.items()}
