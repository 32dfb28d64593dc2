"""The property tests' checks on numeric's layer forms: outputs, first and second
derivatives against the catalog in mpmath, through the one tolerance table (all of it in
derive.testing, here called with numeric's functional signature f(x, *scalars, w, b))."""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from derive import testing as T
from numeric import functional as F
from tests import reference as R

FUNCS = {name: getattr(F, name) for name in R.FORMS}


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
