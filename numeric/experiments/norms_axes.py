"""BatchNorm, LayerNorm and RMSNorm as one formula over different axes, in numpy, checked
against worked examples and against torch's own layers.

For a tensor x and a set of axes A, with means and population variances over A:

    BatchNorm, LayerNorm:  y = (x - mean_A x) / sqrt(var_A x + eps)
    RMSNorm:               y = x / sqrt(mean_A x^2 + eps)

For a (batch, sequence, feature) tensor BatchNorm reduces over A = (batch, sequence): one
statistic per feature; LayerNorm and RMSNorm reduce over A = (feature,): one per token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .report import save_figure, table_markdown, write_summary, write_table

NAME = "norms-axes"
SEED = 0
EPS = 1e-5

Axes = Sequence[int]


# --- the three norms -----------------------------------------------------------------------

def moments(x: np.ndarray, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance, (1/n) sum (x - mean)^2, over the axes (kept as size 1)."""
    axes = tuple(axes)
    mean = x.mean(axis=axes, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


def standardize(x: np.ndarray, axes: Axes, eps: float) -> np.ndarray:
    """(x - mean_A x) / sqrt(var_A x + eps)."""
    mean, var = moments(x, axes)
    return (x - mean) / np.sqrt(var + eps)


def batch_norm(x: np.ndarray, axes: Axes, eps: float = 0.0) -> np.ndarray:
    """BatchNorm (training statistics, no affine): (x - mean) / sqrt(var + eps) over the
    sample axes, e.g. (0,) for (N, F), (0, 1) for (batch, sequence, feature)."""
    return standardize(x, axes, eps)


def layer_norm(x: np.ndarray, axes: Axes, eps: float = 0.0) -> np.ndarray:
    """LayerNorm (no affine): (x - mean) / sqrt(var + eps) over the feature axes, e.g. (-1,)."""
    return standardize(x, axes, eps)


def rms_norm(x: np.ndarray, axes: Axes, eps: float = 0.0) -> np.ndarray:
    """RMSNorm (no weight): x / sqrt(mean(x^2) + eps) over the feature axes, e.g. (-1,)."""
    return x / np.sqrt((x * x).mean(axis=tuple(axes), keepdims=True) + eps)


#: for a (batch, sequence, feature) tensor: norm -> (function, axes it reduces over, meaning)
BSF = {
    "BatchNorm": (batch_norm, (0, 1), "one mean and variance per feature, over batch × sequence"),
    "LayerNorm": (layer_norm, (2,), "one mean and variance per token, over its features"),
    "RMSNorm": (rms_norm, (2,), "one RMS per token, over its features; no mean subtracted"),
}


# --- worked examples ---------------------------------------------------------------------

TWO_BY_TWO = np.array([[1.0, 2.0], [3.0, 4.0]])          # rows are samples
BATCH = np.array([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 3.0], [1.0, 4.0]]])   # (batch, seq, feature)
RMS_EXAMPLE = np.array([[1.0, 7.0], [5.0, 5.0]])         # RMS of each row is 5


def feature_moments(x: np.ndarray, feature: int) -> np.ndarray:
    """[mean, population variance] of one feature over batch and sequence."""
    mean, var = moments(x[..., feature], (0, 1))
    return np.array([mean.item(), var.item()])


#: (example, input, computation, expected)
WORKED = (
    ("BatchNorm over samples (axis 0)", TWO_BY_TWO, lambda x: batch_norm(x, (0,)),
     np.array([[-1.0, -1.0], [1.0, 1.0]])),
    ("LayerNorm over features (axis 1)", TWO_BY_TWO, lambda x: layer_norm(x, (1,)),
     np.array([[-1.0, 1.0], [-1.0, 1.0]])),
    ("feature 0 over batch and sequence: [mean, variance]", BATCH,
     lambda x: feature_moments(x, 0), np.array([1.75, 0.6875])),
    ("RMSNorm over features (axis 1)", RMS_EXAMPLE, lambda x: rms_norm(x, (1,)),
     np.array([[0.2, 1.4], [1.0, 1.0]])),
)


def as_text(a: np.ndarray) -> str:
    """A small array as a nested list, e.g. [[-1, 1], [-1, 1]]."""
    text = np.array2string(np.asarray(a), separator=", ", formatter={"float_kind": "{:.6g}".format})
    return " ".join(text.split())


def worked_rows() -> list[list]:
    """example, input, expected, computed, max |computed - expected| for each worked example."""
    rows = []
    for label, x, compute, expected in WORKED:
        got = compute(x)
        rows.append([label, as_text(x), as_text(expected), as_text(got),
                     float(np.max(np.abs(got - expected)))])
    return rows


# --- agreement with torch -----------------------------------------------------------------

def torch_cases():
    """(label, shape, numpy function of x, torch function of x) pairs, float64, eps = EPS."""
    import torch
    import torch.nn.functional as F

    def bn(x):                                   # (B, T, F) -> BatchNorm1d wants (B, F, T)
        layer = torch.nn.BatchNorm1d(x.shape[-1], eps=EPS, affine=False, dtype=torch.float64)
        return layer.train()(x.transpose(1, 2)).transpose(1, 2)

    def bn2(x):
        layer = torch.nn.BatchNorm1d(x.shape[-1], eps=EPS, affine=False, dtype=torch.float64)
        return layer.train()(x)

    return (
        ("BatchNorm1d (train, affine=False)", (64, 16), lambda x: batch_norm(x, (0,), EPS), bn2),
        ("BatchNorm1d (train, affine=False)", (8, 16, 32), lambda x: batch_norm(x, (0, 1), EPS), bn),
        ("F.layer_norm, normalized_shape (F,)", (8, 16, 32),
         lambda x: layer_norm(x, (-1,), EPS), lambda x: F.layer_norm(x, x.shape[-1:], eps=EPS)),
        ("F.layer_norm, normalized_shape (T, F)", (8, 16, 32),
         lambda x: layer_norm(x, (1, 2), EPS), lambda x: F.layer_norm(x, x.shape[-2:], eps=EPS)),
        ("F.rms_norm, normalized_shape (F,)", (8, 16, 32),
         lambda x: rms_norm(x, (-1,), EPS), lambda x: F.rms_norm(x, x.shape[-1:], eps=EPS)),
        ("F.rms_norm, normalized_shape (T, F)", (8, 16, 32),
         lambda x: rms_norm(x, (1, 2), EPS), lambda x: F.rms_norm(x, x.shape[-2:], eps=EPS)),
    )


