"""BatchNorm, LayerNorm and RMSNorm over explicit axes: worked examples and torch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numeric.experiments import norms_axes as na

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("norms_axes")
    return out, na.run(out, quick=True, progress=lambda msg: None)


def test_batch_norm_over_samples():
    np.testing.assert_array_equal(na.batch_norm(np.array([[1.0, 2.0], [3.0, 4.0]]), (0,)),
                                  [[-1.0, -1.0], [1.0, 1.0]])


def test_layer_norm_over_features():
    np.testing.assert_array_equal(na.layer_norm(np.array([[1.0, 2.0], [3.0, 4.0]]), (1,)),
                                  [[-1.0, 1.0], [-1.0, 1.0]])


def test_feature_statistics_over_batch_and_sequence():
    x = np.array([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 3.0], [1.0, 4.0]]])
    mean, var = na.moments(x, (0, 1))
    assert mean[0, 0, 0] == 1.75 and var[0, 0, 0] == 0.6875
    expected = (x[..., 0] - 1.75) / np.sqrt(0.6875)
    np.testing.assert_allclose(na.batch_norm(x, (0, 1))[..., 0], expected, rtol=1e-15)


def test_rms_norm_worked():
    np.testing.assert_array_equal(na.rms_norm(np.array([[1.0, 7.0], [5.0, 5.0]]), (1,)),
                                  [[0.2, 1.4], [1.0, 1.0]])


def test_worked_rows_all_exact():
    assert all(row[-1] == 0 for row in na.worked_rows())


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 7), (2, 9, 16)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])      # torch refuses eps = 0 in training mode
def test_batch_norm_matches_torch(shape, eps):
    x = np.random.default_rng(len(shape)).normal(2.0, 3.0, shape)
    layer = torch.nn.BatchNorm1d(shape[-1], eps=eps, affine=False, dtype=torch.float64).train()
    t = torch.from_numpy(x)
    with torch.no_grad():
        ref = (layer(t) if x.ndim == 2 else layer(t.transpose(1, 2)).transpose(1, 2)).numpy()
    axes = (0,) if x.ndim == 2 else (0, 1)
    np.testing.assert_allclose(na.batch_norm(x, axes, eps), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_layer_and_rms_norm_match_torch(dims, eps):
    x = np.random.default_rng(dims).normal(1.0, 2.0, (3, 5, 8))
    t, shape, axes = torch.from_numpy(x), x.shape[-dims:], tuple(range(-dims, 0))
    np.testing.assert_allclose(na.layer_norm(x, axes, eps),
                               F.layer_norm(t, shape, eps=eps).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(na.rms_norm(x, axes, eps),
                               F.rms_norm(t, shape, eps=eps).numpy(), rtol=0, atol=1e-12)


def test_statistic_groups():
    shape = (3, 4, 5)
    bn = na.statistic_groups(shape, na.BSF["BatchNorm"][1])
    ln = na.statistic_groups(shape, na.BSF["LayerNorm"][1])
    np.testing.assert_array_equal(bn, np.broadcast_to(np.arange(5), shape))
    assert len(np.unique(ln)) == 12 and np.all(ln == ln[..., :1])


def test_run_reports_agreement_and_outputs(run):
    out, result = run
    assert result["worked_max_abs_difference"] == 0
    assert len(result["torch_max_abs_deviation"]) == 6
    assert max(result["torch_max_abs_deviation"].values()) < 1e-12
    data = (out / "norms_axes.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    for stem in ("norms_axes_worked", "norms_axes_torch"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").read_text().startswith("| ")
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## norms-axes") and "0.6875" in summary
    json.dumps(result)
