"""The lm experiment: a byte-level language model with each norm (its quick configuration)."""
from __future__ import annotations

import math

import pytest
import torch

from numeric import DyISRU, DyT, Derf
from numeric.experiments import lm as L

QUICK = L.SIZES[True]


@pytest.fixture(scope="module")
def run_once(tmp_path_factory):
    """(out, result, the process settings before the run, after it)."""
    out = tmp_path_factory.mktemp("lm")
    settings = lambda: (torch.are_deterministic_algorithms_enabled(),  # noqa: E731
                        torch.get_num_threads(), L.flush_denormal_on())
    before = settings()
    result = L.run(out, quick=True, progress=lambda msg: None)
    return out, result, before, settings()


def _numbers(result: dict) -> dict:
    """The result without its wall times (the only part that may differ between runs)."""
    return {k: v for k, v in result.items() if k != "timing"}


def test_outputs_written_and_linked(run_once):
    out, r, *_ = run_once
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## lm")
    for stem in ("lr_sweep", "loss_curves", "validation_loss", "saturation"):
        assert (out / f"{stem}.png").stat().st_size > 0
        assert f"]({stem}.png)" in summary
    for stem in ("lr_sweep", "validation_loss", "comparisons", "saturation", "step_time",
                 "input_rms", "learned_scalars"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").exists()
    assert (out / "loss_curves.csv").exists()
    for norm in L.NORMS:
        assert f"| {norm} |" in summary, norm
    # the claims quoted, with the papers' numbers
    for needle in ("Zhu et al. 2025", "Chen et al. 2025", "Stollenwerk 2026", "Verma 2026",
                   "3.209", "3.349", "3.307", "+18.8%", "49%"):
        assert needle in summary, needle
    assert f"Python {r['python']}" in summary and f"{r['corpus']['bytes']:,} bytes" in summary


def test_every_norm_trained_finite_and_below_uniform_bytes(run_once):
    _, r, *_ = run_once
    assert list(r["validation"]) == list(L.NORMS) and len(L.NORMS) == 6
    for norm, s in r["validation"].items():
        assert len(s["seeds"]) == QUICK["seeds"] >= 3, norm
        assert all(math.isfinite(v) and v < math.log(256) for v in s["seeds"]), norm
        assert set(r["lr_sweep"][norm]) == {f"{lr:g}" for lr in QUICK["lrs"]}
        assert r["chosen_lr"][norm] == min(QUICK["lrs"],
                                           key=lambda lr: r["lr_sweep"][norm][f"{lr:g}"])
        assert not r["diverged"][norm]


def test_end_state_has_every_norm_and_layer(run_once):
    _, r, *_ = run_once
    layers = {f"{i + 1} {k}" for i in range(QUICK["layers"]) for k in ("attn", "mlp")} | {"final"}
    assert list(r["end_state"]) == list(L.NORMS)
    for norm, state in r["end_state"].items():
        assert set(state) == layers, norm
        assert all(v["input_rms"] > 0 for v in state.values())
    assert set(r["end_state"]["DyT"]["final"]) == {"input_rms", "alpha"}
    assert set(r["end_state"]["Derf"]["final"]) == {"input_rms", "alpha", "shift"}
    assert set(r["end_state"]["DyISRU"]["final"]) == {"input_rms", "beta"}
    assert set(r["end_state"]["LayerNorm"]["final"]) == {"input_rms"}


def test_unigram_loss_is_the_cross_entropy_of_byte_frequencies():
    train = torch.tensor([0, 0, 1, 1], dtype=torch.uint8)
    # add-one smoothing over 256 bytes: p(0) = p(1) = 3 / 260
    assert L.unigram_loss(train, torch.tensor([0, 1], dtype=torch.uint8)) == pytest.approx(
        -math.log(3 / 260))


def test_training_lowers_the_loss(run_once):
    """From about ln 256 at init (a head of small weights) to well below it: training works."""
    _, r, *_ = run_once
    for norm in L.NORMS:
        assert abs(r["first_loss"][norm] - math.log(256)) < 0.1, norm
        assert r["final_train_loss"][norm] < r["first_loss"][norm] - 1.0, norm
        assert r["validation"][norm]["mean"] < r["first_loss"][norm] - 1.0, norm


def test_every_norm_starts_from_the_same_weights_outside_the_norms(run_once):
    _, r, *_ = run_once
    prints = r["init_fingerprint"]
    for seed in range(QUICK["seeds"]):
        assert len({prints[n][seed] for n in L.NORMS}) == 1, seed
    assert len({prints["LayerNorm"][s] for s in range(QUICK["seeds"])}) == QUICK["seeds"]
    # and directly: the same tensors, the norms themselves of their own kinds
    models = {n: L.build(n, 0, QUICK) for n in L.NORMS}
    ref = models["LayerNorm"]
    shared = {k: v for k, v in ref.named_parameters() if not L.is_norm_param(ref, k)}
    assert "tok.weight" in shared and "blocks.0.attn.qkv.weight" in shared
    for norm, m in models.items():
        own = {k: v for k, v in m.named_parameters() if not L.is_norm_param(m, k)}
        assert own.keys() == shared.keys(), norm
        assert all(torch.equal(own[k], shared[k]) for k in shared), norm
    assert isinstance(models["DyT"].blocks[0].n1, DyT)
    assert isinstance(models["Derf"].final, Derf)
    assert isinstance(models["DyISRU"].blocks[-1].n2, DyISRU)


def test_llama_rule_gives_the_attention_norms_their_own_alpha():
    make = L.NORMS["DyT (LLaMA alpha)"]
    assert make(4096, "attention").alpha.item() == pytest.approx(0.8)
    assert make(4096, "other").alpha.item() == pytest.approx(0.2)
    m = L.build("DyT (LLaMA alpha)", 0, QUICK)          # width 32: the rule clamps to 1024's
    assert m.blocks[0].n1.alpha.item() == m.blocks[0].n2.alpha.item() == 1.0
    assert L.build("DyT", 0, QUICK).blocks[0].n1.alpha.item() == 0.5


def test_saturation_fractions_are_fractions_per_layer(run_once):
    _, r, *_ = run_once
    sat = r["saturation"]
    assert set(sat) == set(L.SATURATING)
    layers = {f"{i + 1} {k}" for i in range(QUICK["layers"]) for k in ("attn", "mlp")} | {"final"}
    for norm, s in sat.items():
        assert set(s["layers"]) == layers, norm
        assert s["tokens"][0] == 0 and s["tokens"] == sorted(s["tokens"])
        assert s["tokens"][-1] == r["tokens_per_run"]
        for v in [*s["layers"].values(), s["mean"]]:
            assert len(v) == len(s["tokens"]) and all(0.0 <= x <= 1.0 for x in v), norm
    # at init the stream has unit RMS: tanh(0.5 x) is nowhere near flat
    assert sat["DyT"]["mean"][0] < 0.01


def test_saturation_thresholds_are_one_percent_of_the_peak_slope():
    assert 1 / math.cosh(L.TANH_SAT) ** 2 == pytest.approx(0.01)
    assert math.exp(-L.ERF_SAT ** 2) == pytest.approx(0.01)
    assert (1 / (1 + L.ISRU_SAT)) ** 1.5 == pytest.approx(0.01)
    x = torch.tensor([0.0, 2.9, 3.1, -3.1, 6.0])
    dyt = DyT(5, alpha_init=1.0)
    assert L.saturated(dyt, x).tolist() == [False, False, True, True, True]
    derf = Derf(5, alpha_init=1.0, shift_init=1.0)                   # |x + 1| > 2.146
    assert L.saturated(derf, x).tolist() == [False, True, True, False, True]
    isru = DyISRU(5, beta_init=0.25)                                  # |x| > 0.5 sqrt(20.54)
    assert L.saturated(isru, torch.tensor([2.2, 2.3, -2.3])).tolist() == [False, True, True]


def test_paired_comparison_sees_what_the_standard_errors_miss():
    """Seeds that move both norms alike: a constant difference is supported when paired."""
    c = L.compare([1.0, 2.0, 3.0], [1.1, 2.1, 3.1])
    assert c["paired"] and not c["unpaired"] and c["a_lower"] == 3
    c = L.compare([1.0, 2.0, 3.0], [1.1, 1.9, 3.05])
    assert not c["paired"]


def test_corpus_split_by_file_and_deterministic():
    data, desc = L.load_corpus(QUICK["corpus_mb"])
    again, desc2 = L.load_corpus(QUICK["corpus_mb"])
    assert desc == desc2 and all(torch.equal(data[k], again[k]) for k in data)
    assert sum(desc["split_bytes"].values()) == desc["bytes"] <= QUICK["corpus_mb"] * 1e6
    assert all(desc["split_files"][k] >= 1 for k in ("train", "held_out", "validation"))
    assert [L.split_of(i) for i in range(10)].count("train") == 8


def test_two_quick_runs_give_identical_numbers_and_restore_the_settings(run_once, tmp_path):
    _, r, before, after = run_once
    assert after == before
    again = L.run(tmp_path, quick=True, progress=lambda msg: None)
    assert _numbers(again) == _numbers(r)
