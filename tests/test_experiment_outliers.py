"""The outlier experiment: the paper's numbers (the paper's protocol), the exactness of DyISRU
in the RMSNorm variant, and where the advantage breaks in the extension."""
from __future__ import annotations

import numpy as np
import pytest

from numeric.experiments import outliers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outliers")
    return out, outliers.run(out, quick=True, progress=lambda msg: None)


def case(result, norm, tokens, k, c):
    (row,) = [r for r in result["further"]
              if (r["norm"], r["tokens"], r["outliers"], r["C"]) == (norm, tokens, k, c)]
    return row


def test_paper_token_is_seed_1_legacy_stream():
    state = np.random.get_state()
    try:
        np.random.seed(1)
        expected = np.sort(np.random.normal(0, 2, 100))
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(outliers.paper_token(), expected)


def test_paper_layernorm_numbers(run):
    """The paper's protocol gives, with LayerNorm and sqrt(C-1): alpha = 0.048610,
    beta = 301.06, mean absolute residuals 0.32788 (DyT) and 0.0048142 (DyISRU)."""
    ln = run[1]["paper"]["layernorm"]
    assert ln["alpha"] == pytest.approx(0.048610, rel=1e-4)
    assert ln["beta"] == pytest.approx(301.06, rel=1e-4)
    assert ln["mae_dyt"] == pytest.approx(0.32788, rel=1e-3)
    assert ln["mae_dyisru"] == pytest.approx(0.0048142, rel=1e-3)


def test_paper_claim_dyisru_far_better_than_dyt(run):
    ln = run[1]["paper"]["layernorm"]
    assert ln["mae_dyisru"] < ln["mae_dyt"] / 50


def test_layernorm_shift_and_beta_are_shared_and_exact(run):
    """m = 0.078237 and beta = C Q / (C-1) = 298.14 are the same for all 9 tokens, and the
    shifted DyISRU with them is LayerNorm to rounding."""
    ln = run[1]["paper"]["layernorm"]
    assert ln["exact_constant"]
    assert ln["exact_shift"] == pytest.approx(0.078237, rel=1e-4)
    assert ln["exact_beta"] == pytest.approx(298.14, rel=1e-4)
    assert ln["mae_exact"] < 1e-12


def test_rmsnorm_variant_dyisru_is_exact(run):
    """RMSNorm and sqrt(C): the fitted beta is S = 295.76176 (the other channels' sum of
    squares, the same for all 9 tokens), the residual is rounding; DyT's alpha = 0.049012."""
    rms = run[1]["paper"]["rmsnorm"]
    assert rms["mae_dyisru"] < 1e-9
    assert rms["mae_exact"] < 1e-9
    assert rms["exact_constant"]
    assert rms["exact_beta"] == pytest.approx(295.76176, rel=1e-7)
    assert rms["beta"] == pytest.approx(rms["exact_beta"], rel=1e-9)
    assert rms["alpha"] == pytest.approx(0.049012, rel=1e-4)
    assert rms["mae_dyt"] > 0.1


def test_exact_beta_makes_dyisru_equal_rmsnorm_on_every_channel():
    token = np.random.default_rng(3).normal(0, 2, 50)
    y = outliers.rms_norm(token[None])[0]
    for i in (0, 17, 49):
        _, beta = outliers.rms_exact(np.delete(token, i)[None])
        assert outliers.dyisru(token[i], beta[0], np.sqrt(50)) == pytest.approx(y[i], rel=1e-13)


def test_further_one_token_one_outlier_is_exact_with_rmsnorm(run):
    for c in outliers.FURTHER[True]["widths"]:
        row = case(run[1], "rmsnorm", 1, 1, c)
        assert row["verdict"] == "exact" and row["mae_dyisru"] < 1e-9 and row["beta_spread"] == 0


def test_further_several_outliers_break_the_fixed_bound(run):
    """Outliers that move together share S: with gamma = sqrt(C) both forms fail alike;
    a fitted gamma lands at sqrt(C / k)."""
    n, k = outliers.FURTHER[True]["tokens"][0], max(outliers.FURTHER[True]["outliers"])
    c = max(outliers.FURTHER[True]["widths"])
    row = case(run[1], "rmsnorm", n, k, c)
    assert row["ratio"] < 2 and row["verdict"] == "lost"
    assert row["mae_dyisru"] > 0.1
    assert row["gamma_dyisru_free"] == pytest.approx(np.sqrt(c / k), rel=0.02)


def test_further_many_tokens_no_longer_exact_but_better_when_wider(run):
    many = max(outliers.FURTHER[True]["tokens"])
    narrow, wide = outliers.FURTHER[True]["widths"]
    rows = [case(run[1], "rmsnorm", many, 1, c) for c in (narrow, wide)]
    assert all(r["mae_dyisru"] > 1e-3 and r["beta_spread"] > 0.01 for r in rows)
    assert rows[1]["beta_spread"] < rows[0]["beta_spread"]
    assert rows[1]["ratio"] > rows[0]["ratio"] > 1


def test_verdicts_follow_the_table():
    assert [outliers.verdict(r) for r in (1e14, 50.0, 3.0, 1.5, 0.5)] == [
        "exact", "holds", "weakened", "lost", "lost"]


def test_outputs_written(run):
    out, result = run
    for stem in ("outliers_fit", "outliers_further"):
        data = (out / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    for stem in ("outliers_paper", "outliers_further", "outliers_ratio_fixed",
                 "outliers_ratio_fitted"):
        assert (out / f"{stem}.csv").read_text().count("\n") >= 3
        assert (out / f"{stem}.md").read_text().startswith("| ")
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## outliers")
    assert "![" in summary and "(outliers_fit.png)" in summary and "| rmsnorm |" in summary
    import json
    json.dumps(result)
