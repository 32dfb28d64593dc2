"""Bad input and extreme values: one clear error naming the argument, or the right value;
never a silent NaN, zero or clamp.

References are independent of the code under test: the catalog in mpmath
(tests/reference.py through tests/checks.py), torch's own norms and float64 autograd of the
written-out formula.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from derive.testing import assert_close
import numeric
from numeric import functional as F
from numeric.modules import log_beta_bound
from tests import checks
from tests import strategies as S

FORMS_MODULES = [numeric.DyT, numeric.DyISRU, numeric.DyTLN, numeric.DyISRULN, numeric.Derf]
BETA_MODULES = [numeric.DyISRU, numeric.DyISRULN]
BACKENDS = ["torch", "fused", "triton"]


# -- DyISRU's beta under any update ----------------------------------------------------------

def _isru_ref(layer, x, g):
    """(y, d loss / d log_beta) by float64 autograd of the written-out formula at the
    layer's log_beta as stored, with the effective beta exp(log_beta) held in range."""
    lb = layer.log_beta.detach().double().clamp(-log_beta_bound(layer.log_beta.dtype),
                                                log_beta_bound(layer.log_beta.dtype))
    lb.requires_grad_(True)
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    x64 = x.detach().double()
    if isinstance(layer, numeric.DyISRULN):
        x64 = x64 - layer.shift.detach().double()
    y = w * x64 / torch.sqrt(torch.exp(lb) + x64 * x64) + b
    y.backward(g.double())
    return y.detach(), lb.grad


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", BETA_MODULES)
@pytest.mark.parametrize("log_beta", [16000.0, -16000.0, math.inf, -math.inf],
                         ids=["far-above", "far-below", "inf", "-inf"])
def test_log_beta_far_out_of_range_has_a_finite_nonzero_gradient(cls, log_beta, device):
    """A step that threw log_beta far out (SGD, lr 1e4) used to give beta = inf or 0 and
    then a NaN (0 * inf) or a zero gradient; now beta is the bound and the gradient that of
    the loss at the bound, passed straight through."""
    torch.manual_seed(0)
    layer = cls(16, device=device)
    with torch.no_grad():
        layer.log_beta.fill_(log_beta)
    x, g = torch.randn(4, 16, device=device), torch.randn(4, 16, device=device)
    beta = layer.beta
    assert torch.isfinite(beta) and beta > 0
    y = layer(x)
    y.backward(g)
    ref_y, ref_grad = _isru_ref(layer, x, g)
    assert_close(y, ref_y, what="y at the bound")
    grad = layer.log_beta.grad
    assert torch.isfinite(grad)
    if math.isfinite(log_beta):     # an infinite parameter is past any step's reach
        assert grad != 0
        assert grad.item() == pytest.approx(ref_grad.item(), rel=1e-4)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", BETA_MODULES)
def test_sgd_with_a_huge_learning_rate_never_gives_nan(cls, device):
    torch.manual_seed(0)
    layer = cls(16, device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=1e4)
    for _ in range(4):
        opt.zero_grad()
        y = layer(torch.randn(4, 16, device=device))
        y.sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(layer.log_beta.grad)
        opt.step()
        assert torch.isfinite(layer.beta) and layer.beta > 0


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_log_beta_gets_the_gradient_of_its_beta(dtype, device):
    """from_sample of inputs with RMS 5 at C = 4096: beta = 1.02e5, beyond float16's 65504.
    beta is computed in float32 (not clamped to 65504), and the gradient of log_beta is
    finite and right (it was NaN: exp(log_beta) = inf in float16, times a zero)."""
    torch.manual_seed(0)
    sample = torch.randn(64, 4096, device=device) * 5
    layer = numeric.DyISRU.from_sample(sample, device=device).to(dtype)
    stored = layer.log_beta.double()
    assert layer.beta.dtype == torch.float32
    assert layer.beta.item() == pytest.approx(math.exp(stored.item()), rel=1e-6)
    x = sample.to(dtype)
    g = torch.randn(64, 4096, device=device) / 64
    with checks.backend("torch"):       # the parameter is the point, not the backend
        layer(x).float().backward(g)
    _, ref = _isru_ref(layer, x, g)
    grad = layer.log_beta.grad
    assert grad.dtype == dtype and torch.isfinite(grad)
    assert grad.double().item() == pytest.approx(ref.item(), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", BETA_MODULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_init_at_the_bounds_is_kept_and_beyond_is_an_error(cls, dtype, device):
    bound = log_beta_bound(dtype)
    for beta in (math.exp(bound) * 0.999, math.exp(-bound) * 1.001):
        layer = cls(8, beta_init=beta, dtype=dtype, device=device)
        assert layer.beta.item() == pytest.approx(beta, rel=1e-5)
    for beta in (1e308 if dtype == torch.float32 else 1e300, math.exp(-bound) / 2):
        with pytest.raises(ValueError, match="beta_init"):
            cls(8, beta_init=beta, dtype=dtype, device=device)


# -- scalars and eps of the functional forms --------------------------------------------------

@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan])
@pytest.mark.parametrize("name", ["dyisru", "dyisru_ln"])
def test_a_cpu_tensor_beta_that_is_not_positive_names_beta(name, value):
    x, w = torch.randn(2, 8), torch.ones(8)
    scalars = [torch.tensor(value)] + ([torch.tensor(0.0)] if name == "dyisru_ln" else [])
    with pytest.raises(ValueError, match="beta must be (positive|finite)"):
        getattr(F, name)(x, *scalars, w)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_cpu_tensor_scalar_that_is_not_finite_names_it(value):
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError, match="alpha must be finite"):
        F.dyt(x, torch.tensor(value), w)
    with pytest.raises(ValueError, match="shift must be finite"):
        F.derf(x, 0.5, torch.tensor(value), w)


