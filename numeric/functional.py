"""Functional forms of the layers: y = weight * f(x) + bias over the last dimension.

    dyt(x, alpha, weight, bias)              weight * tanh(alpha x) + bias
    dyisru(x, beta, weight, bias)            weight * x / sqrt(beta + x^2) + bias
    dyt_ln(x, alpha, shift, weight, bias)    weight * tanh(alpha (x - shift)) + bias
    dyisru_ln(x, beta, shift, weight, bias)  weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias
    derf(x, alpha, shift, weight, bias)      weight * erf(alpha x + shift) + bias

x: (..., C), a floating-point tensor; alpha, beta, shift: numbers or 0-dim tensors; weight,
bias: (C,) or None (bias None means 0). Each computes in float32 (float64 for float64 input)
and returns x's dtype, whatever the parameters' dtype (float32 parameters under mixed
precision are fine); every parameter's gradient comes back in its own dtype.

Each call that autograd records goes to ``<Form>Function`` (numeric/generated/functions.py),
which runs the backend chosen for x (numeric/backends.py); one it does not record (no_grad,
inference_mode, no input that requires grad) runs the backend directly. The backends: the
Triton kernels on CUDA, the fused variants through torch.compile on a CPU input of at least
65,536 elements, the generated code op by op otherwise. ``set_backend("auto" | "triton" |
"fused" | "torch")`` or DYNORM_BACKEND chooses.
Every order of autograd, forward mode and torch.func's transforms work on every backend.
"""
from __future__ import annotations

import numbers

import torch
import torch.autograd.forward_ad as fwAD

from torch._functorch.utils import unwrap_dead_wrappers

from ._autograd import EAGER, EAGER_NORMS, FUNCTIONS, NORMS, TRACED, TRACED_NORMS
from .backends import RUN, choose, compute_dtype, get_backend, set_backend  # noqa: F401
from .generated.forms import FORMS
from .generated.torch_forms import CODE

__all__ = ["dyt", "dyisru", "dyt_ln", "dyisru_ln", "derf", "rms_norm", "layer_norm",
           "set_backend", "get_backend", "compute_dtype"]

#: Scalars that must be positive (the formulas divide by them or take their root).
POSITIVE = {"beta"}


def _input(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the channels), got a 0-dim tensor")
    return x


def _channels(t, what: str, x: torch.Tensor, optional: bool = False):
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape ({x.shape[-1]},), "
                        f"got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != (x.shape[-1],):
        raise ValueError(f"{what} must have shape ({x.shape[-1]},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{what} is on {t.device}, x on {x.device}")
    return t


def _value(v: float, what: str) -> None:
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, got {v!r}")
    if what in POSITIVE and v <= 0:
        raise ValueError(f"{what} must be positive, got {v!r}")


def _readable(v: torch.Tensor) -> bool:
    """A tensor whose value can be read here at no cost: on the CPU (no device sync), not
    traced by torch.compile or torch.export, not wrapped by a torch.func transform."""
    return (v.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(v))


