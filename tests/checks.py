"""The property tests' checks: a layer form's outputs, first and second derivatives against
the catalog in mpmath (tests/reference.py), through the one tolerance table."""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from numeric import functional as F
from tests import reference as R
from tests.tolerances import assert_close

FUNCS = {name: getattr(F, name) for name in R.FORMS}


@contextmanager
def backend(name: str):
    """Every call in the block runs on backend ``name`` ("torch", "fused", "triton")."""
    previous = F.set_backend(name)
    try:
        yield
    finally:
        F.set_backend(previous)


def leaves(x, scalars, w, b):
    return ([t.clone().requires_grad_(True) for t in (x, *scalars, w)]
            + [None if b is None else b.clone().requires_grad_(True)])


def first_order(name, x, scalars, w, b, g, fn=None):
    """y and the gradients (x, [scalars], weight, bias or None) of ``fn`` (numeric's)."""
    xl, *sl, wl, bl = leaves(x, scalars, w, b)
    y = (fn or FUNCS[name])(xl, *sl, wl, bl)
    y.backward(g)
    return y, xl.grad, [s.grad for s in sl], wl.grad, (bl.grad if bl is not None else None)


def _inputs(name, x, scalars):
    return {"x": x, **{p.name: s for p, s in zip(R.params(name), scalars)}}


def check_first(name, x, scalars, w, b, g, fn=None):
    """Output and every gradient against the catalog."""
    y, gx, gs, gw, gb = first_order(name, x, scalars, w, b, g, fn)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    ev = lambda what: R.evaluate(name, what, x, scalars, w, b).to(x.device)  # noqa: E731
    f = ev("f")
    w64 = w.double()
    b64 = b.double() if b is not None else torch.zeros_like(w64)
    inputs = _inputs(name, x, scalars)
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


def second_order(name, x, scalars, w, b, g, v, fn=None):
    """The double backward along v = (v_x, [v_scalars], v_weight), each in its input's dtype:
    the gradient of <first-order gradients, v> in x, each scalar, weight and the upstream
    gradient g (a Hessian-vector product, and the forward-mode product in g)."""
    xl, *sl, wl, bl = leaves(x, scalars, w, b)
    gl = g.clone().requires_grad_(True)
    y = (fn or FUNCS[name])(xl, *sl, wl, bl)
    ins = [xl, *sl, wl]
    grads = torch.autograd.grad(y, ins, gl, create_graph=True)
    dot = sum((gr.double() * vv.double()).sum() for gr, vv in zip(grads, v))
    return torch.autograd.grad(dot, [*ins, gl])


def check_second(name, x, scalars, w, b, g, v, fn=None):
    """Every second derivative along v against the catalog's, summed as autograd sums them:
    h_a = sum over elements of g * sum_b v_b d2y/(da db); and in g, sum_b v_b dy/db."""
    *got, got_g = second_order(name, x, scalars, w, b, g, v, fn)
    names = [a.name for a in R.wrt(name)]
    ev = lambda what: R.evaluate(name, what, x, scalars, w, b).to(x.device)  # noqa: E731
    g64, C = g.double(), x.shape[-1]
    v64 = [t.double() for t in v]
    inputs = _inputs(name, x, scalars)
    # d2y/(da db) = d2y/(db da): each pair evaluated once; d2y/dweight^2 = 0
    d2 = {(a, bn): ev(f"d2_{a}_{bn}") for i, a in enumerate(names) for bn in names[i:]
          if (a, bn) != ("weight", "weight")}
    pair = lambda a, bn: d2.get((a, bn), d2.get((bn, a), 0.0))  # noqa: E731
    for a, out, like in zip(names, got, (x, *scalars, w)):
        parts = [g64 * pair(a, bn) * v64[j] for j, bn in enumerate(names)]
        terms, size = sum(parts), sum(p.abs() for p in parts)
        if a == "x":
            ref, scale = terms, size
        elif a == "weight":
            ref, scale = terms.reshape(-1, C).sum(0), size.reshape(-1, C).sum(0)
        else:
            ref, scale = terms.sum(), size.sum()
        assert out.dtype == like.dtype, (a, out.dtype, like.dtype)
        assert_close(out, ref, scale=scale, dtype=like.dtype,
                     inputs=inputs if a == "x" else None, what=f"{name} second derivative in {a}")
    parts = [ev(f"d_{bn}") * v64[j] for j, bn in enumerate(names)]
    assert_close(got_g, sum(parts), scale=sum(p.abs() for p in parts), dtype=g.dtype,
                 inputs=inputs, what=f"{name} forward-mode product (the gradient in grad)")


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
