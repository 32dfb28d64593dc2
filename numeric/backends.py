"""Where a layer form's forward and backward run: one switch, three backends.

Every backend takes the same arguments and applies the same dtype policy: compute in float32
(float64 for float64 input), return x's dtype; x is clamped to the compute dtype's finite
range first, so +-inf saturates to the bound (gradient 0) and a NaN stays in its element.

    forward(code, x, scalars, weight, bias) -> y                       (x's dtype)
    backward(code, grad, x, scalars, weight) -> (grad_x, [grad of each scalar],
                                                 grad_weight, grad_bias)

``code`` is the form's row of the generated table (numeric/generated/torch_forms.py, ``CODE``).
grad_x is in x's dtype; the parameters' gradients are summed over every dimension but the
channels: the scalars' in float64, the weight's and bias's over the rows as eager float32
autograd sums them (torch's float32 sum; float64 across the row blocks of a large input),
at least as accurate as eager float32 (the caller casts each to its parameter's dtype).
Scalars and weight arrive in their own dtypes (float32 parameters under bfloat16
autocast, say).

- ``"torch"``: the generated PyTorch code op by op (numeric/generated/torch_forms.py) through
  ``torch_forward`` and ``torch_backward`` (numeric/generated/shell.py, printed from
  derive/shell.py with the dtype policy); on a CPU, inputs of more than ``BLOCK_ELEMENTS``
  go through in blocks of rows, whose temporaries stay in cache.
- ``"fused"``: the generated ``*_fused_*`` variants (dtype policy and sums printed in)
  through torch.compile (inductor): one loop forward; one backward loop computes grad_x,
  the scalars' sums and the weight's term, which torch sums over the rows. Compiled on the
  first call of each form and dtype; if compiling fails, the call runs op by op and one
  warning says why.
- ``"triton"``: the generated Triton kernels (numeric/triton_backend.py), on CUDA; on a CPU only
  through Triton's interpreter (TRITON_INTERPRET=1).

``choose(x)`` picks one per call. Under ``"auto"`` (the default; ``set_backend`` or the
environment variable DYNORM_BACKEND): Triton for CUDA tensors, fused for CPU inputs of at
least ``FUSE_MIN`` elements, op by op otherwise. float64 and calls under torch.func's
transforms (vmap) always run op by op; so do CPU calls inside a model that torch.compile is
tracing (it fuses them itself). A forced backend that cannot run a call raises.
"""
from __future__ import annotations

import importlib.util
import types
import warnings
from functools import cache

import torch

from . import triton_backend
from ._switch import Switch
from .generated.shell import (  # noqa: F401 - BLOCK_ELEMENTS, compute_dtype: numeric's API
    BLOCK_ELEMENTS, cast, compute_dtype, in_compute, torch_backward, torch_forward)

BACKEND = Switch("backend", ("auto", "triton", "fused", "torch"), "DYNORM_BACKEND", "auto")
#: CPU inputs with at least this many elements run fused under "auto" (below, a compiled
#: call's overhead is more than it saves).
FUSE_MIN = 1 << 16


def set_backend(name: str) -> str:
    """"auto", "triton", "fused" or "torch" for every later call; returns the previous."""
    return BACKEND.set(name)


def get_backend() -> str:
    return BACKEND.value


@cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _transformed(x: torch.Tensor) -> bool:
    """Inside torch.func.vmap (or another functorch transform that wraps x)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def choose(x: torch.Tensor) -> str:
    """The backend that runs a call with input x: "torch", "fused" or "triton"."""
    want = BACKEND.value
    if want == "torch" or x.dtype == torch.float64:
        return "torch"
    if torch.compiler.is_compiling():   # it fuses CPU code itself; Triton stays one op
        if want == "triton":
            triton_backend.check_device(x)
            return "triton"
        return "triton" if want == "auto" and x.device.type == "cuda" else "torch"
    if _transformed(x):
        return "torch"
    if want == "triton" or (want == "auto" and x.device.type == "cuda" and _triton_installed()):
        triton_backend.check_device(x)
        return "triton"
    if want == "fused":
        if x.device.type != "cpu":
            raise RuntimeError(f"backend 'fused' runs CPU tensors only, got a {x.device.type} "
                               "tensor; use set_backend('auto')")
        return "fused"
    if want == "auto" and x.device.type == "cpu" and x.numel() >= FUSE_MIN:
        return "fused"
    return "torch"


# -- fused (torch.compile) ------------------------------------------------------------------

def _own_code(fn, name: str):
    """A copy of fn with its own code object: torch.compile keeps its compiled variants (and
    its limit on their number) per code object, so each form and direction gets its own."""
    names = {"co_name": name}
    if hasattr(fn.__code__, "co_qualname"):  # Python 3.11+
        names["co_qualname"] = name
    code = fn.__code__.replace(**names)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


@cache
def _compiled(fn):
    """The fused function, compiled with the number of rows marked dynamic (``_rows``) and C
    static until a second C is seen (torch.compile's automatic dynamic shapes). With every
    size dynamic (dynamic=True, or C marked too), inductor's CPU code for DyISRU's forward
    came out on one thread, 3.3 ms at (4096, 1024) float32 against 1.7 ms this way, and
    DyT-LN's bfloat16 forward took 10.0 ms against 4.5."""
    return torch.compile(_own_code(fn, fn.__name__), dynamic=None)


def _dynamic_rows(t: torch.Tensor) -> torch.Tensor:
    """t with its first dimension marked dynamic for torch.compile (no error at size 1)."""
    torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous (rows, C) tensor, its rows marked dynamic: the compiled functions
    always see 2-D dense inputs, so inputs of any rank, stride or number of rows share one
    compiled variant per dtype, grad mode and C. Detached after the reshape, so that it is
    not a view: torch.compile guards a view on its base and compiles it otherwise (DyT-LN's
    bfloat16 forward: 9.8 ms with a view, 4.2 ms without)."""
    return _dynamic_rows(t.reshape(-1, t.shape[-1]).contiguous().detach())


#: The fused backward sums over blocks of at most this many rows, then over the blocks
#: (see SUM_ROWS in derive/codegen.py): 2.6x faster than one sum down every column.
SUM_BLOCK = 64


def _row_blocks(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous (blocks, R, C) tensor, R the largest power of two up to SUM_BLOCK
    that divides the number of rows (R = 1 for an odd number: correct, only slower)."""
    t = _rows(t)
    rows = t.shape[0]
    r = SUM_BLOCK
    while rows % r:
        r //= 2
    return _dynamic_rows(t.view(-1, r, t.shape[-1]).detach())


def _unfused(failure: Exception, code, run, *args):
    """The op-by-op call after a compiled one failed: if it fails too, the inputs were at
    fault and its own error is raised; if not, the compiler was, and fusion is turned off
    with one warning naming the compiler's error."""
    try:
        out = run(code, *args)
    except Exception as e:  # noqa: BLE001 - the inputs' own error, without the compiler's
        raise e from None
    first = str(failure).splitlines()[0] if str(failure) else ""
    _FUSION_BROKEN.append(f"{type(failure).__name__}: {first}")
    warnings.warn(f"dynorm: fusion turned off, {code.name} did not compile ({_FUSION_BROKEN[-1]}); "
                  "running the generated code op by op", RuntimeWarning, stacklevel=4)
    return out


#: Set when compiling failed once: later calls run op by op without trying again.
_FUSION_BROKEN: list[str] = []


def fused_forward(code, x, scalars, weight, bias):
    if _FUSION_BROKEN:
        return torch_forward(code, x, scalars, weight, bias)
    *ps, w = in_compute(torch.float32, (*scalars, weight))
    b = torch.zeros_like(w) if bias is None else bias.detach().to(torch.float32)
    try:
        return _compiled(code.fused_forward)(_rows(x), *ps, w, b).view(x.shape)
    except Exception as e:  # noqa: BLE001 - whatever the compiler raised: see _unfused
        return _unfused(e, code, torch_forward, x, scalars, weight, bias)


def fused_backward(code, grad, x, scalars, weight):
    if _FUSION_BROKEN:
        return torch_backward(code, grad, x, scalars, weight)
    *ps, w = in_compute(torch.float32, (*scalars, weight))
    try:
        gx, *gs, tw, gb = _compiled(code.fused_backward)(_row_blocks(grad), _row_blocks(x), *ps, w)
    except Exception as e:  # noqa: BLE001 - whatever the compiler raised: see _unfused
        return _unfused(e, code, torch_backward, grad, x, scalars, weight)
    # the weight's term per element (float32): torch's pairwise sum over the rows
    return gx.view(x.shape), gs, tw.view(-1, tw.shape[-1]).sum(0), gb


# -- the table ------------------------------------------------------------------------------

#: backend -> (forward, backward); the Triton backend's are numeric/triton_backend.py's launches.
RUN = {"torch": (torch_forward, torch_backward),
       "fused": (fused_forward, fused_backward),
       "triton": (triton_backend.forward, triton_backend.backward)}