@pytest.mark.parametrize("fn", [F.rms_norm, F.layer_norm], ids=["rms_norm", "layer_norm"])
@pytest.mark.parametrize("eps", [-1.0, -1e-12, math.nan, math.inf])
def test_functional_norms_reject_a_bad_eps(fn, eps):
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        fn(torch.randn(2, 8), eps=eps)


@pytest.mark.parametrize("fn", [F.rms_norm, F.layer_norm], ids=["rms_norm", "layer_norm"])
@pytest.mark.parametrize("eps", ["1e-5", True, torch.tensor(1e-5)])
def test_functional_norms_eps_of_the_wrong_type_is_a_type_error(fn, eps):
    with pytest.raises(TypeError, match="eps must be a real number"):
        fn(torch.randn(2, 8), eps=eps)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_rms_norm_eps_none_is_torchs_default(dtype, device):
    """Mean squares ~ eps, where eps matters."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, dtype=dtype, device=device) * (3e-4 if dtype == torch.float32 else 1e-8)
    assert_close(F.rms_norm(x, eps=None), nn.functional.rms_norm(x.double(), (16,),
                 eps=torch.finfo(dtype).eps), what="rms_norm eps=None")
    with pytest.raises(TypeError, match="eps must be a real number, got NoneType"):
        F.layer_norm(x, eps=None)


@pytest.mark.parametrize("fn", [F.rms_norm, F.layer_norm], ids=["rms_norm", "layer_norm"])
def test_functional_norms_need_a_channel(fn):
    with pytest.raises(ValueError, match=r"at least one channel .* got shape \(3, 0\)"):
        fn(torch.randn(3, 0))


# -- the Modules' arguments ----------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs,needle", [
    (numeric.DyT, dict(alpha_init=1e-320), "alpha_init"),          # stored as 0.0 before
    (numeric.DyT, dict(alpha_init=1e308), "alpha_init"),           # RuntimeError before
    (numeric.DyT, dict(alpha_init=1e5, dtype=torch.float16), "alpha_init"),  # inf before
    (numeric.DyT, dict(weight_init=1e39), "weight_init"),
    (numeric.DyT, dict(weight_init=1e-40), "weight_init"),
    (numeric.Derf, dict(shift_init=-1e39), "shift_init"),
    (numeric.DyTLN, dict(shift_init=1e-310, dtype=torch.float32), "shift_init"),
    (numeric.DyISRU, dict(beta_init=1e308), "beta_init"),           # 3.4e38 before
    (numeric.DyISRU, dict(beta_init=1e-300), "beta_init"),
    (numeric.DyISRULN, dict(beta_init=1e40, dtype=torch.bfloat16), "beta_init"),
])
def test_an_init_out_of_the_dtypes_range_names_the_argument(cls, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        cls(8, **kwargs)


@pytest.mark.parametrize("device", S.DEVICES)
def test_inits_in_range_are_stored_exactly_as_given(device):
    dyt = functools.partial(numeric.DyT, 8, device=device)
    assert dyt(alpha_init=1e-30).alpha.item() == pytest.approx(1e-30, rel=1e-6)
    assert dyt(weight_init=0.0).weight.eq(0).all()
    assert dyt(alpha_init=1e300, dtype=torch.float64).alpha.item() == 1e300


INIT_ARGS = [(numeric.DyT, "alpha_init"), (numeric.DyT, "weight_init"),
             (numeric.DyISRU, "beta_init"), (numeric.DyISRU, "weight_init"),
             (numeric.DyTLN, "shift_init"), (numeric.DyISRULN, "shift_init"),
             (numeric.Derf, "alpha_init"), (numeric.Derf, "shift_init")]


@pytest.mark.parametrize("cls,arg", INIT_ARGS, ids=[f"{c.__name__}-{a}" for c, a in INIT_ARGS])
@pytest.mark.parametrize("value", [[1.0], torch.tensor(1.0), None, "0.5", True],
                         ids=["list", "tensor", "None", "str", "bool"])
def test_an_init_of_the_wrong_type_names_the_argument(cls, arg, value):
    if value is None and cls in BETA_MODULES and arg != "shift_init":
        pytest.skip("None is the derivation's default for beta_init and weight_init")
    with pytest.raises(TypeError, match=f"{arg} must be a real number"):
        cls(8, **{arg: value})


@pytest.mark.parametrize("cls", FORMS_MODULES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, "float32"])
def test_a_dtype_that_is_not_floating_point_names_dtype(cls, dtype):
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        cls(8, dtype=dtype)


# -- integer, bool and complex inputs ------------------------------------------------------

@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", FORMS_MODULES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_non_float_input_is_a_type_error_on_every_backend(cls, dtype, backend, device):
    """Checked before a backend is chosen: the same error where the backend could not run
    the device's tensors."""
    layer, x = cls(4, device=device), torch.ones(2, 4, dtype=dtype, device=device)
    with checks.backend(backend), pytest.raises(TypeError, match="x must be a floating-point"):
        layer(x)


