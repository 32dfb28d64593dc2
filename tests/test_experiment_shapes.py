"""The shapes experiment: linear per token, S-shaped over tokens, extremes on the outlier
channels; the two functions at matched slope and how they saturate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from numeric.experiments import shapes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def batch():
    tokens, channels = shapes.synthetic_tokens(shapes.CONFIG[True], np.random.default_rng(1))
    return shapes.rank_by_rms(tokens), channels


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, shapes.run(out, quick=True, progress=lambda msg: None)


def test_rmsnorm_is_linear_per_token(batch):
    tokens, _ = batch
    y = shapes.rms_norm(tokens)
    slopes = y / tokens
    np.testing.assert_allclose(slopes, slopes[:, :1].repeat(tokens.shape[1], 1), rtol=1e-12)
    np.testing.assert_allclose(slopes[:, 0], 1 / np.sqrt(np.mean(tokens**2, axis=1)), rtol=1e-12)


def test_layernorm_is_linear_per_token(batch):
    tokens, _ = batch
    y = shapes.layer_norm(tokens)
    for t in range(tokens.shape[0]):
        slope, intercept = np.polyfit(tokens[t], y[t], 1)
        np.testing.assert_allclose(slope * tokens[t] + intercept, y[t], atol=1e-10)


def test_s_shaped_overall(batch):
    """The point of largest |x| lies far below the line of the steepest token: saturation."""
    tokens, _ = batch
    y = shapes.rms_norm(tokens)
    steepest = 1 / np.sqrt(np.mean(tokens[0] ** 2))
    far = np.unravel_index(np.argmax(np.abs(tokens)), tokens.shape)
    assert abs(y[far]) < steepest * abs(tokens[far]) / 3
    assert np.max(np.abs(y)) < np.sqrt(tokens.shape[1])


def test_extremes_are_outlier_channels(batch):
    tokens, channels = batch
    y = shapes.rms_norm(tokens)
    assert np.unravel_index(np.argmax(np.abs(tokens)), tokens.shape)[1] in channels
    assert np.unravel_index(np.argmax(np.abs(y)), y.shape)[1] in channels


def test_global_fits_bounded_and_close(run):
    _, result = run
    c = shapes.CONFIG[True]["C"]
    for norm, fits in result["fits"].items():
        for name, fit in fits.items():
            assert 0 < fit["gamma"] <= 1.1 * np.sqrt(c), (norm, name)
            assert fit["mae"] < 0.1 * fit["gamma"], (norm, name)
        assert fits["dyt"]["alpha"] > 0 and fits["dyisru"]["beta"] > 0


def test_matched_slope_at_zero():
    alpha, c, h = 0.3, 256, 1e-6
    beta, g = 1 / alpha**2, np.sqrt(c)
    d_dyt = (shapes.dyt(h, alpha, g) - shapes.dyt(-h, alpha, g)) / (2 * h)
    d_isru = (shapes.dyisru(h, beta, g) - shapes.dyisru(-h, beta, g)) / (2 * h)
    assert d_dyt == pytest.approx(g * alpha, rel=1e-8)
    assert d_isru == pytest.approx(d_dyt, rel=1e-8)


def test_gaps_match_their_definitions_and_asymptotes():
    u = np.array([0.1, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(shapes.dyt_gap(u), 1 - np.tanh(u), rtol=1e-12)
    np.testing.assert_allclose(shapes.dyisru_gap(u), 1 - u / np.sqrt(1 + u * u), rtol=1e-12)
    assert shapes.dyt_gap(15.0) / (2 * np.exp(-30.0)) == pytest.approx(1, rel=1e-12)
    assert shapes.dyisru_gap(1e4) * 2e8 == pytest.approx(1, rel=1e-7)


def test_dyisru_saturates_more_slowly(run):
    _, result = run
    tail, g = result["tails"]["u=8"], np.sqrt(shapes.CONFIG[True]["C"])
    assert tail["dyt"] < 1e-6 * g and tail["dyisru"] > 5e-3 * g
    assert tail["dyisru"] > 1e4 * tail["dyt"]


def test_outputs_written(run):
    out, result = run
    for stem in ("shapes_by_token", "shapes_by_channel", "shapes_functions"):
        data = (out / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    for stem in ("shapes_fit", "shapes_tails"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").read_text().startswith("| ")
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## shapes") and "(shapes_functions.png)" in summary
    json.dumps(result)
