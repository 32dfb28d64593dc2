"""The layers as people use them: defaults, errors, dtype policy, identities, DDP. Every test
of values or gradients runs on each of tests/strategies.py's DEVICES."""
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

LAYERS = [numeric.DyT, numeric.DyISRU, numeric.DyTLN, numeric.DyISRULN]


@pytest.mark.parametrize("device", S.DEVICES)
def test_defaults_follow_the_paper_and_the_derivation(device):
    dyt = numeric.DyT(16, device=device)
    assert dyt.alpha.shape == () and dyt.alpha.item() == 0.5
    assert (torch.equal(dyt.weight, torch.ones(16, device=device))
            and torch.equal(dyt.bias, torch.zeros(16, device=device)))
    isru = numeric.DyISRU(16, device=device)
    assert isru.beta.shape == () and isru.beta.item() == pytest.approx(16)
    assert torch.allclose(isru.weight, torch.full((16,), 4.0, device=device))
    ln = numeric.DyISRULN(16, device=device)
    assert ln.beta.item() == pytest.approx(16) and ln.weight[0].item() == pytest.approx(math.sqrt(15))
    assert numeric.DyT(8, bias=False, device=device).bias is None


@pytest.mark.parametrize("device", S.DEVICES)
def test_dyisru_default_is_rmsnorm_on_unit_rms_tokens(device):
    """On a unit-RMS token, RMSNorm's channel i is DyISRU with beta_i = C - x_i^2; the
    default beta = C differs from it by the factor sqrt(1 + x_i^2/C) >= 1 - x_i^2/(2C)."""
    C = 64
    x = torch.randn(C, dtype=torch.float64, device=device)
    x = x / x.pow(2).mean().sqrt()                      # RMS exactly 1
    layer = numeric.DyISRU(C, dtype=torch.float64, device=device)
    rms = nn.functional.rms_norm(x, (C,), eps=0.0)
    assert ((layer(x) - rms).abs() <= rms.abs() * x**2 / (2 * C) + 1e-15).all()


def test_llama_width_rule():
    assert numeric.llama_alpha_init(4096, "attention") == 0.8
    assert numeric.llama_alpha_init(4096, "other") == 0.2
    assert numeric.llama_alpha_init(8192, "other") == 0.05
    assert 0.8 < numeric.llama_alpha_init(3000) < 1.0
    with pytest.raises(ValueError, match="block"):
        numeric.llama_alpha_init(4096, "mlp")


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", LAYERS)
def test_from_sample_gives_finite_positive_scalars(cls, device):
    sample = 3 * torch.randn(64, 32, device=device) + 0.5
    layer = cls.from_sample(sample, device=device)
    scalar = layer.alpha if hasattr(layer, "alpha") else layer.beta
    assert torch.isfinite(scalar) and scalar > 0
    assert torch.isfinite(layer(sample)).all()


@pytest.mark.parametrize("device", S.DEVICES)
def test_from_sample_dyisru_matches_rmsnorm_on_that_sample(device):
    torch.manual_seed(0)
    sample = 5 * torch.randn(2000, 256, dtype=torch.float64, device=device)
    layer = numeric.DyISRU.from_sample(sample, dtype=torch.float64, device=device)
    rms = nn.functional.rms_norm(sample, (256,))
    assert ((layer(sample) - rms).abs().mean() / rms.abs().mean()) < 0.05


@pytest.mark.parametrize("kwargs,needle", [
    (dict(normalized_shape=0), "normalized_shape"),
    (dict(normalized_shape=-3), "normalized_shape"),
    (dict(normalized_shape=(4, 4)), "normalized_shape"),
    (dict(normalized_shape=4, beta_init=0.0), "beta_init"),
    (dict(normalized_shape=4, beta_init=-1.0), "beta_init"),
    (dict(normalized_shape=4, beta_init=math.inf), "beta_init"),
    (dict(normalized_shape=4, weight_init=math.nan), "weight_init"),
])
def test_invalid_dyisru_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        numeric.DyISRU(**kwargs)


@pytest.mark.parametrize("value", [0.0, -0.5, math.inf, math.nan])
def test_invalid_alpha_names_the_argument(value):
    with pytest.raises(ValueError, match="alpha_init"):
        numeric.DyT(4, alpha_init=value)


