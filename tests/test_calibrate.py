"""numeric.convert(..., calibrate=batches): fits, distillation, what stays frozen, memory.

Small models, a few steps: every claim is checked against torch's own LayerNorm and
cosine on a copy of the original model, never against numbers the calibration reports.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
import weakref

import pytest
import torch
from torch import nn

import numeric
from numeric import calibrate
from numeric.modules import LAYERS

C = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny ops: one intra-op thread is faster, and steady on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Probe(nn.Module):
    """Identity that records a weak reference to the storage of every output it makes:
    ``peak`` is the most of them alive at once, so activations kept anywhere (a graph, a
    cache, a view) count until their memory is freed."""

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def forward(self, x):
        y = x * 1.0
        self.log[:] = [r for r in self.log if r() is not None]
        self.log.append(weakref.ref(y.untyped_storage()))
        Probe.peak = max(Probe.peak, len(self.log))
        return y


def make(seed: int = 0, probes: list | None = None) -> nn.Sequential:
    """Three LayerNorms (affine weight and bias) between linear layers; with ``probes``, a
    Probe after each linear layer."""
    torch.manual_seed(seed)
    log = probes if probes is not None else None

    def p():
        return [Probe(log)] if log is not None else []

    m = nn.Sequential(nn.Linear(8, C), *p(), nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), *p(),
                      nn.LayerNorm(C), nn.Linear(C, C), *p(), nn.LayerNorm(C), nn.Linear(C, 4))
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return m


def data(seed: int, n: int, shape=(4, 6, 8)) -> list[torch.Tensor]:
    """Tokens whose scale varies from token to token (what a LayerNorm undoes)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 3
            for _ in range(n)]


CAL, HELD = data(1, 6), data(2, 3)


def held_cosines(model, original, batches=HELD) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([nn.functional.cosine_similarity(model(b), original(b), dim=-1).flatten()
                          for b in batches])


# -- what the calibration does -----------------------------------------------------------------

@pytest.mark.parametrize("to", sorted(LAYERS))
def test_fits_lower_each_layers_error_against_its_norm(to):
    """Every layer fits its LayerNorm better than as built; the first one (same inputs in
    both models) by the error recomputed here with torch's LayerNorm on all its tokens."""
    original, model = make(), make()
    report = numeric.convert(model, to, calibrate=CAL, progress=False)
    rows = report.calibration.layers
    assert [r.name for r in rows] == ["1", "4", "6"]
    assert all(r.fitted < r.before for r in rows)
    x = torch.cat([original[0](b).reshape(-1, C) for b in CAL]).detach()
    with torch.no_grad():
        want, got = original[1](x).double(), model[1](x).double()
    err = ((got - want).norm() / want.norm()).item()
    assert math.isclose(rows[0].fitted, err, rel_tol=1e-4)


@pytest.mark.parametrize("to", ["dyt_ln", "dyisru_ln", "derf"])
def test_distillation_brings_the_model_closer_than_the_fits(to):
    original = make()
    fitted, distilled = make(), make()
    numeric.convert(fitted, to, calibrate=CAL, progress=False)
    report = numeric.convert(distilled, to, calibrate=CAL, steps=30, lr=1e-2, held_out=HELD,
                             progress=False)
    before, after = held_cosines(fitted, original), held_cosines(distilled, original)
    assert after.mean() > before.mean() + 0.03
    cos = report.calibration.cosine
    assert math.isclose(cos["distilled"][0], after.double().mean().item(), rel_tol=1e-5)
    assert math.isclose(cos["fitted"][0], before.double().mean().item(), rel_tol=1e-5)


def test_distillation_changes_the_new_layers_only_and_restores_the_model():
    """Every other parameter is bitwise the same; requires_grad flags and the training mode
    are as they were; a frozen weight (a norm without affine) stays frozen and unchanged."""
    model = make()
    model[4] = nn.LayerNorm(C, elementwise_affine=False)
    model[0].weight.requires_grad_(False)
    model.train()
    norms = ("1.", "4.", "6.")
    before = {n: p.detach().clone() for n, p in model.named_parameters()
              if not n.startswith(norms)}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    numeric.convert(model, "dyt_ln", calibrate=CAL, steps=5, progress=False)
    assert model.training
    for n, p in model.named_parameters():
        if not n.startswith(norms):
            assert torch.equal(p, before[n]) and p.requires_grad == flags[n], n
    assert {n for n, _ in model[1].named_parameters()} == {"alpha", "shift", "weight", "bias"}
    assert all(p.requires_grad for p in [*model[1].parameters(), *model[6].parameters()])
    assert model[4].bias is None and not model[4].weight.requires_grad
    assert torch.equal(model[4].weight, torch.ones(C))          # dyt_ln's default weight


