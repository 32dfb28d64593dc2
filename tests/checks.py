"""The property tests' checks on numeric's layer forms: outputs, first and second
derivatives against the catalog in mpmath, through the one tolerance table (all of it in
derive.testing, here called with numeric's functional signature f(x, *scalars, w, b)); the
backend switch, and which backend can run which device's tensors."""
from __future__ import annotations

import importlib.util
import math
import os
from contextlib import contextmanager

import pytest
import torch

from derive import testing as T
from numeric import functional as F
from tests import reference as R

FUNCS = {name: getattr(F, name) for name in R.FORMS}


def cannot_run(backend: str, device: str, dtype: torch.dtype | None = None) -> str | None:
    """Why backend ``backend`` cannot run tensors of ``device`` (and ``dtype``), or None
    where it can: fused runs CPU tensors only; Triton runs CUDA tensors, and CPU tensors only
    through its interpreter (conftest.py sets TRITON_INTERPRET=1 where there is no CUDA);
    float64 runs op by op on every backend (another backend would test that path again)."""
    if backend != "torch" and dtype == torch.float64:
        return "float64 runs op by op on every backend"
    if backend == "fused" and device != "cpu":
        return f"the fused backend runs CPU tensors only, not {device}"
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return ("Triton runs CPU tensors only through its interpreter, and "
                    "TRITON_INTERPRET=1 is not set (conftest.py sets it only without CUDA)")
    return None


def skip_unless_runs(backend: str, device: str, dtype: torch.dtype | None = None) -> None:
    """Skip the test, with the reason, where ``backend`` cannot run ``device``'s tensors."""
    reason = cannot_run(backend, device, dtype)
    if reason:
        pytest.skip(reason)


@contextmanager
def backend(name: str):
    """Every call in the block runs on backend ``name`` ("torch", "fused", "triton")."""
    previous = F.set_backend(name)
    try:
        yield
    finally:
        F.set_backend(previous)


def keywords(name, fn=None):
    """fn (numeric's functional for ``name`` by default), called as assert_matches calls an
    implementation: fn(x, weight, bias, **scalars)."""
    fn = fn or FUNCS[name]
    scalars = [p.name for p in R.params(name)]
    return lambda x, weight, bias, **s: fn(x, *(s[p] for p in scalars), weight, bias)


def first_order(name, x, scalars, w, b, g, fn=None):
    """y and the gradients (x, [scalars], weight, bias or None) of ``fn`` (numeric's)."""
    return T.first_order(keywords(name, fn), name, x, scalars, w, b, g)


def check_first(name, x, scalars, w, b, g, fn=None):
    """Output and every gradient against the catalog."""
    T.check_first(keywords(name, fn), name, x, scalars, w, b, g)


def second_order(name, x, scalars, w, b, g, v, fn=None):
    """The double backward along v (see derive.testing.second_order)."""
    return T.second_order(keywords(name, fn), name, x, scalars, w, b, g, v)


def check_second(name, x, scalars, w, b, g, v, fn=None):
    """Every second derivative along v against the catalog's."""
    T.check_second(keywords(name, fn), name, x, scalars, w, b, g, v)


def special_values(name, dtype, device):
    """+-inf saturate to the bound with zero gradient; NaN stays in its own element only."""
    fi = torch.finfo(dtype)
    vals = [0.0, fi.tiny, -fi.tiny, 1.0, -1.0, fi.max, -fi.max, math.inf, -math.inf, math.nan]
    x = torch.tensor(vals, dtype=dtype, device=device)
    C = len(vals)
    scalars = [torch.tensor(v, dtype=dtype, device=device) for v in
               ([0.5] if len(R.params(name)) == 1 else [0.5, 0.25])]
    w = torch.linspace(0.5, 2, C, dtype=dtype, device=device)
    b = torch.linspace(-1, 1, C, dtype=dtype, device=device)
    g = torch.ones_like(x)
    y, gx, gs, gw, gb = first_order(name, x, scalars, w, b, g)
    assert torch.isnan(y[-1]) and not torch.isnan(y[:-1]).any()
    assert torch.isnan(gx[-1]) and torch.isfinite(gx[:-1]).all()
    assert gx[7] == 0 and gx[8] == 0
    assert y[7].item() == pytest.approx((w[7] + b[7]).item(), rel=1e-2)
    assert y[8].item() == pytest.approx((-w[8] + b[8]).item(), rel=1e-2)
    check_first(name, x[:-1], scalars, w[:-1], b[:-1], g[:-1])


def elementwise(f, df, *, first_only: bool = False):
    """An autograd.Function computing f(x) with the derivative df(x) written out (what
    autograd would derive from f may cancel); differentiable again through df unless
    ``first_only`` (then df is evaluated without a graph in x)."""

    class Elementwise(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return f(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * df(x.detach() if first_only else x)

    return Elementwise


#: tanh with its first derivative written 1/cosh(u)^2 (autograd's 1 - tanh^2 cancels for
#: large |u|): an implementation right to first order.
TanhSech2 = elementwise(torch.tanh, lambda u: 1 / torch.cosh(u) ** 2, first_only=True)