# -- values at the edge of the range ----------------------------------------------------------

def _shift_case(dtype, device):
    """x and shift whose difference overflows the compute dtype (x - shift = 4e38 in
    float32, 2.5e308 in float64), next to ordinary values."""
    big, shift = (1.5e308, -1e308) if dtype == torch.float64 else (3e38, -1e38)
    x = torch.tensor([[big, -big, 1.0, 0.0], [-big, big, -2.0, 0.5]], dtype=dtype, device=device)
    return x, torch.tensor(shift, dtype=dtype, device=device)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name,first", [("dyisru_ln", 1.0), ("dyt_ln", 0.5)])
@pytest.mark.parametrize("sign", [1, -1])
def test_shifted_forms_where_x_minus_shift_overflows(name, first, dtype, backend, sign, device):
    """It was NaN: z = x - shift = inf, then inf/inf. Output and every gradient against the
    catalog in mpmath."""
    checks.skip_unless_runs(backend, device, dtype)
    x, shift = _shift_case(dtype, device)
    x, shift = sign * x, sign * shift
    scalars = [torch.tensor(first, dtype=dtype, device=device), shift]
    w = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=dtype, device=device)
    b = torch.tensor([0.0, 0.25, -0.5, 1.0], dtype=dtype, device=device)
    with checks.backend(backend):
        checks.check_first(name, x, scalars, w, b, torch.ones_like(x))


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn,ref", [
    (F.rms_norm, lambda x: nn.functional.rms_norm(x, x.shape[-1:], eps=1e-6)),
    (F.layer_norm, lambda x: nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5))],
    ids=["rms_norm", "layer_norm"])
def test_norms_of_large_inputs_are_not_zero(fn, ref, dtype, device):
    """x*x overflowed for |x| >= 1.8e19 (float32, bfloat16) and the norm returned 0; the
    rows are scaled before squaring. torch's norms in float64 are the reference, for the
    output and the gradient."""
    x = torch.tensor([[2e19, 1e19, -3e19, 5e18],
                      [3e38, -3e38, 1e38, 0.0],
                      [1e30, 1e30, 1e30, 1e30],            # constant: LayerNorm gives 0
                      [1e-30, -2e-30, 0.0, 3e-30]], dtype=dtype, device=device)
    g = torch.tensor([[1.0, -2.0, 0.5, 3.0]] * 4, dtype=dtype, device=device)
    xl = x.clone().requires_grad_(True)
    y = fn(xl, eps=1e-6 if fn is F.rms_norm else 1e-5)
    y.backward(g)
    x64 = x.double().requires_grad_(True)
    y64 = ref(x64)
    y64.backward(g.double())
    assert_close(y, y64, what=f"{fn.__name__} of large inputs")
    assert_close(xl.grad, x64.grad, scale=(g.double() * 0 + x64.grad.abs().amax(-1, True)),
                 what=f"{fn.__name__} gradient of large inputs")


# -- torch.export with a dynamic batch ---------------------------------------------------------

EXPORTED = [(cls, {}) for cls in FORMS_MODULES] + [
    (numeric.DyT, {"channels_last": False}), (numeric.RMSNorm, {}), (numeric.LayerNorm, {})]


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls,kwargs", EXPORTED,
                         ids=[c.__name__ + ("-channels-first" if k else "") for c, k in EXPORTED])
def test_export_with_a_dynamic_batch(cls, kwargs, device):
    """It failed with "Constraints violated": the backends' size tests added guards on the
    batch. The exported program runs at batch sizes on both sides of those tests (the fused
    path and the blocks of rows start at 65,536 and 262,144 elements)."""
    torch.manual_seed(0)
    layer = cls(8, **kwargs, device=device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    shape = (4, 8, 3) if kwargs else (4, 8)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(layer, (torch.randn(shape, device=device),),
                             dynamic_shapes={"x": {0: batch}})
    for n in (3, 40000):
        x = torch.randn((n, *shape[1:]), device=device)
        with checks.backend("torch"):     # op by op (what the program runs on a CPU)
            ref = layer(x).double()
        # y = weight * f + bias may cancel: judged by the size of the terms, |y| + 2 |bias|
        b = 0 if layer.bias is None else layer.bias.detach().double().abs()
        scale = ref.abs() + 2 * (b.reshape(-1, 1) if kwargs else b)
        assert_close(ep.module()(x), ref, scale=scale, what=f"exported {cls.__name__} at {n}")