def _scalar(v, what: str, x: torch.Tensor) -> torch.Tensor:
    """A scalar parameter as a 0-dim tensor on x's device; numbers are checked here, and so
    are CPU tensors' values (a CUDA tensor's value is not read: that would wait for the
    device at every call)."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0:
            raise ValueError(f"{what} must be a number or a 0-dim tensor, got shape "
                             f"{tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{what} is on {v.device}, x on {x.device}")
        if _readable(v):
            _value(v.item(), what)
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a number or a 0-dim tensor, got {type(v).__name__}")
    v = float(v)
    _value(v, what)
    return torch.tensor(v, dtype=compute_dtype(x.dtype), device=x.device)


def _differentiated(x, weight, bias, ss) -> bool:
    """Whether autograd records this call: grad mode on and an input that requires grad, or
    forward-mode AD (a dual_level) active."""
    if fwAD._current_level >= 0:
        return True
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or any(s.requires_grad for s in ss))


def _call(name: str, x, scalars, weight, bias):
    """(the function to call, its arguments) for y = weight * f(x; scalars) + bias, every
    input checked: under torch.compile the Function it can trace, under torch.func's
    transforms the Function's own apply, where autograd records the call the Function's
    eager apply (numeric._autograd.eager_apply), else (no_grad, inference, nothing that
    requires grad) the backend's forward itself."""
    x = _input(x)
    weight = _channels(weight, "weight", x)
    bias = _channels(bias, "bias", x, optional=True)
    ss = [_scalar(v, p, x) for v, p in zip(scalars, FORMS[name].scalars)]
    if torch.compiler.is_compiling():
        return TRACED[name].apply, (x, *ss, weight, bias)
    if torch._C._are_functorch_transforms_active():
        return FUNCTIONS[name].apply, (x, *ss, weight, bias)
    if not _differentiated(x, weight, bias, ss):
        return RUN[choose(x)][0], (CODE[name], x, ss, weight, bias)
    return EAGER[name], unwrap_dead_wrappers((x, *ss, weight, bias))


def dyt(x, alpha, weight, bias=None):
    """DyT (Zhu et al. 2025): weight * tanh(alpha * x) + bias."""
    fn, args = _call("dyt", x, (alpha,), weight, bias)
    return fn(*args)


def dyisru(x, beta, weight, bias=None):
    """DyISRU (Stollenwerk 2025): weight * x / sqrt(beta + x^2) + bias."""
    fn, args = _call("dyisru", x, (beta,), weight, bias)
    return fn(*args)


def dyt_ln(x, alpha, shift, weight, bias=None):
    """DyT's LayerNorm form: weight * tanh(alpha * (x - shift)) + bias."""
    fn, args = _call("dyt_ln", x, (alpha, shift), weight, bias)
    return fn(*args)


def dyisru_ln(x, beta, shift, weight, bias=None):
    """DyISRU's LayerNorm form: weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias."""
    fn, args = _call("dyisru_ln", x, (beta, shift), weight, bias)
    return fn(*args)


def derf(x, alpha, shift, weight, bias=None):
    """Derf (Chen et al. 2025): weight * erf(alpha * x + shift) + bias."""
    fn, args = _call("derf", x, (alpha, shift), weight, bias)
    return fn(*args)


def check_eps(eps, allow_none: bool = False) -> float | None:
    """eps as a float: a real number, finite and >= 0 (None kept where torch accepts it)."""
    if eps is None and allow_none:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number{' or None' if allow_none else ''}, "
                        f"got {type(eps).__name__}")
    eps = float(eps)
    if eps != eps or eps in (float("inf"), float("-inf")) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return eps


def _norm(name: str, x, weight, bias, eps):
    """The norm (generated forward and VJP), then the affine part, in the compute dtype.
    eps None: the compute dtype's machine epsilon (torch's RMSNorm default)."""
    x = _input(x)
    if x.shape[-1] == 0:
        raise ValueError(f"x must have at least one channel (last dimension), got shape "
                         f"{tuple(x.shape)}")
    weight = _channels(weight, "weight", x, optional=True)
    bias = _channels(bias, "bias", x, optional=True)
    ct = compute_dtype(x.dtype)
    eps = check_eps(eps, allow_none=name == "rmsnorm")
    eps = torch.finfo(ct).eps if eps is None else eps
    if torch.compiler.is_compiling():
        y = TRACED_NORMS[name].apply(x.to(ct), eps)
    elif torch._C._are_functorch_transforms_active():
        y = NORMS[name].apply(x.to(ct), eps)
    else:
        y = EAGER_NORMS[name](*unwrap_dead_wrappers((x.to(ct), eps)))
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(x.dtype)


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last dimension, forward and backward from the derived Jacobian.
    eps: finite and >= 0, or None for the compute dtype's machine epsilon (as torch's)."""
    return _norm("rmsnorm", x, weight, None, eps)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dimension, forward and backward from the derived Jacobian.
    eps: finite and >= 0."""
    return _norm("layernorm", x, weight, bias, eps)
