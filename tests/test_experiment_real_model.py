"""The real-model experiment on all-MiniLM-L6-v2 (loaded for real, offline, a few sentences)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from numeric.experiments import real_model as R

C = 384
#: |y| <= sqrt(C-1) ~ 19.6, so float64 rounding leaves errors near 19.6 * 2.2e-16 ~ 4e-15.
IDENTITY_TOL = 1e-13


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-model")
    return out, R.run(out, quick=True, progress=lambda msg: None)


# --- the model run ------------------------------------------------------------------------

def test_thirteen_layer_norms_on_real_tokens(result):
    _, r = result
    assert list(r["identity"]) == ["emb"] + [f"L{i} {b}" for i in range(6) for b in ("attn", "ffn")]
    assert r["sentences"] == R.SIZES[True]["sentences"] and r["tokens"] > 10 * r["sentences"]


def test_identity_holds_to_float64_precision(result):
    """LayerNorm(x)_i = sqrt(C-1)(x_i - m_i)/sqrt(beta_i + (x_i - m_i)^2) on every captured
    token and channel of every layer."""
    _, r = result
    assert 0 <= r["identity_max"] < IDENTITY_TOL


def test_recomputed_normalization_matches_the_module(result):
    """(out - bias)/weight equals (x - mu)/sqrt(var + eps) to float32 precision."""
    _, r = result
    assert r["affine_max"] < 8


def test_dyisru_beats_dyt_on_the_extremes_only_where_the_massive_activations_are(result):
    """What the fits show (both shifted, bound sqrt(C-1), two parameters each), RMS error on the
    most extreme 1%: DyISRU is lower on the embedding and feed-forward LayerNorms (whose inputs
    carry the massive activations, |x| up to ~200) and higher on the attention ones."""
    _, r = result
    fits = r["fits"]
    wins = {n: f["DyISRU shift"]["rms_extreme"] < f["DyT shift"]["rms_extreme"]
            for n, f in fits.items()}
    attn = [n for n in wins if n.endswith("attn")]
    rest = [n for n in wins if not n.endswith("attn")]
    assert sum(wins[n] for n in rest) >= len(rest) - 2
    assert sum(wins[n] for n in attn) <= 1


def test_fit_errors_are_finite_and_extremes_are_worse(result):
    _, r = result
    for name, fits in r["fits"].items():
        for form, f in fits.items():
            assert 0 < f["rms"] < f["rms_extreme"] < math.sqrt(C - 1), (name, form)


def test_embedding_cosines(result):
    _, r = result
    for kind, runs in r["replacement"].items():
        for label, cos in runs.items():
            assert -1 <= cos["min"] <= cos["mean"] <= 1 + 1e-12, (kind, label)
    dyisru = r["replacement"]["DyISRU"]
    assert dyisru["all"]["mean"] > 0.7
    assert min(v["mean"] for k, v in dyisru.items() if k != "all") > 0.95


def test_outputs_written_and_linked(result):
    out, r = result
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## real-model")
    for stem in ("s_curves", "fit_errors", "replacement", "conversion", "drift"):
        assert (out / f"{stem}.png").stat().st_size > 0 and f"]({stem}.png)" in summary
    for stem in ("identity", "fit_rms", "fit_rms_extreme", "fit_params", "replacement",
                 "conversion", "conversion_layers", "conversion_tokens"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").exists()
    assert f"{r['identity_max']:.3g}" in summary
    assert "MATH.md" not in summary and "DESIGN.md" not in summary     # self-contained


def test_every_conversion_method_and_target(result):
    """Each target has the three methods measured on the held-out sentences; fitting in order
    beats independent fits, and the curve starts at the in-order fits and has every step."""
    _, r = result
    c = r["conversion"]
    assert c["calibrate"] + c["held_out"] == r["sentences"] and c["steps"] == R.SIZES[True]["steps"]
    assert list(c["targets"]) == list(R.TARGETS)
    for label, res in c["targets"].items():
        for method in R.METHODS:
            m = res[method]
            assert -1 <= m["min"] <= m["mean"] <= 1 and 0 <= m["nn"] <= 1, (label, method)
        assert res["sequential"]["mean"] > res["independent"]["mean"] + 0.02, label
        assert [step for step, *_ in res["curve"]] == list(range(c["steps"] + 1))
        assert res["curve"][0][1:] == tuple(res["sequential"].values())
        assert res["clock"]["distil"][1] > 0 and len(res["history"]) == c["steps"]
        assert set(res["drift_distilled"]) == set(res["tokens"]) == set(r["identity"])


def test_time_is_accounted_by_phase(result):
    _, r = result
    assert math.isclose(sum(w for w, _ in r["clock"].values()), r["seconds"])
    assert r["seconds_outside_distillation"] == r["seconds"] - r["clock"]["distillation"][0]


# --- the pieces, without the model ----------------------------------------------------------

def _tokens(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """Tokens with a per-token offset and scale, and one massive channel in some of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g,
                                                                            dtype=torch.float64) * 3
    x += torch.randn(n, 1, generator=g, dtype=torch.float64)
    x[::3, c // 2] += 200.0
    return x


@pytest.mark.parametrize("c", [2, 3, 16, C])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5])
def test_identity_form_is_layer_norm(c, eps):
    x = _tokens(12, c)
    y = R.normalized(x, eps)
    assert (R.identity_form(x, eps) - y).abs().max().item() < IDENTITY_TOL