def test_deterministic_given_a_seed():
    runs = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        model = make()
        numeric.convert(model, "dyisru_ln", calibrate=CAL, steps=8, seed=seed, progress=False)
        runs[key] = model.state_dict()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_a_generator_of_batches_is_read_once_and_kept():
    model, other = make(), make()
    numeric.convert(model, "derf", calibrate=(b for b in CAL), steps=7, progress=False)
    numeric.convert(other, "derf", calibrate=CAL, steps=7, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


def test_a_norm_as_the_model_is_calibrated():
    ln = nn.LayerNorm(C)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    xs = data(3, 4, (5, C))
    report = numeric.convert(ln, "dyisru_ln", calibrate=xs, steps=5, held_out=xs[:1],
                             progress=False)
    (row,) = report.calibration.layers
    assert isinstance(report.model, numeric.DyISRULN) and row.fitted < row.before
    cos = report.calibration.cosine
    assert cos["fitted"][0] < cos["distilled"][0] <= 1


# -- channels-first norms --------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm: over dim 1 of (N, C, H, W)."""

    def forward(self, x):
        return nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape,
                                        self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize("device", [pytest.param("cpu"),
                                    pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_channels_first_norm_is_fitted_over_its_channels(device):
    """A LayerNorm2d after a convolution becomes a channels-first DyT; its fit reads the
    channels at dim 1: the error it reports is the one recomputed here on every position."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8), nn.Conv2d(8, 4, 3),
                          nn.Flatten(2)).to(device)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.3, 0.3)
    original, fitted = copy.deepcopy(model), copy.deepcopy(model)
    g = torch.Generator().manual_seed(4)
    xs = [(torch.randn(2, 3, 9, 11, generator=g) * (1 + 3 * torch.rand(2, 1, 9, 11,
                                                                         generator=g))).to(device)
          for _ in range(3)]
    numeric.convert(fitted, "dyt", calibrate=xs, fit_tokens=10_000, progress=False)
    report = numeric.convert(model, "dyt", calibrate=xs, steps=3, fit_tokens=10_000,
                             progress=False)
    assert model[1].channels_last is False and fitted[1].channels_last is False
    (row,) = report.calibration.layers
    with torch.no_grad():
        h = torch.cat([original[0](x) for x in xs])
        want = original[1](h).double()
        errors = [((m[1](h).double() - want).norm() / want.norm()).item()
                  for m in (fitted, model)]
    assert row.fitted < row.before
    assert math.isclose(row.fitted, errors[0], rel_tol=1e-4)
    assert math.isclose(row.distilled, errors[1], rel_tol=1e-4)


# -- how many batches are read ------------------------------------------------------------------

def test_an_endless_iterable_is_cut_at_max_batches():
    """itertools.cycle never ends: the first max_batches (64) are read, a warning says so, and
    the report says how many were used."""
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match=r"calibrate: took the first 64 batches of a cycle "
                                         r"that has more \(max_batches=64"):
        report = numeric.convert(make(), "dyt_ln", calibrate=itertools.cycle(CAL), steps=2,
                                 progress=False)
    assert time.perf_counter() - t0 < 30
    cal = report.calibration
    assert cal.batches == {"calibrate": (64, True)} and len(cal.calibration.batches) == 64
    assert "calibrate: the first 64 batches of an iterable that has more" in str(report)


def test_an_endless_generator_and_held_out_take_max_batches():
    def endless():
        for i in itertools.count():
            yield CAL[i % len(CAL)]

    with pytest.warns(UserWarning) as said:
        report = numeric.convert(make(), "dyt_ln", calibrate=endless(), max_batches=5,
                                 held_out=itertools.cycle(HELD), progress=False)
    assert sorted(str(w.message).split(" (")[0] for w in said) == [
        "calibrate: took the first 5 batches of a generator that has more",
        "held_out: took the first 5 batches of a cycle that has more"]
    assert all(w.filename == __file__ for w in said)      # the warning points at the call
    cal = report.calibration
    assert cal.batches == {"calibrate": (5, True), "held_out": (5, True)}
    assert list(cal.calibration.batches) == [CAL[i % len(CAL)] for i in range(5)]


def test_lists_are_taken_whole_and_a_short_iterable_with_no_warning():
    """A list or tuple is taken whole (max_batches bounds other iterables); an iterable that
    ends within max_batches is read to its end, and nothing is said."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = numeric.convert(make(), "dyt_ln", calibrate=CAL, held_out=tuple(HELD),
                                max_batches=2, progress=False)
        short = numeric.convert(make(), "dyt_ln", calibrate=iter(CAL), max_batches=len(CAL),
                                progress=False)
    assert whole.calibration.batches == {"calibrate": (6, False), "held_out": (3, False)}
    assert short.calibration.batches == {"calibrate": (6, False)}


# -- batches as dicts ---------------------------------------------------------------------------

class Keywords(nn.Module):
    """Takes its batch as keywords, as Hugging Face models do: model(**batch)."""

    def __init__(self):
        super().__init__()
        self.body = make()

    def forward(self, x, attention_mask=None):
        hidden = self.body[:-1](x)
        return {"hidden": hidden, "logits": self.body[-1](hidden)}


class OneDict(nn.Module):
    """Takes its batch as one dict, as sentence-transformers do: model(batch)."""

    def __init__(self):
        super().__init__()
        self.body = make()

    def forward(self, features: dict):
        return {"mask": features["attention_mask"], "logits": self.body(features["x"])}


def _padded(garbage: float) -> list[dict]:
    """Batches whose last two tokens are padding (attention_mask 0), filled with `garbage`."""
    out = []
    for x in CAL:
        x = x.clone()
        mask = torch.ones(x.shape[:-1], dtype=torch.long)
        mask[:, -2:] = 0
        x[:, -2:] = garbage
        out.append({"x": x, "attention_mask": mask})
    return out


@pytest.mark.parametrize("cls", [Keywords, OneDict])
def test_dict_batches_and_their_padding(cls):
    """A dict batch reaches the model as keywords or as one argument, whichever its forward
    takes; tokens the attention mask marks as padding take no part in the fits."""
    fitted = []
    for garbage in (0.0, 1e3):
        model = cls()
        numeric.convert(model, "dyt_ln", calibrate=_padded(garbage), output="logits",
                        progress=False)
        fitted.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*fitted))
    plain = make()
    numeric.convert(plain, "dyt_ln", calibrate=[b["x"][:, :-2] for b in _padded(0.0)],
                    progress=False)
    assert all(torch.allclose(p, q, rtol=1e-4, atol=1e-6)
               for p, q in zip(fitted[0], plain.parameters()))


