"""The one table of tolerances, keyed by dtype, and the one comparison helper.

An element passes when |got - ref| <= atol + rtol * |ref| + ctol * scale, where ``scale``
is the size of the terms that were added to make ``ref`` (|w f| + |b| for y = w f + b;
the sum of |terms| for a reduced gradient), so that cancellation is judged by the
precision the terms were computed in, and the final rounding by the output's dtype.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

#: When set, every comparison appends its largest error/allowed ratio here (one JSON line),
#: so a run can report the largest error seen per dtype and device against its tolerance.
ERROR_LOG = os.environ.get("DYNORM_ERROR_LOG")


@dataclass(frozen=True)
class Tol:
    rtol: float  # the output dtype's rounding, with a few units of slack
    ctol: float  # the compute dtype's precision, relative to the terms' size
    atol: float  # underflow: results this small may flush or round to 0
    why: str


TOLERANCES = {
    # float64 computes in float64: tanh, hypot, cosh are within a few ulp (2.2e-16).
    torch.float64: Tol(1e-13, 1e-13, 1e-300, "float64 math: a few ulp, 64x slack"),
    # float32 computes in float32: 1 ulp = 1.2e-7; tanh/cosh/hypot/rsqrt and the
    # products around them stack up to ~10 ulp; 1e-5 leaves headroom, still catches a
    # wrong formula (those are off by 1e-2 or more).
    torch.float32: Tol(1e-5, 1e-5, 1e-35, "float32 math: ~10 ulp of float32"),
    # bfloat16 output: 8 significand bits, half an ulp is 2^-9 = 2e-3; 8e-3 allows the
    # float32 result to round either way plus the input's own rounding of the parameters.
    torch.bfloat16: Tol(8e-3, 1e-5, 1e-35, "bfloat16 output rounding, 2 ulp"),
    # float16 output: 11 significand bits, half an ulp is 2^-12 = 2.4e-4; subnormals
    # below 6e-8 round to a multiple of 6e-8.
    torch.float16: Tol(1e-3, 1e-5, 6e-8, "float16 output rounding, 2 ulp"),
}

DTYPES = tuple(TOLERANCES)


def tol_for(dtype: torch.dtype) -> Tol:
    return TOLERANCES[dtype]


def _log(got: torch.Tensor, dtype, what: str, ratio: torch.Tensor, err: torch.Tensor) -> None:
    finite = err.nan_to_num(0.0, posinf=0.0)
    line = {"dtype": str(dtype).replace("torch.", ""), "device": got.device.type, "what": what,
            "max_err_over_allowed": float(ratio.nan_to_num(0.0).max()) if ratio.numel() else 0.0,
            "max_abs_err": float(finite.max()) if finite.numel() else 0.0}
    with open(ERROR_LOG, "a") as f:
        f.write(json.dumps(line) + "\n")


class Mismatch(AssertionError):
    """A comparison failed; the message names the worst element, its input and reference."""


def assert_close(got: torch.Tensor, ref: torch.Tensor, *, scale=None, dtype=None,
                 inputs: dict | None = None, what: str = "output") -> None:
    """Compare got (any dtype) with a float64 reference; raise Mismatch with the worst element."""
    t = tol_for(dtype or got.dtype)
    got64, ref64 = got.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    scale64 = ref64.abs() if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    if got64.shape != ref64.shape:
        raise Mismatch(f"{what}: shape {tuple(got64.shape)} != reference {tuple(ref64.shape)}")
    both_nan = got64.isnan() & ref64.isnan()
    same_inf = got64.isinf() & (got64 == ref64)
    err = (got64 - ref64).abs()
    allowed = t.atol + t.rtol * ref64.abs() + t.ctol * scale64.expand_as(ref64)
    ok = both_nan | same_inf | (err <= allowed)
    if ERROR_LOG:
        _log(got, dtype or got.dtype, what, torch.where(ok & ~(both_nan | same_inf), err / allowed,
                                                        torch.zeros_like(err)), err)
    bad = ~ok
    if bad.any():
        excess = torch.where(bad, (err / allowed).nan_to_num(float("inf")), torch.zeros_like(err))
        i = int(excess.flatten().argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), ref64.shape))
        at = {k: (v.flatten()[i].item() if isinstance(v, torch.Tensor) and v.numel() == ref64.numel()
                  else (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v))
              for k, v in (inputs or {}).items()}
        raise Mismatch(f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst at {idx}: "
                       f"got {got64.flatten()[i].item()!r}, reference {ref64.flatten()[i].item()!r}, "
                       f"allowed {allowed.flatten()[i].item():.3g}; inputs {at} "
                       f"(tolerance for {dtype or got.dtype}: {t.why})")