def test_others_mean_and_q_by_definition():
    x = _tokens(3, 7)
    m, q = R.others_mean_and_q(x)
    for t in range(3):
        for i in range(7):
            others = torch.cat([x[t, :i], x[t, i + 1:]])
            assert math.isclose(m[t, i].item(), others.mean().item(), rel_tol=1e-14, abs_tol=1e-14)
            assert math.isclose(q[t, i].item(), ((others - others.mean()) ** 2).sum().item(),
                                rel_tol=1e-13)


@pytest.mark.parametrize("kind", list(R.REPLACEMENTS))
def test_replacement_layer_is_the_fitted_form_with_the_affine(kind):
    """numeric's DyTLN / DyISRULN built from a fit compute ln.weight * f(x) + ln.bias."""
    form_name, build = R.REPLACEMENTS[kind]
    ln = nn.LayerNorm(8, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2.0)
        ln.bias.uniform_(-1.0, 1.0)
    params = {"alpha": 0.3, "beta": 5.0, "gamma": 1.7, "shift": 0.25}
    form = R.FORMS[form_name]
    p = {k: params[k] for k in form.params}
    x = _tokens(5, 8) / 20
    got = build(ln, p)(x).detach().numpy()
    want = ln.weight.detach().numpy() * form.f(x.numpy(), 8, *p.values()) + ln.bias.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_swapped_restores_the_modules():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.LayerNorm(2)))
    original = model[1][0]
    with R.swapped(model, {"1.0": nn.Identity()}):
        assert isinstance(model[1][0], nn.Identity)
    assert model[1][0] is original


def test_short_names():
    assert R.short_name("0.model.embeddings.LayerNorm") == "emb"
    assert R.short_name("0.model.encoder.layer.3.attention.output.LayerNorm") == "L3 attn"
    assert R.short_name("0.model.encoder.layer.5.output.LayerNorm") == "L5 ffn"


def test_split_is_seeded_disjoint_and_sorted_by_length():
    sentences = [f"sentence {'x' * (i % 7)} {i}" for i in range(30)]
    cal, held = R.split(sentences, 20)
    assert (cal, held) == R.split(sentences, 20)
    assert len(cal) == 20 and sorted(cal + held) == sorted(sentences)
    assert [len(s) for s in cal] == sorted(len(s) for s in cal)


def test_agreement_by_definition():
    """Cosine to the original per row, and the share of rows whose nearest other row (by
    cosine) is the same under both: computed here by brute force."""
    g = torch.Generator().manual_seed(0)
    original = torch.randn(9, 5, generator=g, dtype=torch.float64)
    emb = original + 0.6 * torch.randn(9, 5, generator=g, dtype=torch.float64)

    def nearest(e):
        cos = [[(e[i] @ e[j] / (e[i].norm() * e[j].norm())).item() for j in range(9)]
               for i in range(9)]
        return [max((j for j in range(9) if j != i), key=lambda j: cos[i][j]) for i in range(9)]

    want = np.mean([a == b for a, b in zip(nearest(emb), nearest(original))])
    cos = [(emb[i] @ original[i] / (emb[i].norm() * original[i].norm())).item() for i in range(9)]
    got = R.agreement(emb, original)
    assert got["nn"] == want and 0 < want < 1
    assert math.isclose(got["mean"], np.mean(cos)) and math.isclose(got["min"], min(cos))


def test_fit_recovers_known_parameters():
    """Least squares on points of a known DyISRU (shifted) gives its parameters back."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 10.0, 5000)
    y = R.FORMS["DyISRU shift"].f(x, C, 40.0, 1.5)
    p = R.fit_form(R.FORMS["DyISRU shift"], x, y, C, s2=20.0, mean=0.0)
    assert math.isclose(p["beta"], 40.0, rel_tol=1e-6)
    assert math.isclose(p["shift"], 1.5, rel_tol=1e-6)


def test_per_channel_scalars_are_measured(result):
    """The per-channel run starts from the same fit and distils as many steps; the summary
    says whether it buys accuracy."""
    out, r = result
    pc = r["conversion"]["per_channel"]
    assert pc["target"] == R.PER_CHANNEL_TARGET
    m = pc["distilled"]
    assert -1 <= m["min"] <= m["mean"] <= 1 and 0 <= m["nn"] <= 1
    summary = (out / "summary.md").read_text()
    assert "Per-channel scalars" in summary and "alpha and shift per channel" in summary


def test_per_channel_layer_starts_as_the_fitted_layer():
    """PerChannelDyTLN (the eager formula, alpha and shift of shape (C,)) computes what the
    numeric.DyTLN it starts from computes."""
    import numeric

    g = torch.Generator().manual_seed(0)
    layer = numeric.DyTLN(6, alpha_init=0.7, shift_init=0.2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=g))
        layer.bias.copy_(torch.randn(6, generator=g))
    per = R.PerChannelDyTLN(layer)
    assert per.alpha.shape == per.shift.shape == (6,)
    x = 3 * torch.randn(4, 6, generator=g)
    torch.testing.assert_close(per(x), layer(x))
