"""numeric.convert on the models people have, and checkpoints of the published DyT layer."""
from __future__ import annotations

import importlib
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from derive.testing import assert_close
import numeric
from numeric.modules import LAYERS
from tests import strategies as S

#: where the placement tests run: the meta device (no values) and the devices of S.DEVICES
#: but the CPU; the tests that compare values run on S.DEVICES.
DEVICES = [pytest.param("meta"), *(p for p in S.DEVICES if p.values != ("cpu",))]
VALUE_DEVICES = S.DEVICES


# -- which modules are converted ------------------------------------------------------------

class CastLayerNorm(nn.LayerNorm):
    """The subclass many models carry: a LayerNorm computed in float32."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class MyRMSNorm(nn.RMSNorm):
    pass


def test_subclasses_of_the_norms_are_converted():
    model = nn.Sequential(nn.Linear(8, 8), CastLayerNorm(8), nn.Sequential(MyRMSNorm(8)))
    report = numeric.convert(model, "dyt")
    assert [r.name for r in report] == ["1", "2.0"]
    assert isinstance(model[1], numeric.DyT) and isinstance(model[2][0], numeric.DyT)


def test_numerics_own_norms_are_converted():
    model = nn.Sequential(numeric.LayerNorm(8), numeric.RMSNorm(8))
    assert [r.name for r in numeric.convert(model, "dyisru")] == ["0", "1"]
    assert isinstance(model[0], numeric.DyISRU) and isinstance(model[1], numeric.DyISRU)


def test_a_norm_as_the_model_returns_its_replacement():
    ln = nn.LayerNorm(8, dtype=torch.float64)
    with torch.no_grad():
        ln.bias.fill_(0.25)
    report = numeric.convert(ln, "dyt")
    new = report.model
    assert isinstance(new, numeric.DyT) and new.weight.dtype == torch.float64
    assert torch.equal(new.bias, torch.full((8,), 0.25, dtype=torch.float64))
    assert [r.name for r in report] == [""] and str(report).startswith("(model): LayerNorm")
    model = nn.Sequential(nn.LayerNorm(8))
    assert numeric.convert(model, "dyt").model is model      # a model is changed in place


def test_a_norm_shared_by_two_parents_stays_shared():
    ln = nn.LayerNorm(8)
    model = nn.Sequential(nn.Sequential(ln), nn.Sequential(nn.Linear(8, 8), ln))
    report = numeric.convert(model, "dyt")
    assert len(report) == 1 and model[0][0] is model[1][1]
    assert isinstance(model[1][1], numeric.DyT)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        numeric.convert({"ln": nn.LayerNorm(8)}, "dyt")


# -- subclasses with a forward of their own ----------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm (ConvNeXt's stem and downsampling): (N, C, H, W)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class RMSNorm2d(nn.RMSNorm):
    def forward(self, x):
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class Doubled(nn.LayerNorm):
    """A LayerNorm and then something else: no target computes it."""

    def forward(self, x):
        return 2 * super().forward(x)


class EitherLayout(nn.LayerNorm):
    """Reads the layout from the input's shape: one layer of either layout would break it."""

    def forward(self, x):
        if x.shape[-1] == self.normalized_shape[0]:
            return super().forward(x)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class DroppedOut(nn.LayerNorm):
    """A LayerNorm, then dropout in training: the same as a LayerNorm in eval only."""

    def forward(self, x):
        return F.dropout(super().forward(x), 0.5, self.training)


