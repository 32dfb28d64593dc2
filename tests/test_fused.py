"""The fused CPU path (the generated functions under torch.compile) computes the formulas.

Large CPU inputs run fused by default (numeric/_autograd.py). Here the threshold is
lowered so that hypothesis's small cases go through the compiled code, and the same
comparison as tests/test_layers_property.py (mpmath at 50 digits) is made; a test at the
real threshold compares with float64 formulas written out in torch; a compiler failure
falls back to the unfused code with one warning.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numeric import _autograd
from numeric import functional as F
from tests import reference as R
from tests.test_layers_property import DTYPE_PAIRS, FORMS, FUNCS, SCALAR_RANGES, _check, _values

#: float64 never fuses (its test is that it does not).
FUSED_PAIRS = [p for p in DTYPE_PAIRS if p[0] != torch.float64]

#: One shape: torch.compile(dynamic=True) then compiles one variant per input dtype.
SHAPE = (3, 5)


@pytest.fixture
def fused_always(monkeypatch):
    """Every CPU call fuses; hitting torch.compile's recompile limit (which would silently
    run the code uncompiled) raises, so it falls back and the warning fails the test."""
    monkeypatch.setattr(_autograd, "FUSE_MIN", 0)
    previous = _autograd.set_fusion("auto")
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    _autograd.set_fusion(previous)


@st.composite
def fixed_shape_cases(draw, name, dtype, pdtype):
    n = SHAPE[0] * SHAPE[1]
    x = torch.tensor(draw(st.lists(_values(dtype), min_size=n, max_size=n)),
                     dtype=torch.float64).reshape(SHAPE).to(dtype)
    scalars = [torch.tensor(draw(st.floats(*SCALAR_RANGES[p.name])), dtype=pdtype)
               for p in R.params(name)]
    C = SHAPE[1]
    w = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=C, max_size=C)), dtype=pdtype)
    b = (torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=C, max_size=C)), dtype=pdtype)
         if draw(st.booleans()) else None)
    g = torch.tensor(draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)),
                     dtype=torch.float64).reshape(SHAPE).to(dtype)
    return x, scalars, w, b, g


@pytest.mark.filterwarnings("error:dynorm")
@pytest.mark.parametrize("dtype,pdtype", FUSED_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", FORMS)
def test_fused_outputs_and_gradients_match_the_catalog(name, dtype, pdtype, fused_always):
    @settings(max_examples=20)
    @given(fixed_shape_cases(name, dtype, pdtype))
    def check(case):
        _check(name, *case)

    check()
    forward, backward = _autograd.FUSED[name]
    assert forward.compiled is not None and backward.compiled is not None  # it did run fused
    assert _autograd.get_fusion() == "auto"


def _formula64(name, x, scalars, w, b):
    """The layer in float64, written out in torch (not the generated code)."""
    x, w, b = x.double(), w.double(), b.double()
    s = [v.double() for v in scalars]
    z = x - s[1] if name.endswith("_ln") else x
    f = torch.tanh(s[0] * z) if name.startswith("dyt") else z / torch.sqrt(s[0] + z * z)
    return w * f + b


@pytest.mark.filterwarnings("error:dynorm")
@pytest.mark.parametrize("fusion", ["auto", "off"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", FORMS)
def test_large_inputs(name, dtype, fusion):
    """Above both thresholds (fusion, and blocks when op by op: 1,100 rows are blocks of
    1,024 and 76): outputs and gradients against the formulas in float64 and autograd
    through them; with fusion on, the fused code was the code that ran."""
    previous = _autograd.set_fusion(fusion)
    try:
        _large(name, dtype, fusion)
    finally:
        _autograd.set_fusion(previous)


def _large(name, dtype, fusion):
    g = torch.Generator().manual_seed(1)
    shape = (1100, 256)
    assert shape[0] * shape[1] > max(_autograd.BLOCK, _autograd.FUSE_MIN)
    x = (4 * torch.randn(shape, generator=g)).to(dtype)
    gy = torch.randn(shape, generator=g).to(dtype)
    scalars = [torch.tensor(0.7), torch.tensor(0.3)][:len(R.params(name))]
    if name.startswith("dyisru"):
        scalars[0] = torch.tensor(5.0)
    w, b = torch.rand(256, generator=g) + 0.5, torch.randn(256, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (x, *scalars, w, b)]
    y = FUNCS[name](*leaves)
    y.backward(gy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (x, *scalars, w, b)]
    ref = _formula64(name, ref_leaves[0], ref_leaves[1:-2], *ref_leaves[-2:])
    ref.backward(gy.double())
    if fusion == "auto":
        assert _autograd.FUSED[name][1].compiled is not None
    rtol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(y.double(), ref.detach(), rtol=rtol, atol=rtol)
    for got, want in zip(leaves, ref_leaves):
        # absolute floor: 4 rtol of the gradient's largest entry (plus 4 rtol for the sums)
        floor = want.grad.abs().max().item() + (0.0 if got is leaves[0] else 1.0)
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=rtol, atol=4 * rtol * floor)


def test_float64_and_small_inputs_do_not_fuse():
    big = torch.zeros(_autograd.FUSE_MIN, dtype=torch.float64)
    assert not _autograd._fuses(big)
    assert _autograd._fuses(big.float())
    assert not _autograd._fuses(big.float()[:-1])


def test_a_compiler_failure_falls_back_with_one_warning(monkeypatch):
    """If torch.compile fails, the call still returns the right values (unfused), one
    warning names the error, and fusion stays off afterwards."""
    monkeypatch.setattr(_autograd, "FUSE_MIN", 0)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    fwd, bwd = _autograd.FUSED["dyt"]
    monkeypatch.setattr(fwd, "compiled", None)
    previous = _autograd.set_fusion("auto")
    try:
        x = torch.linspace(-3, 3, 12).reshape(3, 4)
        with pytest.warns(RuntimeWarning, match="fusion turned off.*no C\\+\\+ compiler"):
            y = F.dyt(x, torch.tensor(0.5), torch.ones(4))
        torch.testing.assert_close(y, torch.tanh(0.5 * x))
        assert _autograd.get_fusion() == "off"
    finally:
        _autograd.set_fusion(previous)


def test_bad_inputs_raise_their_own_error_and_leave_fusion_on(monkeypatch):
    """A shape mismatch is the caller's error, not the compiler's: torch's message, once,
    and fusion stays on."""
    monkeypatch.setattr(_autograd, "FUSE_MIN", 0)
    previous = _autograd.set_fusion("auto")
    try:
        with pytest.raises(RuntimeError, match="size of tensor a") as info:
            F.dyt(torch.ones(3, 4), torch.tensor(0.5), torch.ones(5))
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert _autograd.get_fusion() == "auto"
    finally:
        _autograd.set_fusion(previous)


def test_fusion_switch_rejects_unknown_modes():
    with pytest.raises(ValueError, match="fusion must be one of auto, off; got 'on'"):
        _autograd.set_fusion("on")
