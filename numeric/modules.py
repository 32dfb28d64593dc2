"""The layers people drop into a model, thin shells around numeric.functional.

Each acts on the last dimension (size C = normalized_shape) and keeps the input dtype.
Parameter names follow torch: ``weight`` (C,), ``bias`` (C,) or None; the scalars
(``alpha``, ``log_beta``, ``shift``) are 0-dim, so a bfloat16 input stays bfloat16.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from . import functional as F

#: The LLaMA recipe of the DyT paper: width -> (alpha_0 attention blocks, alpha_0 other).
LLAMA_ALPHA = {1024: (1.0, 1.0), 2048: (1.0, 0.5), 4096: (0.8, 0.2), 5120: (0.6, 0.15),
               8192: (0.2, 0.05)}
_BLOCKS = {"attention": 0, "other": 1}


def llama_alpha_init(width: int, block: str = "attention") -> float:
    """alpha_0 of the DyT paper's LLaMA recipe for a model width and block kind.

    Widths in the paper's table give its values; others interpolate linearly in
    log2(width) between the nearest listed widths and clamp outside 1024..8192.
    """
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
    width = check_size(width, "width")
    col = _BLOCKS[block]
    ws = sorted(LLAMA_ALPHA)
    if width <= ws[0] or width >= ws[-1]:
        return LLAMA_ALPHA[ws[0] if width <= ws[0] else ws[-1]][col]
    hi = next(w for w in ws if w >= width)
    lo = ws[ws.index(hi) - 1] if hi != width else hi
    if lo == hi:
        return LLAMA_ALPHA[hi][col]
    t = (math.log2(width) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return (1 - t) * LLAMA_ALPHA[lo][col] + t * LLAMA_ALPHA[hi][col]


def check_size(n, name: str) -> int:
    if isinstance(n, (tuple, list, torch.Size)):
        if len(n) != 1:
            raise ValueError(f"{name} must be one size (the last dimension), got {tuple(n)}")
        n = n[0]
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return n


def _real(v, name: str) -> float:
    """v as a float: a real number (not a bool, a tensor, a list or None)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def _positive(v, name: str) -> float:
    v = _real(v, name)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {v!r}")
    return v