def _random_affine(norm: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 2.5 + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    return norm


@pytest.mark.parametrize("device", VALUE_DEVICES)
def test_a_channels_first_layernorm_becomes_a_channels_first_dyt(device):
    """LayerNorm2d(16) on (2, 16, 16, 16): the converted layer computes DyT over dim 1 with the
    norm's weight times DyT's default scale and its bias. A channels-last DyT with the same
    parameters (what the converter made before: the weight on the width) is off by O(1)."""
    torch.manual_seed(0)
    norm = _random_affine(LayerNorm2d(16, device=device))
    model = nn.Sequential(norm)
    report = numeric.convert(model, "dyt")
    want = numeric.DyT(16, channels_last=False, device=device)
    last = numeric.DyT(16, device=device)
    with torch.no_grad():
        for layer in (want, last):
            layer.weight.mul_(norm.weight)
            layer.bias.copy_(norm.bias)
    x = 3 * torch.randn(2, 16, 16, 16, device=device)
    with torch.no_grad():
        got, ref = model(x), want(x)
        assert (last(x) - ref).abs().max() > 1        # the old conversion fails this test
    assert_close(got, ref, what="converted LayerNorm2d")
    assert isinstance(model[0], numeric.DyT) and model[0].channels_last is False
    assert model[0].weight.device.type == torch.device(device).type
    assert [r.name for r in report] == ["0"] and "channels_last=False" in str(report)
    assert report.skipped == []


@pytest.mark.parametrize("device", VALUE_DEVICES)
def test_a_channels_first_norm_of_another_width_runs(device):
    """Width 7 (not the map's width): the converted forward runs and matches DyT over dim 1;
    a channels-first RMSNorm subclass too, without a bias."""
    model = nn.Sequential(_random_affine(LayerNorm2d(7, device=device)),
                          _random_affine(RMSNorm2d(7, device=device)))
    report = numeric.convert(model, "dyt", alpha_init=0.7)
    x = torch.randn(2, 7, 5, 6, device=device)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7, 5, 6)
    assert [r.name for r in report] == ["0", "1"]
    assert model[0].channels_last is False and model[1].channels_last is False
    assert model[1].bias is None
    w0, b0 = model[0].weight[:, None, None], model[0].bias[:, None, None]
    with torch.no_grad():
        h = w0 * torch.tanh(0.7 * x) + b0
        assert_close(model[0](x), h, what="first layer")
        assert_close(y, model[1].weight[:, None, None] * torch.tanh(0.7 * h), what="both")


@pytest.mark.parametrize("device", VALUE_DEVICES)
def test_a_zero_weight_does_not_hide_the_layout(device):
    """The probe runs a copy with random weight and bias: a norm whose weight is 0 (every
    layout computes 0) is still found channels first."""
    norm = LayerNorm2d(6, device=device)
    nn.init.zeros_(norm.weight)
    report = numeric.convert(norm, "dyt")
    assert isinstance(report.model, numeric.DyT) and report.model.channels_last is False
    assert torch.equal(norm.weight, torch.zeros(6, device=device))   # the norm is untouched


@pytest.mark.parametrize("device", DEVICES)
def test_a_channels_first_norm_on_the_meta_device_converts_there(device):
    """On meta (no values) the probe runs a copy on the CPU; the new layer is on meta."""
    model = nn.Sequential(LayerNorm2d(8, device=device), Doubled(8, device=device))
    report = numeric.convert(model, "dyt")
    assert model[0].channels_last is False
    assert model[0].weight.device.type == torch.device(device).type
    assert isinstance(model[1], Doubled) and [s.name for s in report.skipped] == ["1"]


@pytest.mark.parametrize("device", VALUE_DEVICES)
@pytest.mark.parametrize("cls,why", [
    (Doubled, r"Doubled.forward\) computes no LayerNorm over the channels: channels last "
              r"input: differs by up to"),
    (EitherLayout, r"computes a LayerNorm in more than one layout"),
    (DroppedOut, r"channels last input: differs by up to [0-9.]+ \(in training\)"),
])
def test_a_subclass_with_an_unknown_forward_is_left_in_place(device, cls, why):
    """Never replaced by a guess: the norm stays, and the report names it with the reason."""
    norm = cls(8, device=device)
    model = nn.Sequential(nn.Linear(8, 8, device=device), norm, nn.LayerNorm(8, device=device))
    torch.manual_seed(5)
    report = numeric.convert(model, "dyt")
    drawn = torch.rand(3, device=device)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3, device=device))   # the probe drew nothing of ours
    assert model[1] is norm and isinstance(model[2], numeric.DyT)
    assert [r.name for r in report] == ["2"]
    (skipped,) = report.skipped
    assert skipped.name == "1" and skipped.old == repr(norm)
    assert f"1: skipped {cls.__name__}((8,)" in str(report)
    assert re.search(why, skipped.why), skipped.why
    alone = numeric.convert(norm, "dyt")              # the model itself: returned as it is
    assert alone.model is norm and len(alone) == 0 and alone.skipped[0].name == ""


