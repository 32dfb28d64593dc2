"""One autograd.Function per generated form: it saves x (and the parameters) only,
recomputes in the backward, and applies the dtype policy once.

Policy: compute in float32 (float64 for float64 input) and return the input's dtype;
parameters may have another dtype (float32 parameters under bfloat16 autocast) and get
their gradients in their own dtype. x is clamped to the compute dtype's finite range
first, so +-inf saturates to the bound (and its gradient is 0) instead of giving NaN; a
NaN stays a NaN in its own element.

Fusion: on a CPU, each generated op is a pass over the tensor (at (4096, 1024) float32,
0.3 ms into reused memory, 1 to 2.7 ms into a new tensor), DyT's forward and backward are
about thirty of them, and fused they take 5 to 11 ms together. CPU inputs (float32, bfloat16, float16)
of at least ``FUSE_MIN`` elements therefore run the generated ``*_fused_*`` variants (the
same formulas with the kernels' rules; dtype policy and sums included) through
torch.compile (inductor), which fuses them into one loop forward and one backward. Smaller
inputs, float64, and calls inside a model that torch.compile is already tracing run the
op-by-op functions. Compilation happens on the first large call of each form and input
dtype (a few seconds). ``set_fusion("off")`` or DYNORM_FUSION=off turns it off; if
compiling fails (no C++ compiler, say), the op-by-op code runs and one warning says why.
"""
from __future__ import annotations

import types
import warnings

import torch

from ._switch import Switch
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


def _sum_rows(g: torch.Tensor, channels: int) -> torch.Tensor:
    """A per-element gradient of a (C,) parameter summed over everything but the channels."""
    return g.reshape(-1, channels).sum(0)


