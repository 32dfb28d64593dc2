"""The generated RMSNorm and LayerNorm (forward, and the VJP of the derived Jacobian)
against torch's own rms_norm and layer_norm and their autograd."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from derive.testing import assert_close
import numeric
from numeric import functional as F
from tests import strategies as S

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _torch(name, x, w, b, eps):
    C = x.shape[-1]
    if name == "rmsnorm":
        return nn.functional.rms_norm(x, (C,), w, eps)
    return nn.functional.layer_norm(x, (C,), w, b, eps)


def _ours(name, x, w, b, eps):
    return F.rms_norm(x, w, eps) if name == "rmsnorm" else F.layer_norm(x, w, b, eps)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", ["rmsnorm", "layernorm"])
def test_matches_torch_forward_and_backward(name, dtype, device):
    @given(st.integers(0, 2**31 - 1), st.integers(2, 64), st.integers(1, 8),
           st.sampled_from([1e-6, 1e-5, 1e-2]), st.floats(0.1, 100))
    def check(seed, C, T, eps, magnitude):
        g = torch.Generator().manual_seed(seed)
        x64 = torch.randn(T, C, generator=g, dtype=torch.float64) * magnitude + magnitude / 4
        x = x64.to(dtype).to(device)
        w = (1 + 0.1 * torch.randn(C, generator=g, dtype=torch.float64)).to(dtype).to(device)
        b = (0.1 * torch.randn(C, generator=g, dtype=torch.float64)).to(dtype).to(device)
        up = torch.randn(T, C, generator=g, dtype=torch.float64).to(dtype).to(device)
        # the reference: torch's layer in float64 on the values as cast
        xr, wr, br = (t.detach().double().clone().requires_grad_(True) for t in (x, w, b))
        ref = _torch(name, xr, wr, br if name == "layernorm" else None, eps)
        ref.backward(up.double())
        xo, wo, bo = (t.clone().requires_grad_(True) for t in (x, w, b))
        out = _ours(name, xo, wo, bo if name == "layernorm" else None, eps)
        out.backward(up)
        assert out.dtype == dtype
        # sizes of the terms each result is made of (see tests/tolerances.py)
        y = _torch(name, x.double(), None, None, eps)
        centred = x.double() - (x.double().mean(-1, keepdim=True) if name == "layernorm" else 0)
        sd = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        gu = (up.double() * w.double()).abs()
        assert_close(out, ref, scale=ref.detach().abs() + b.double().abs(), what=f"{name} y")
        assert_close(xo.grad, xr.grad, what=f"{name} grad x",
                     scale=(gu + y.abs() * (gu * y.abs()).mean(-1, keepdim=True)
                            + gu.mean(-1, keepdim=True)) / sd)
        assert_close(wo.grad, wr.grad, scale=(up.double().abs() * y.abs()).sum(0),
                     what=f"{name} grad weight")

    check()


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls,ref", [(numeric.RMSNorm, nn.RMSNorm), (numeric.LayerNorm, nn.LayerNorm)])
def test_modules_match_torch_modules(cls, ref, device):
    torch.manual_seed(3)
    f64 = dict(dtype=torch.float64, device=device)
    ours, theirs = cls(16, eps=1e-5, **f64), ref(16, eps=1e-5, **f64)
    x = torch.randn(5, 16, **f64)
    assert torch.allclose(ours(x), theirs(x), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("device", S.DEVICES)
def test_gradcheck_norms(device):
    x = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.rms_norm(t, None, 1e-3), (x,))
    assert torch.autograd.gradcheck(lambda t: F.layer_norm(t, None, None, 1e-3), (x,))
    assert math.isfinite(F.rms_norm(x, None, 0.0).sum().item())