@pytest.mark.parametrize("device", VALUE_DEVICES)
def test_a_channels_first_norm_stays_where_the_target_has_no_channels_first_form(device):
    model = nn.Sequential(LayerNorm2d(8, device=device), nn.LayerNorm(8, device=device))
    report = numeric.convert(model, "dyisru")
    assert isinstance(model[0], LayerNorm2d) and isinstance(model[1], numeric.DyISRU)
    (skipped,) = report.skipped
    assert skipped.name == "0"
    assert "channels first, and dyisru has no such form (channels_last=False); dyt has" \
        in skipped.why


def test_a_subclass_that_keeps_the_norms_forward_is_not_probed(monkeypatch):
    """No forward of its own: converted as before, without running it."""
    monkeypatch.setattr(importlib.import_module("numeric.convert"), "_layout",
                        lambda *a: pytest.fail("probed"))
    model = nn.Sequential(MyRMSNorm(8), numeric.LayerNorm(8))
    assert len(numeric.convert(model, "dyt")) == 2


# -- what the new layer keeps -------------------------------------------------------------------

@pytest.mark.parametrize("to", sorted(LAYERS))
def test_no_affine_parameters_stay_absent_in_the_models_dtype(to):
    """A LayerNorm without weight and bias in a bfloat16 model: the new layer is bfloat16, has
    no bias, and its weight is the target's default scale, frozen."""
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8, elementwise_affine=False)).bfloat16()
    numeric.convert(model, to)
    new, fresh = model[1], LAYERS[to](8, bias=False, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert new.bias is None and not new.weight.requires_grad
    assert torch.equal(new.weight, fresh.weight)
    model(torch.randn(4, 8, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    assert {n for n, p in new.named_parameters() if p.grad is not None} == \
        {n for n, _ in fresh.named_parameters()} - {"weight"}


def test_no_affine_dyt_is_tanh_alpha_x():
    model = nn.Sequential(nn.Linear(4, 4, dtype=torch.float64),
                          nn.LayerNorm(4, elementwise_affine=False, dtype=torch.float64))
    numeric.convert(model, "dyt", alpha_init=0.7)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert_close(model[1](x), torch.tanh(0.7 * x), what="DyT without affine")


@pytest.mark.parametrize("device", DEVICES)
def test_no_affine_norm_converts_on_the_models_device(device):
    model = nn.Sequential(nn.Linear(8, 8, device=device, dtype=torch.float16),
                          nn.LayerNorm(8, elementwise_affine=False, device=device))
    numeric.convert(model, "dyisru")
    assert {(p.device.type, p.dtype) for p in model[1].parameters()} == \
        {(torch.device(device).type, torch.float16)}


def test_bfloat16_model_gets_bfloat16_layers():
    model = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8),
                          nn.LayerNorm(8, elementwise_affine=False)).bfloat16()
    numeric.convert(model, "dyt")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_rmsnorm_gains_no_bias_unless_asked():
    model = nn.Sequential(nn.RMSNorm(8), nn.LayerNorm(8, bias=False), nn.LayerNorm(8))
    numeric.convert(model, "dyt")
    assert [m.bias is None for m in model] == [True, True, False]
    model = nn.Sequential(nn.RMSNorm(8))
    numeric.convert(model, "dyt", bias=True)
    assert torch.equal(model[0].bias, torch.zeros(8))


# -- torch's TransformerEncoder -----------------------------------------------------------------

def _by_hand(enc: nn.TransformerEncoder, x, mask):
    """The encoder's layers applied submodule by submodule (dropout 0)."""
    for layer in enc.layers:
        def sa(h):
            return layer.self_attn(h, h, h, key_padding_mask=mask, need_weights=False)[0]

        def ff(h):
            return layer.linear2(layer.activation(layer.linear1(h)))

        if layer.norm_first:
            x = x + sa(layer.norm1(x))
            x = x + ff(layer.norm2(x))
        else:
            x = layer.norm1(x + sa(x))
            x = layer.norm2(x + ff(x))
    return x


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_converted_transformer_encoder_runs_the_same_in_eval(norm_first, masked):
    """torch's fused inference path would read the norms' eps and run a LayerNorm; the
    converted encoder runs its layers' submodules in eval as in training."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=not norm_first)
    report = numeric.convert(enc, "dyt", alpha_init=0.8)
    x = torch.randn(3, 5, 16)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask = mask if masked else None
    with torch.no_grad():
        ref = _by_hand(enc, x, mask)
        train = enc.train()(x, src_key_padding_mask=mask)
        evaluated = enc.eval()(x, src_key_padding_mask=mask)
    assert torch.allclose(train, ref, atol=1e-6) and torch.allclose(evaluated, ref, atol=1e-6)
    assert torch.allclose(enc.eval()(x, src_key_padding_mask=mask), ref, atol=1e-6)  # with grad
    assert len(report) == 4 and report.unfused == ["", "layers.0", "layers.1"]


# -- checkpoints of the published DyT layer -----------------------------------------------------

class PublishedDyT(nn.Module):
    """The DyT paper's layer as published: alpha of shape (1,); with channels_last False the
    input is (N, C, H, W) and weight, bias broadcast over the channels."""

    def __init__(self, C, channels_last, alpha_init_value=0.5):
        super().__init__()
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            return x * self.weight + self.bias
        return x * self.weight[:, None, None] + self.bias[:, None, None]


@pytest.mark.parametrize("channels_last,shape", [(True, (2, 5, 6)), (False, (2, 6, 3, 4))])
def test_published_dyt_checkpoint_loads_and_computes_the_same(channels_last, shape):
    torch.manual_seed(1)
    theirs = PublishedDyT(6, channels_last).double()
    with torch.no_grad():
        theirs.alpha.fill_(0.8)
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = numeric.DyT(6, channels_last=channels_last, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    assert ours.alpha.shape == () and ours.alpha.item() == 0.8
    x = torch.randn(shape, dtype=torch.float64)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    up = torch.randn(shape, dtype=torch.float64)
    yo, yt = ours(xo), theirs(xt)
    yo.backward(up)
    yt.backward(up)
    assert_close(yo, yt, what="y")
    assert_close(xo.grad, xt.grad, what="grad x")
    # the parameter gradients are sums: judged against a bound on the size of their terms
    terms = float(up.abs().sum() * (1 + x.abs().max()) * (1 + theirs.weight.detach().abs().max()))
    for name in ("alpha", "weight", "bias"):
        got, ref = getattr(ours, name).grad, getattr(theirs, name).grad
        assert_close(got, ref.reshape(got.shape), scale=terms, what=f"grad {name}")


def test_published_checkpoint_keeps_our_dtype():
    ours = numeric.DyT(6, dtype=torch.bfloat16)
    ours.load_state_dict(PublishedDyT(6, True).state_dict())
    assert ours.alpha.shape == () and ours.alpha.dtype == torch.bfloat16


def test_channels_first_input_must_have_the_channels_at_dim_1():
    layer = numeric.DyT(6, channels_last=False)
    with pytest.raises(ValueError, match=r"input must be \(N, 6, \.\.\.\) with channels_last"):
        layer(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="channels_last"):
        layer(torch.randn(6))
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        numeric.DyT(6, channels_last="no")
    assert "channels_last=False" in repr(layer)