def _finite(v, name: str) -> float:
    v = _real(v, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def _param_dtype(dtype) -> torch.dtype:
    """The parameters' dtype: a floating-point torch.dtype (None: torch's default)."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _in_range(v: float, name: str, dtype: torch.dtype) -> float:
    """v if dtype holds it: 0, or a magnitude from finfo.tiny to finfo.max (neither an
    overflow to inf nor a silent underflow to 0 or a subnormal)."""
    fi = torch.finfo(dtype)
    if v != 0 and not fi.tiny <= abs(v) <= fi.max:
        raise ValueError(f"{name}={v!r} is out of the range of {dtype} parameters "
                         f"(magnitudes {fi.tiny:.4g} to {fi.max:.4g}, or 0)")
    return v


def _sample_rms2(sample: torch.Tensor, centered: bool) -> float:
    """Mean over tokens of the per-token mean square over channels (of x - mean if centered)."""
    x = sample.detach().to(torch.float64)
    if centered:
        x = x - x.mean(-1, keepdim=True)
    r2 = (x * x).mean(-1).mean().item()
    return _positive(r2, "sample mean square")


class _Elementwise(nn.Module):
    """Shared shell: 0-dim scalars, weight, bias; reset, dtype/device, state-dict checks.

    ``scalars`` maps each 0-dim parameter's name to its initial value, in order.
    """

    def __init__(self, normalized_shape, scalars: dict[str, float], weight_init: float,
                 bias: bool, device, dtype):
        super().__init__()
        self.normalized_shape = (check_size(normalized_shape, "normalized_shape"),)
        self._inits = dict(scalars, weight=_finite(weight_init, "weight_init"))
        dtype = _param_dtype(dtype)
        for name, value in self._inits.items():
            if name != "log_beta":                 # beta_init: checked by _log_beta_init
                _in_range(value, f"{name}_init", dtype)
        kw = {"device": device, "dtype": dtype}
        for name in scalars:
            setattr(self, name, nn.Parameter(torch.empty((), **kw)))
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **kw))
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for name, value in self._inits.items():
                getattr(self, name).fill_(value)
            if self.bias is not None:
                self.bias.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(f"input's last dimension must be {self.normalized_shape[0]}, "
                             f"got shape {tuple(x.shape)}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, p in self.named_parameters(recurse=False):
            t = state_dict.get(prefix + name)
            if t is not None and p.dim() == 0 and tuple(t.shape) == (1,):
                state_dict[prefix + name] = t = t.reshape(())   # the official DyT's alpha (1,)
            if t is not None and tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"state dict: {prefix + name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(p.shape)}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shown = {("beta" if k == "log_beta" else k): (math.exp(v) if k == "log_beta" else v)
                 for k, v in self._inits.items()}
        inits = ", ".join(f"{k}_init={v:.6g}" for k, v in shown.items())
        return f"{self.normalized_shape[0]}, {inits}, bias={self.bias is not None}"


class DyT(_Elementwise):
    """Dynamic Tanh (Zhu et al. 2025): y = weight * tanh(alpha * x) + bias.

    Derived from RMSNorm by keeping the Jacobian's diagonal and freezing the RMS sigma:
    alpha = 1/(sqrt(C) sigma), gamma = sqrt(C). Defaults are the paper's recipe
    (alpha 0.5, weight 1, bias 0); ``llama_alpha_init`` gives its LLaMA width rule.

    Shapes: x (..., C) -> (..., C); alpha (), weight (C,), bias (C,) or None. With
    ``channels_last=False`` the channels are dim 1, as in a convolutional model:
    x (N, C, ...) -> (N, C, ...).
    """

    def __init__(self, normalized_shape, *, alpha_init: float = 0.5, weight_init: float = 1.0,
                 bias: bool = True, channels_last: bool = True, device=None, dtype=None):
        super().__init__(normalized_shape, {"alpha": _positive(alpha_init, "alpha_init")},
                         weight_init, bias, device, dtype)
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
        self.channels_last = channels_last

    @classmethod
    def from_sample(cls, sample: torch.Tensor, **kwargs) -> "DyT":
        """Init from activations (..., C): alpha = 1/(sqrt(C) r0), weight = sqrt(C), with r0
        their RMS; then DyT matches RMSNorm to first order on such inputs."""
        c = sample.shape[-1]
        r0 = math.sqrt(_sample_rms2(sample, centered=False))
        return cls(c, alpha_init=1 / (math.sqrt(c) * r0), weight_init=math.sqrt(c), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return self._channels_first(x)
        self._check_input(x)
        return F.dyt(x, self.alpha, self.weight, self.bias)

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, ...) -> (N, C, ...): the channels moved last and back."""
        if x.dim() < 2 or x.shape[1] != self.normalized_shape[0]:
            raise ValueError(f"input must be (N, {self.normalized_shape[0]}, ...) with "
                             f"channels_last=False, got shape {tuple(x.shape)}")
        x = x.movedim(1, -1)                                # (N, ..., C)
        self._check_input(x)
        return F.dyt(x, self.alpha, self.weight, self.bias).movedim(-1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.channels_last else ", channels_last=False")


def log_beta_bound(dtype: torch.dtype) -> float:
    """B such that beta = exp(log_beta) is held in [exp(-B), exp(B)] for parameters of
    dtype: B = log(finfo.max) / 2 of beta's compute dtype (float32, or float64 for float64
    parameters), i.e. beta from 5.4e-20 to 1.8e19 in float32 (7.5e-155 to 1.3e154 in
    float64). See ``_effective_beta``."""
    return math.log(torch.finfo(F.compute_dtype(dtype)).max) / 2


def _log_beta_init(beta_init, default: float, dtype) -> float:
    """log(beta_init), beta_init checked against the range ``_effective_beta`` holds."""
    beta = _positive(default if beta_init is None else beta_init, "beta_init")
    dtype = _param_dtype(dtype)
    bound = log_beta_bound(dtype)
    if abs(math.log(beta)) > bound:
        raise ValueError(f"beta_init={beta!r} is out of the range of beta for {dtype} "
                         f"parameters ({math.exp(-bound):.4g} to {math.exp(bound):.4g})")
    return math.log(beta)


def _effective_beta(log_beta: torch.Tensor) -> torch.Tensor:
    """beta = exp(log_beta), computed in float32 (float64 for a float64 log_beta) whatever
    the parameter's dtype, with log_beta held in [-B, B] (``log_beta_bound``) by a
    straight-through clamp: the value is the clamped one, the gradient that of exp at it,
    d beta / d log_beta = beta, inside the range and beyond it alike.

    Why so: exp in float16 overflows at log_beta = 11.1 (beta = 65504), and the clamp of an
    overflowed or underflowed exp has a zero gradient (or inf * 0 = NaN): a log_beta pushed
    out of range by one large step would stay there, or turn NaN. In float32, exp neither
    overflows nor underflows for any log_beta in range, whatever the parameter's dtype; the
    straight-through gradient is never zeroed by the clamp (a soft bound's would vanish far
    out), so an optimizer that overshot sees the slope of the loss at the bound and can come
    back. B = log(finfo.max)/2 keeps beta, beta + x^2 for |x| up to sqrt(finfo.max), and
    dy/dbeta ~ x / beta^(3/2) in range, so the gradient of log_beta, beta * dL/dbeta, is
    neither inf nor an underflowed 0 for inputs of ordinary size (at beta = finfo.max,
    dy/dbeta ~ 1e-58 x underflows to 0 in float32 for every |x| below 1e13). A larger beta
    would only matter for inputs beyond finfo.max^(1/4) (4e9 in float32)."""
    ct = F.compute_dtype(log_beta.dtype)
    bound = log_beta_bound(log_beta.dtype)
    lb = log_beta.to(ct)
    held = lb.detach().clamp(-bound, bound)           # a NaN stays NaN, +-inf -> +-B
    return torch.exp(held + torch.nan_to_num(lb - lb.detach(), nan=0.0))  # value: held


class DyISRU(_Elementwise):
    """DyISRU (Stollenwerk 2025): y = weight * x / sqrt(beta + x^2) + bias.

    RMSNorm's channel i is exactly sqrt(C) x / sqrt(beta + x^2) with beta = S + C eps
    (S the other channels' sum of squares); promoting beta to one parameter gives this layer.
    Defaults from the derivation: weight = sqrt(C), beta = C (RMSNorm on unit-RMS inputs).
    beta is held as log_beta and read through ``beta``, positive and finite under any update:
    exp(log_beta) in float32 (float64 for float64 parameters), from 5.4e-20 to 1.8e19 in
    float32, with a gradient that the bounds never zero (``_effective_beta``).

    Shapes: x (..., C) -> (..., C); log_beta (), weight (C,), bias (C,) or None.
    """

    def __init__(self, normalized_shape, *, beta_init: float | None = None,
                 weight_init: float | None = None, bias: bool = True, device=None, dtype=None):
        c = check_size(normalized_shape, "normalized_shape")
        super().__init__(c, {"log_beta": _log_beta_init(beta_init, c, dtype)},
                         math.sqrt(c) if weight_init is None else weight_init,
                         bias, device, dtype)

    @property
    def beta(self) -> torch.Tensor:
        """The effective beta (0-dim, float32 or float64): exp(log_beta), held in range
        (``_effective_beta``)."""
        return _effective_beta(self.log_beta)

    @classmethod
    def from_sample(cls, sample: torch.Tensor, **kwargs) -> "DyISRU":
        """Init from activations (..., C): beta = C r0^2 with r0 their RMS, weight = sqrt(C);
        then DyISRU reproduces RMSNorm on inputs whose RMS is r0."""
        c = sample.shape[-1]
        return cls(c, beta_init=c * _sample_rms2(sample, centered=False), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return F.dyisru(x, self.beta, self.weight, self.bias)


class _AlphaShift(_Elementwise):
    """A layer with a positive scale ``alpha`` and a ``shift`` (0-dim each): DyTLN, Derf."""

    def __init__(self, normalized_shape, *, alpha_init: float = 0.5, shift_init: float = 0.0,
                 weight_init: float = 1.0, bias: bool = True, device=None, dtype=None):
        super().__init__(normalized_shape, {"alpha": _positive(alpha_init, "alpha_init"),
                                            "shift": _finite(shift_init, "shift_init")},
                         weight_init, bias, device, dtype)


class DyTLN(_AlphaShift):
    """DyT's LayerNorm form: y = weight * tanh(alpha * (x - shift)) + bias.

    From LayerNorm with mu and s frozen: alpha = sqrt(C-1)/(C s), gamma = sqrt(C-1), and the
    input shift is the mean. Defaults as DyT's, shift 0.

    Shapes: x (..., C) -> (..., C); alpha (), shift (), weight (C,), bias (C,) or None.
    """


    @classmethod
    def from_sample(cls, sample: torch.Tensor, **kwargs) -> "DyTLN":
        """alpha = sqrt(C-1)/(C s0), weight = sqrt(C-1), shift = the sample's mean."""
        c = _at_least_2(sample.shape[-1])
        s0 = math.sqrt(_sample_rms2(sample, centered=True))
        return cls(c, alpha_init=math.sqrt(c - 1) / (c * s0), weight_init=math.sqrt(c - 1),
                   shift_init=sample.detach().double().mean().item(), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return F.dyt_ln(x, self.alpha, self.shift, self.weight, self.bias)


def _at_least_2(c) -> int:
    c = check_size(c, "normalized_shape")
    if c < 2:
        raise ValueError(f"normalized_shape must be at least 2 for a LayerNorm form, got {c}")
    return c


class DyISRULN(_Elementwise):
    """DyISRU's LayerNorm form: y = weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias.

    LayerNorm's channel i is exactly sqrt(C-1) (x - m) / sqrt(beta + (x - m)^2) with m the
    other channels' mean and beta = C (Q + C eps)/(C - 1). Defaults: weight = sqrt(C-1),
    beta = C (LayerNorm on unit-variance inputs), shift 0.

    Shapes: x (..., C) -> (..., C); log_beta (), shift (), weight (C,), bias (C,) or None.
    """

    def __init__(self, normalized_shape, *, beta_init: float | None = None,
                 shift_init: float = 0.0, weight_init: float | None = None, bias: bool = True,
                 device=None, dtype=None):
        c = _at_least_2(normalized_shape)
        super().__init__(c, {"log_beta": _log_beta_init(beta_init, c, dtype),
                             "shift": _finite(shift_init, "shift_init")},
                         math.sqrt(c - 1) if weight_init is None else weight_init,
                         bias, device, dtype)

    beta = DyISRU.beta

    @classmethod
    def from_sample(cls, sample: torch.Tensor, **kwargs) -> "DyISRULN":
        """beta = C s0^2 (s0 the sample's standard deviation per token), shift = its mean."""
        c = _at_least_2(sample.shape[-1])
        return cls(c, beta_init=c * _sample_rms2(sample, centered=True),
                   shift_init=sample.detach().double().mean().item(), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return F.dyisru_ln(x, self.beta, self.shift, self.weight, self.bias)


class Derf(_AlphaShift):
    """Derf (Chen et al. 2025): y = weight * erf(alpha * x + shift) + bias.

    Not derived from a norm; its inner shift is the LayerNorm forms' input shift
    (shift = -alpha * mean). Defaults are the paper's: alpha 0.5, shift 0, weight 1, bias 0.

    Shapes: x (..., C) -> (..., C); alpha (), shift (), weight (C,), bias (C,) or None.
    """


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return F.derf(x, self.alpha, self.shift, self.weight, self.bias)


#: form name (numeric/generated/forms.py) -> its Module: what the converter can make.
LAYERS = {"dyt": DyT, "dyisru": DyISRU, "dyt_ln": DyTLN, "dyisru_ln": DyISRULN, "derf": Derf}