def test_output_picks_the_tensor_to_compare():
    model = Keywords()
    with pytest.raises(TypeError, match="output must pick a floating-point tensor"):
        numeric.convert(model, "dyt_ln", calibrate=[{"x": CAL[0]}], output=lambda o: "no",
                        progress=False)
    with pytest.raises(ValueError, match="output: the model's output .dict. has no 'logit'"):
        numeric.convert(Keywords(), "dyt_ln", calibrate=[{"x": CAL[0]}], output="logit",
                        progress=False)
    report = numeric.convert(Keywords(), "dyt_ln", calibrate=[{"x": b} for b in CAL], steps=2,
                             output=lambda o: o["hidden"], progress=False)
    assert report.calibration.steps == 2


# -- memory ---------------------------------------------------------------------------------------

def test_no_more_than_two_batches_of_activations_at_once():
    """With a Probe after each linear layer (3 per forward), at no time are more than two
    forwards' worth of probe outputs alive: the original's and the converted one's."""
    log: list = []
    Probe.peak = 0
    model = make(probes=log)
    numeric.convert(model, "dyt_ln", calibrate=data(5, 12), steps=12, held_out=data(6, 4),
                    layer_loss=1.0, progress=False)
    assert 3 <= Probe.peak <= 6


def test_the_fits_read_fit_tokens_rows_from_as_few_batches_as_hold_them():
    """Batches of 4 x 6 = 24 tokens: 50 tokens take three batches (chosen at random), and
    each layer is fitted on exactly 50 rows."""
    report = numeric.convert(make(), "dyt_ln", calibrate=CAL, fit_tokens=50, progress=False)
    cal = report.calibration.calibration
    assert len(cal.fit_batches) == 3
    assert all(any(b is c for c in CAL) for b in cal.fit_batches)
    order = list(range(len(CAL)))
    for slot in cal.slots:
        x, y = cal._sample(slot, order, converted=True)
        assert x.shape == y.shape == (50, C)


