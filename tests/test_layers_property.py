"""Property tests: the generated layers compute the catalog's formulas, in every dtype.

For each form (taken from the catalog at collection time), each (input dtype, parameter
dtype) pair and each device, hypothesis draws shapes, inputs up to the dtype's finite
maximum, and parameters; outputs and all gradients are compared with the catalog's
expressions evaluated by mpmath at 50 digits on the values exactly as cast.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from numeric import functional as F
from tests import reference as R
from tests.tolerances import assert_close

FORMS = tuple(R.FORMS)
#: (input dtype, parameter dtype): same dtype, and float32 parameters under mixed precision.
DTYPE_PAIRS = [(torch.float64, torch.float64), (torch.float32, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
               (torch.float16, torch.float16), (torch.float16, torch.float32)]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
FUNCS = {"dyt": F.dyt, "dyisru": F.dyisru, "dyt_ln": F.dyt_ln, "dyisru_ln": F.dyisru_ln}
SCALAR_RANGES = {"alpha": (1e-3, 10.0), "beta": (1e-3, 1e4), "shift": (-10.0, 10.0)}


def _values(dtype):
    big = torch.finfo(dtype).max
    return st.one_of(
        st.floats(-8, 8),                                  # where the S-curve bends
        st.floats(-big, big),                              # anywhere in the finite range
        st.sampled_from([0.0, big, -big, 1e4, -1e4]),      # the ends
    )


@st.composite
def cases(draw, name, dtype, pdtype, device):
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    C = draw(st.integers(1, 6))
    n = math.prod(lead) * C
    x = torch.tensor(draw(st.lists(_values(dtype), min_size=n, max_size=n)),
                     dtype=torch.float64).reshape(*lead, C).to(dtype).to(device)
    scalars = [torch.tensor(draw(st.floats(*SCALAR_RANGES[p.name])), dtype=pdtype, device=device)
               for p in R.params(name)]
    w = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=C, max_size=C)),
                     dtype=pdtype, device=device)
    b = (torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=C, max_size=C)),
                      dtype=pdtype, device=device) if draw(st.booleans()) else None)
    g = torch.tensor(draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)),
                     dtype=torch.float64).reshape(x.shape).to(dtype).to(device)
    return x, scalars, w, b, g


def _run(name, x, scalars, w, b, g):
    leaves = [t.clone().requires_grad_(True) for t in (x, *scalars, w)]
    bl = b.clone().requires_grad_(True) if b is not None else None
    xl, *sl, wl = leaves
    y = FUNCS[name](xl, *sl, wl, bl)
    y.backward(g)
    return y, xl.grad, [s.grad for s in sl], wl.grad, (bl.grad if bl is not None else None)


def _check(name, x, scalars, w, b, g):
    y, gx, gs, gw, gb = _run(name, x, scalars, w, b, g)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    ev = lambda what: R.evaluate(name, what, x, scalars, w, b).to(x.device)  # noqa: E731
    f = ev("f")
    w64 = w.double()
    b64 = b.double() if b is not None else torch.zeros_like(w64)
    inputs = {"x": x, **{p.name: s for p, s in zip(R.params(name), scalars)}}
    assert_close(y, ev("y"), scale=(w64 * f).abs() + b64.abs(), dtype=x.dtype, inputs=inputs,
                 what=f"{name} y")
    g64 = g.double()
    dx = g64 * ev("d_x")
    assert_close(gx, dx, scale=dx.abs(), dtype=x.dtype, inputs=inputs, what=f"{name} grad x")
    for p, s, got in zip(R.params(name), scalars, gs):
        terms = g64 * ev(f"d_{p.name}")
        assert_close(got, terms.sum(), scale=terms.abs().sum(), dtype=s.dtype,
                     what=f"{name} grad {p.name}")
    C = x.shape[-1]
    terms = (g64 * f).reshape(-1, C)
    assert_close(gw, terms.sum(0), scale=terms.abs().sum(0), dtype=w.dtype,
                 what=f"{name} grad weight")
    if b is not None:
        gg = g64.reshape(-1, C)
        assert_close(gb, gg.sum(0), scale=gg.abs().sum(0), dtype=b.dtype, what=f"{name} grad bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,pdtype", DTYPE_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", FORMS)
def test_outputs_and_gradients_match_the_catalog(name, dtype, pdtype, device):
    @given(cases(name, dtype, pdtype, device))
    def check(case):
        _check(name, *case)

    check()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", FORMS)
def test_special_values(name, dtype, device):
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
    y, gx, gs, gw, gb = _run(name, x, scalars, w, b, g)
    assert torch.isnan(y[-1]) and not torch.isnan(y[:-1]).any()
    assert torch.isnan(gx[-1]) and torch.isfinite(gx[:-1]).all()
    assert gx[7] == 0 and gx[8] == 0
    assert y[7].item() == pytest.approx((w[7] + b[7]).item(), rel=1e-2)
    assert y[8].item() == pytest.approx((-w[8] + b[8]).item(), rel=1e-2)
    _check(name, x[:-1], scalars, w[:-1], b[:-1], g[:-1])
