"""The placement experiment: gradients at init per (norm, placement), and short training."""
from __future__ import annotations

import math

import pytest
import torch

from numeric.experiments import placement as P


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("placement")
    return out, P.run(out, quick=True, progress=lambda msg: None)


def test_every_configuration_has_finite_positive_gradients(result):
    _, r = result
    assert set(r["grad_norms"]) == {c.label for c in P.CONFIGS} and len(P.CONFIGS) == 8
    for label, norms in r["grad_norms"].items():
        assert len(norms) == P.SIZES[True]["layers"]
        assert all(math.isfinite(g) and g > 0 for g in norms), label


def test_post_ln_gradients_grow_toward_the_output_more_than_pre_ln(result):
    """Xiong et al. 2020: with LayerNorm, Post-LN's last/first block ratio exceeds Pre-LN's."""
    _, r = result
    ratio = r["grad_ratio"]
    assert ratio["Post-LN LayerNorm"] > ratio["Pre-LN LayerNorm"]
    assert ratio["Post-LN RMSNorm"] > ratio["Pre-LN RMSNorm"]


def test_post_ln_dyt_at_the_paper_init_starves_the_first_blocks(result):
    """DyT(alpha 0.5, weight 1) halves the stream after every sublayer in Post-LN, so the
    gradient shrinks geometrically toward the input: the ratio is far above Post-LN's others."""
    _, r = result
    ratio = r["grad_ratio"]
    assert ratio["Post-LN DyT"] > 10 * max(ratio["Post-LN LayerNorm"], ratio["Post-LN DyISRU"])


def test_training_loss_decreases_for_pre_ln(result):
    _, r = result
    for norm in P.NORMS:
        label = f"Pre-LN {norm}"
        assert r["final_loss"][label] < r["first_loss"][label] - 0.05, label
        assert math.isfinite(r["held_out_loss"][label])


def test_outputs_written_and_linked(result):
    out, _ = result
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## placement")
    for stem in ("grad_norms", "loss_curves"):
        assert (out / f"{stem}.png").stat().st_size > 0
        assert f"]({stem}.png)" in summary
    for stem in ("grad_norms", "final_loss"):
        assert (out / f"{stem}.csv").exists() and (out / f"{stem}.md").exists()
    assert "| Post-LN DyISRU |" in summary


def test_training_is_reproducible():
    size = {**P.SIZES[True], "steps": 5}
    data = P.batches(size)
    cfg = P.Config("DyISRU", "Post-LN")
    with P.deterministic():
        a = P.train(cfg, size, data, data[0])
        b = P.train(cfg, size, data, data[0])
    assert a == b


def test_deterministic_restores_the_previous_settings():
    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with P.deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


@pytest.mark.parametrize("norm", ["LayerNorm", "RMSNorm"])
def test_post_ln_block_output_is_normalized(norm):
    """Post-LN ends every block with the norm: with LayerNorm/RMSNorm at init (weight 1,
    bias 0) each token leaves with unit RMS (and zero mean for LayerNorm)."""
    torch.manual_seed(0)
    block = P.PostBlock(16, 4, P.NORMS[norm])
    y = block(torch.randn(2, 5, 16) * 3).double()
    assert torch.allclose(y.square().mean(-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-4)


def test_copy_loss_scores_only_the_copied_half():
    """A model that predicts the copied half perfectly has loss ~0 whatever it says elsewhere."""
    size = P.SIZES[True]
    seq = P.copy_batch(torch.Generator().manual_seed(0), 4, size["copy_len"], size["vocab"])
    assert torch.equal(seq[:, :size["copy_len"]], seq[:, size["copy_len"] + 1:])

    class Oracle(torch.nn.Module):
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, size["vocab"])
            target = torch.cat([idx[:, 1:], seq[:, -1:]], dim=1)       # the next token
            logits[:, size["copy_len"]:].scatter_(-1, target[:, size["copy_len"]:, None], 50.0)
            return logits

    assert P.copy_loss(Oracle(), seq, size["copy_len"]).item() < 1e-10