# -- learning rates -------------------------------------------------------------------------------

@pytest.mark.parametrize("to,want", [
    ("dyt_ln", lambda a, s, w, o: {"alpha": a, "shift": s}),
    ("dyisru_ln", lambda a, s, w, o: {"log_beta": 2.0, "shift": s}),
    ("derf", lambda a, s, w, o: {"alpha": a, "shift": a * s}),
])
def test_learning_rates_scale_with_the_layers_input(to, want):
    """alpha moves relative to itself, an input shift in units of the input's s (Derf's
    inner shift alpha s), log beta by 2 (beta's relative change); weight and bias by the
    RMS of the weight and of the norm's output."""
    model = make()
    report = numeric.convert(model, to, calibrate=CAL, progress=False)
    slot = report.calibration.calibration.slots[1]
    s, _ = slot.stats
    layer = slot.new
    alpha = layer.alpha.item() if hasattr(layer, "alpha") else None
    w = layer.weight.detach().double().pow(2).mean().sqrt().item()
    got = calibrate._lr_scales(slot)
    expect = {**want(alpha, s, w, slot.out_rms), "weight": w, "bias": slot.out_rms}
    assert set(got) == set(expect)
    for k in expect:
        assert math.isclose(got[k], abs(expect[k]), rel_tol=1e-3), k


# -- errors and progress -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,needle", [
    ({"steps": 3}, ValueError, "steps needs calibrate"),
    ({"held_out": HELD}, ValueError, "held_out needs calibrate"),
    ({"calibrate": CAL, "steps": -1}, ValueError, "steps must be >= 0"),
    ({"calibrate": CAL, "steps": 2.5}, TypeError, "steps must be an int"),
    ({"calibrate": CAL, "lr": 0.0}, ValueError, "lr must be a finite number > 0"),
    ({"calibrate": CAL, "fit": "greedy"}, ValueError, "fit must be one of"),
    ({"calibrate": []}, ValueError, "calibrate must hold at least one batch"),
    ({"calibrate": CAL[0]}, TypeError, "calibrate must be an iterable of batches"),
    ({"calibrate": ["text"]}, TypeError, "calibrate: each batch must be a tensor"),
    ({"calibrate": CAL, "held_out": 3}, TypeError, "held_out must be an iterable"),
    ({"calibrate": iter([])}, ValueError, "calibrate must hold at least one batch"),
    ({"calibrate": CAL, "held_out": (b for b in [])}, ValueError,
     "held_out must hold at least one batch"),
    ({"calibrate": CAL, "max_batches": 0}, ValueError, "max_batches must be positive"),
    ({"calibrate": CAL, "max_batches": 2.0}, TypeError, "max_batches must be an int"),
    ({"max_batches": 8}, ValueError, "max_batches needs calibrate"),
])
def test_bad_calibration_options_name_the_argument(kwargs, error, needle):
    model = make()
    with pytest.raises(error, match=needle):
        numeric.convert(model, "dyt_ln", progress=False, **kwargs)


def test_progress_goes_to_stderr(capsys):
    numeric.convert(make(), "dyt_ln", calibrate=CAL, steps=4)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fit [" in captured.err and "distil [####################] 4/4" in captured.err
    numeric.convert(make(), "dyt_ln", calibrate=CAL, steps=4, progress=False)
    assert capsys.readouterr().err == ""


def test_the_report_prints_each_layer_and_the_cosines():
    report = numeric.convert(make(), "dyt_ln", calibrate=CAL, steps=3, held_out=HELD,
                             progress=False)
    text = str(report)
    assert text.splitlines()[0].startswith("1: LayerNorm((16,)")
    assert "held-out cosine to the original, fitted: mean" in text
    assert "held-out cosine to the original, distilled: mean" in text
    for r in report.calibration.layers:
        assert f"{r.fitted:9.4g}" in text and f"{r.distilled:9.4g}" in text
    assert copy.copy(report.calibration.history)[-1][0] == 3