def torch_rows(rng: np.random.Generator) -> list[list]:
    """torch call, input shape, max |numpy - torch| on x = 3 N(0, 1) + 1, float64."""
    import torch

    rows = []
    for label, shape, ours, theirs in torch_cases():
        x = 3.0 * rng.standard_normal(shape) + 1.0
        with torch.no_grad():
            ref = theirs(torch.from_numpy(x)).numpy()
        rows.append([label, "x".join(map(str, shape)), float(np.max(np.abs(ours(x) - ref)))])
    return rows


# --- figure ------------------------------------------------------------------------------

def statistic_groups(shape: tuple[int, ...], axes: Axes) -> np.ndarray:
    """For every element, the index of the statistic it shares: elements equal on all the
    axes not reduced over share one mean / variance / RMS."""
    kept = [a for a in range(len(shape)) if a not in {ax % len(shape) for ax in axes}]
    idx = np.indices(shape)
    return np.ravel_multi_index(tuple(idx[a] for a in kept), tuple(shape[a] for a in kept))


def blocks_image(groups: np.ndarray) -> np.ndarray:
    """(B, T, F) -> (T, B*(F+1)-1) image: batch items side by side, a NaN column between."""
    b, t, f = groups.shape
    image = np.full((t, b * (f + 1) - 1), np.nan)
    for i in range(b):
        image[:, i * (f + 1): i * (f + 1) + f] = groups[i]
    return image


def plot_axes(out: Path, shape=(3, 4, 5)) -> Path:
    """One panel per norm: cells of one colour share one statistic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, t, f = shape
    fig, axes = plt.subplots(3, 1, figsize=(9, 10.5))
    cmap = plt.get_cmap("tab20").with_extremes(bad="white")
    for ax, (name, (_, reduce, meaning)) in zip(axes, BSF.items()):
        groups = statistic_groups(shape, reduce)
        image = blocks_image(groups.astype(float))
        ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0, vmax=19, aspect="equal")
        for i in range(b):
            for tt in range(t):
                for ff in range(f):
                    ax.text(i * (f + 1) + ff, tt, str(groups[i, tt, ff]), ha="center",
                            va="center", fontsize=7)
            ax.text(i * (f + 1) + (f - 1) / 2, -0.85, f"batch item b = {i}", ha="center",
                    fontsize=9)
        ax.set_xticks([i * (f + 1) + ff for i in range(b) for ff in range(f)],
                      [str(ff) for _ in range(b) for ff in range(f)], fontsize=8)
        ax.set_yticks(range(t))
        ax.set_ylabel("sequence position t")
        ax.set_xlabel("feature f")
        reduced = ", ".join(("batch", "sequence", "feature")[a] for a in reduce)
        ax.set_title(f"{name}: reduces over ({reduced}) — {meaning}", fontsize=10, pad=24)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(f"Which elements of a (batch, sequence, feature) = {shape} tensor share a "
                 "statistic\n(colour and number: the index of the statistic an element is "
                 "normalized by)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, "norms_axes")


# --- outputs ------------------------------------------------------------------------------

WORKED_HEADER = ["example", "input", "expected", "computed", "max abs difference"]
TORCH_HEADER = ["torch reference (float64, eps = 1e-5)", "input shape", "max abs deviation"]


def summary_text(out: Path, worked: list[list], against: list[list]) -> list[str]:
    worst = max(row[-1] for row in against)
    return [
        "BatchNorm, LayerNorm and RMSNorm are one formula, (x - mean) / sqrt(var + eps) or "
        "x / sqrt(mean x² + eps), with population statistics; they differ only in the axes "
        "they reduce over. For a (batch, sequence, feature) tensor BatchNorm keeps one "
        "statistic per feature, LayerNorm and RMSNorm one per token. In the figure, elements "
        "of one colour (and number) are normalized by the same statistic.",
        "![Which elements share a statistic under each norm](norms_axes.png)",
        "The worked examples, computed by the numpy reference functions (the largest "
        f"difference from the value worked by hand is {max(r[-1] for r in worked):.2g}):",
        table_markdown(out, "norms_axes_worked"),
        "Against torch's own layers on random inputs (float64, eps = 1e-5; BatchNorm1d in "
        "training mode, which normalizes with the biased batch variance), the largest "
        f"deviation is {worst:.2g}:",
        table_markdown(out, "norms_axes_torch"),
    ]


def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    """Worked examples, agreement with torch, the axes figure, and the summary."""
    out = Path(out)
    worked = worked_rows()
    against = torch_rows(np.random.default_rng(SEED))
    write_table(out, "norms_axes_worked", WORKED_HEADER, worked)
    write_table(out, "norms_axes_torch", TORCH_HEADER, against)
    plot_axes(out)
    write_summary(out, NAME, summary_text(out, worked, against))
    return {"worked_max_abs_difference": max(r[-1] for r in worked),
            "torch_max_abs_deviation": {f"{r[0]} {r[1]}": r[2] for r in against}}