def test_layernorm_forms_need_two_channels():
    with pytest.raises(ValueError, match="at least 2"):
        numeric.DyISRULN(1)


@pytest.mark.parametrize("cls", LAYERS)
def test_wrong_shapes_in_a_state_dict_name_the_key(cls):
    sd = cls(8).state_dict()
    sd["weight"] = torch.ones(9)
    with pytest.raises(ValueError, match="weight"):
        cls(8).load_state_dict(sd)


@pytest.mark.parametrize("cls", LAYERS)
def test_wrong_input_width_is_a_clear_error(cls):
    with pytest.raises(ValueError, match="last dimension must be 8"):
        cls(8)(torch.randn(2, 7))


@pytest.mark.parametrize("device", S.DEVICES)
@given(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6))
def test_beta_stays_positive_and_finite_under_any_update(device, step, lr):
    layer = numeric.DyISRU(8, device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    layer.log_beta.grad = torch.tensor(step, device=device)
    layer.weight.grad = torch.zeros(8, device=device)
    layer.bias.grad = torch.zeros(8, device=device)
    opt.step()
    assert torch.isfinite(layer.beta) and layer.beta > 0
    assert torch.isfinite(layer(torch.randn(3, 8, device=device))).all()


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_stays_low_precision_with_float32_parameters(cls, dtype, device):
    layer = cls(8, device=device)                     # float32 parameters
    x = torch.randn(4, 8, device=device).to(dtype).requires_grad_(True)
    y = layer(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and layer.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls", LAYERS)
def test_bfloat16_parameters_keep_bfloat16(cls, device):
    layer = cls(8, dtype=torch.bfloat16, device=device)
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16, device=device)).dtype == torch.bfloat16


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name,args", [
    ("dyt", (0.7,)), ("dyisru", (2.5,)), ("dyt_ln", (0.7, 0.3)), ("dyisru_ln", (2.5, -0.4))])
def test_gradcheck_float64(name, args, device):
    torch.manual_seed(1)
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(3, 5, **f64)
    scalars = [torch.tensor(a, **f64) for a in args]
    w = torch.randn(5, **f64)
    b = torch.randn(5, **f64)
    fn = getattr(F, name)
    assert torch.autograd.gradcheck(lambda x, w, b, *s: fn(x, *s, w, b), (x, w, b, *scalars))


# -- identities with torch's own norms ------------------------------------------------------