def _to_shape(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A summed gradient in the shape and dtype of its parameter (weight (C,) or 0-dim)."""
    return g.reshape(like.shape).to(like.dtype)


# -- fusion --------------------------------------------------------------------------------

#: "auto": fuse large CPU inputs; "off": never.
FUSION = Switch("fusion", ("auto", "off"), "DYNORM_FUSION", "auto")
#: CPU inputs with at least this many elements run fused (below, compiling does not pay).
FUSE_MIN = 1 << 16


def set_fusion(mode: str) -> str:
    """"auto" (fuse large CPU inputs) or "off", for every later call; returns the previous."""
    return FUSION.set(mode)


def get_fusion() -> str:
    return FUSION.value


def _fuses(x: torch.Tensor) -> bool:
    """float64 never fuses: the fused variants' tanh polynomial is sized for float32."""
    return (FUSION.value == "auto" and x.device.type == "cpu" and x.dtype != torch.float64
            and x.numel() >= FUSE_MIN and not torch.compiler.is_compiling())


def _own_code(fn, name: str):
    """A copy of fn with its own code object: torch.compile keeps its compiled variants (and
    its limit on their number) per code object, so each form and direction gets its own."""
    names = {"co_name": name}
    if hasattr(fn.__code__, "co_qualname"):  # Python 3.11+
        names["co_qualname"] = name
    code = fn.__code__.replace(**names)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


class _Fused:
    """fn compiled on first use. If the compiled call fails, the call runs ``unfused`` (same
    signature): if that fails too, the inputs were at fault and its error is raised alone;
    if it succeeds, the compiler was, and fusion is turned off with one warning naming the
    compiler's error."""

    def __init__(self, fn, name: str, unfused):
        self.fn, self.name, self.unfused, self.compiled = fn, name, unfused, None

    def __call__(self, *args):
        try:
            if self.compiled is None:
                self.compiled = torch.compile(_own_code(self.fn, self.name), dynamic=True)
            return self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - whatever the compiler raised: see below
            failure = e
        try:
            out = self.unfused(*args)
        except Exception as e:  # noqa: BLE001 - the inputs' own error, without the compiler's
            raise e from None
        FUSION.value = "off"
        first = str(failure).splitlines()[0] if str(failure) else ""
        warnings.warn(f"dynorm: fusion turned off, {self.name} did not compile "
                      f"({type(failure).__name__}: {first}); running the generated code op by "
                      "op", RuntimeWarning, stacklevel=3)
        return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous (rows, C) tensor without autograd history: what the compiled
    functions see is always 2-D and dense, so inputs of any rank, stride or requires_grad
    share one compiled variant per dtype."""
    return t.detach().reshape(-1, t.shape[-1]).contiguous()


#: Op by op, inputs larger than this many elements go through in blocks of rows of about
#: this size: each op's temporaries are then 1 MiB (float32), reused and in cache, instead
#: of a new 16 MiB tensor per op at (4096, 1024), whose first touch costs more than the op.
BLOCK = 1 << 18


def _row_blocks(x: torch.Tensor):
    """(x as (rows, C), slices of rows) when x is worth splitting, else (x, None)."""
    if x.dim() == 0 or x.numel() <= BLOCK or torch.compiler.is_compiling():
        return x, None
    x2 = x.reshape(-1, x.shape[-1])
    step = max(1, BLOCK // x2.shape[1])
    return x2, [slice(i, i + step) for i in range(0, x2.shape[0], step)]


def _blocked_forward(run, x, ps, w, b):
    x2, blocks = _row_blocks(x)
    if blocks is None:
        return run(x, ps, w, b)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    for rows in blocks:
        y[rows] = run(x2[rows], ps, w, b)
    return y.view(x.shape)


def _blocked_backward(run, grad, x, ps, w):
    """run block by block; grad_x assembled, the summed gradients added up over blocks."""
    x2, blocks = _row_blocks(x)
    if blocks is None:
        return run(grad, x, ps, w)
    g2 = grad.reshape(x2.shape)
    gx = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    sums = None
    for rows in blocks:
        gxb, gs, gw, gb = run(g2[rows], x2[rows], ps, w)
        gx[rows] = gxb
        part = [*gs, gw, gb]
        sums = part if sums is None else [a + p for a, p in zip(sums, part)]
    *gs, gw, gb = sums
    return gx.view(x.shape), gs, gw, gb


#: form name -> (fused forward, fused backward).
FUSED: dict[str, tuple[_Fused, _Fused]] = {}


def _runners(forward, forward_nobias, backward):
    """The forward and backward work around generated functions: dtype policy and sums.

    run_forward(x, ps, w, b) -> y in x's dtype (ps, w, b in the compute dtype, b may be
    None); run_backward(grad, x, ps, w) -> (grad_x in x's dtype, [the scalars' gradients],
    grad_weight, grad_bias), the last three summed, in the compute dtype."""

    def run_forward(x, ps, w, b):
        xc = _prepare(x)
        y = forward_nobias(xc, *ps, w) if b is None else forward(xc, *ps, w, b)
        return y.to(x.dtype)

    def run_backward(grad, x, ps, w):
        xc = _prepare(x)
        gc = grad.to(xc.dtype)
        gx, *gscalars, gw = backward(gc, xc, *ps, w)
        return (gx.to(x.dtype), [g.sum() for g in gscalars], _sum_rows(gw, w.shape[-1]),
                _sum_rows(gc, w.shape[-1]))

    return run_forward, run_backward


def _form_function(name: str) -> type[torch.autograd.Function]:
    g = {what: getattr(G, f"{name}_{what}") for what in
         ("forward", "forward_nobias", "backward", "fused_forward", "fused_backward")}
    run_forward, run_backward = _runners(g["forward"], g["forward_nobias"], g["backward"])
    # The fused variants are printed with a bias only: a call without one passes zeros.
    fused_forward, fused_backward = _runners(g["fused_forward"], None, g["fused_backward"])
    # Looked up by name only where a call fuses: torch.compile, tracing this Function inside
    # a model, cannot wrap a _Fused held in a closure.
    FUSED[name] = (_Fused(fused_forward, f"{name}_fused_forward", run_forward),
                   _Fused(fused_backward, f"{name}_fused_backward", run_backward))

    def forward_(x, weight, bias, *scalars):
        ct = compute_dtype(x.dtype)
        ps = [p.detach().to(ct) for p in scalars]
        w = weight.detach().to(ct)
        b = None if bias is None else bias.detach().to(ct)
        if _fuses(x):  # one compiled variant per dtype: no bias is a bias of zeros
            b = torch.zeros_like(w) if b is None else b
            return FUSED[name][0](_rows(x), ps, w, b).view(x.shape)
        return _blocked_forward(run_forward, x, ps, w, b)

    def setup_context(ctx, inputs, output):
        x, weight, bias, *scalars = inputs
        ctx.save_for_backward(x, weight, *scalars)
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward_(ctx, grad):
        x, weight, *scalars = ctx.saved_tensors
        ct = compute_dtype(x.dtype)
        ps = [p.detach().to(ct) for p in scalars]
        w = weight.detach().to(ct)
        if _fuses(x):
            gx, gscalars, gw, gb = FUSED[name][1](_rows(grad), _rows(x), ps, w)
            gx = gx.view(x.shape)
        else:
            gx, gscalars, gw, gb = _blocked_backward(run_backward, grad, x, ps, w)
        need = ctx.needs_input_grad
        out_x = gx if need[0] else None
        out_w = _to_shape(gw, weight) if need[1] else None
        out_b = (_to_shape(gb, weight).to(ctx.bias_dtype)
                 if ctx.bias_dtype is not None and need[2] else None)
        out_s = [_to_shape(g, p) if need[3 + i] else None
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