@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_dyisru_with_per_token_beta_is_torch_rmsnorm(dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    C, eps = 48, 1e-5
    x = (torch.randn(5, C, generator=g, dtype=torch.float64) * 3).to(device, dtype)
    ref = nn.functional.rms_norm(x, (C,), eps=eps)
    w = torch.full((C,), math.sqrt(C), dtype=dtype, device=device)
    for t in range(x.shape[0]):
        for i in range(C):
            beta = (x[t].double().pow(2).sum() - x[t, i].double() ** 2 + C * eps).to(dtype)
            got = F.dyisru(x[t, i:i + 1], beta, w[i:i + 1])
            assert_close(got, ref[t, i:i + 1].double(), what=f"token {t} channel {i}")


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dyisru_ln_with_per_token_beta_and_shift_is_torch_layernorm(dtype, device):
    g = torch.Generator().manual_seed(4)
    C, eps = 32, 1e-5
    x = (torch.randn(4, C, generator=g, dtype=torch.float64) * 2 + 1).to(device, dtype)
    ref = nn.functional.layer_norm(x, (C,), eps=eps)
    w = torch.full((1,), math.sqrt(C - 1), dtype=dtype, device=device)
    for t in range(x.shape[0]):
        xt = x[t].double()
        for i in range(C):
            rest = torch.cat([xt[:i], xt[i + 1:]])
            m, Q = rest.mean(), (rest - rest.mean()).pow(2).sum()
            beta = (C * (Q + C * eps) / (C - 1)).to(dtype)
            got = F.dyisru_ln(x[t, i:i + 1], beta, m.to(dtype), w)
            assert_close(got, ref[t, i:i + 1].double(), what=f"token {t} channel {i}",
                         scale=torch.ones(1) * 4)


# -- shape facts on the layers themselves -------------------------------------------------------

@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", ["dyt", "dyisru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_bounded_odd_monotone(name, dtype, device):
    fi = torch.finfo(dtype)
    x = torch.cat([torch.linspace(-50, 50, 2001, dtype=torch.float64),
                   torch.tensor([fi.max, -fi.max, 1e3, -1e3], dtype=torch.float64)])
    x = x.to(device, dtype).sort().values.unsqueeze(-1)          # (N, C = 1)
    s = torch.tensor(0.5 if name == "dyt" else 4.0, dtype=dtype, device=device)
    w = torch.ones(1, dtype=dtype, device=device)
    fn = getattr(F, name)
    y = fn(x, s, w)
    assert (y.abs() <= 1).all()                                  # bounded by the weight
    assert torch.equal(fn(-x, s, w), -y)                         # odd, bit for bit
    assert (y[1:] >= y[:-1]).all()                               # non-decreasing


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name,scalar,slope", [("dyt", 0.5, 0.5), ("dyisru", 4.0, 0.5)])
def test_slope_at_zero(name, scalar, slope, device):
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.zeros(1, **f64, requires_grad=True)
    w = torch.full((1,), 3.0, **f64)
    getattr(F, name)(x, torch.tensor(scalar, **f64), w).sum().backward()
    assert x.grad.item() == pytest.approx(3.0 * slope, rel=1e-15)


# -- converter, DDP ------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, dtype=None):
        super().__init__()
        self.fc = nn.Linear(8, 8, dtype=dtype)
        self.ln = nn.LayerNorm(8, dtype=dtype)
        self.block = nn.Sequential(nn.Linear(8, 8, dtype=dtype), nn.RMSNorm(8, dtype=dtype))

    def forward(self, x):
        return self.block(self.ln(self.fc(x)))


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("to,cls", [("dyt", numeric.DyT), ("dyisru", numeric.DyISRU),
                                    ("dyt_ln", numeric.DyTLN), ("dyisru_ln", numeric.DyISRULN)])
def test_convert_replaces_and_reports(to, cls, device):
    model = Tiny(dtype=torch.float64).to(device)
    with torch.no_grad():
        model.ln.weight.fill_(2.0)
        model.ln.bias.fill_(0.5)
    report = numeric.convert(model, to)
    assert [r.name for r in report] == ["ln", "block.1"]
    assert isinstance(model.ln, cls) and isinstance(model.block[1], cls)
    assert model.ln.weight.dtype == torch.float64
    assert torch.allclose(model.ln.bias, torch.full((8,), 0.5, dtype=torch.float64, device=device))
    assert torch.allclose(model.ln.weight, 2.0 * cls(8, device=device).weight.double())
    assert "ln: LayerNorm" in str(report)
    assert model(torch.randn(2, 8, dtype=torch.float64, device=device)).shape == (2, 8)


def test_convert_rejects_unknown_target():
    with pytest.raises(ValueError, match="to must be one of"):
        numeric.convert(Tiny(), "batchnorm")


#: torch.distributed's backend for each device's tensors.
PROCESS_GROUP = {"cpu": "gloo", "cuda": "nccl"}


@pytest.mark.parametrize("device", S.DEVICES)
def test_ddp_wraps_and_trains(tmp_path, device):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group(PROCESS_GROUP[device], init_method=f"file://{tmp_path / 'store'}",
                            rank=0, world_size=1)
    try:
        model = Tiny().to(device)
        numeric.convert(model, "dyt")
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            ddp(torch.randn(4, 8, device=device)).pow(2).mean().backward()
            opt.step()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_every_generated_form_has_a_layer_a_function_and_a_converter_target():
    from numeric._autograd import FUNCTIONS
    from numeric.modules import LAYERS as BY_FORM
    from numeric.generated.forms import FORMS

    assert set(FUNCTIONS) == set(BY_FORM) == set(FORMS)
    for name, form in FORMS.items():
        layer = BY_FORM[name](4)
        assert [n for n, _ in layer.named_parameters() if n not in ("weight", "bias")] == [
            "log_beta" if p == "beta" else p for p in form.scalars]
