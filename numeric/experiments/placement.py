"""Pre-LN against Post-LN with each norm: gradients at initialization and a short training run.

A small causal transformer (6 blocks, d_model 64, 4 heads, MLP 4 d_model, GELU; token and
position embeddings, a linear head) on the CPU, with one of four norms in one of two places:

    Pre-LN:   x = x + Attn(N1(x));  x = x + MLP(N2(x));  ...; logits = Head(N_final(x))
    Post-LN:  x = N1(x + Attn(x));  x = N2(x + MLP(x));  ...; logits = Head(x)

Norms: nn.LayerNorm, nn.RMSNorm, numeric.DyT (the DyT paper's init: alpha 0.5, weight 1,
bias 0) and numeric.DyISRU (the derivation's init: weight sqrt(C), beta C, bias 0, which is
RMSNorm on unit-RMS inputs). Embeddings start N(0, 1/2) each, so the input stream has unit RMS;
linear layers keep torch's default init.

(a) At initialization, the gradient norm of each block's linear weights, averaged over seeds
    and batches: Xiong et al. (2020, "On Layer Normalization in the Transformer Architecture")
    found Post-LN's gradients largest near the output and Pre-LN's about even across layers.
(b) Training on a copying task: a sequence of random tokens, a separator, then the same tokens
    again; the loss is the cross-entropy of the copied half (its floor is 0). All eight
    configurations see the same seed and the same batches.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import DyISRU, DyT
from .report import markdown_table, save_figure, write_summary, write_table

NAME = "placement"
SEED = 0

#: quick (the tests) -> sizes of the experiment.
SIZES = {
    False: {"layers": 6, "d_model": 64, "heads": 4, "grad_seeds": 4, "grad_batches": 2,
            "steps": 300, "batch": 32, "copy_len": 12, "vocab": 16, "lr": 1e-3},
    True: {"layers": 4, "d_model": 32, "heads": 4, "grad_seeds": 2, "grad_batches": 1,
           "steps": 40, "batch": 16, "copy_len": 6, "vocab": 8, "lr": 1e-3},
}

#: norm name -> factory C -> module (with the init the module docstring states).
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "LayerNorm": lambda c: nn.LayerNorm(c),
    "RMSNorm": lambda c: nn.RMSNorm(c),
    "DyT": lambda c: DyT(c, alpha_init=0.5),
    "DyISRU": lambda c: DyISRU(c),
}


# --- the model ----------------------------------------------------------------------------

class Attention(nn.Module):
    """Causal multi-head self-attention: softmax(q k^T / sqrt(d_head) + causal mask) v."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape                                             # (B, T, d)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, h, T, d/h)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """fc2(GELU(fc1(x))), hidden width 4 d."""

    def __init__(self, d: int):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PreBlock(nn.Module):
    """Pre-LN: x + Attn(N1(x)), then + MLP(N2(.))."""

    def __init__(self, d: int, heads: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.n1, self.attn, self.n2, self.mlp = norm(d), Attention(d, heads), norm(d), MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class PostBlock(PreBlock):
    """Post-LN (the original Transformer): N1(x + Attn(x)), then N2(. + MLP(.))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.n1(x + self.attn(x))
        return self.n2(x + self.mlp(x))


#: placement -> (block class, whether a final norm precedes the head).
PLACEMENTS = {"Pre-LN": (PreBlock, True), "Post-LN": (PostBlock, False)}


class Stack(nn.Module):
    """Token + position embeddings, `layers` blocks, (final norm), linear head.

    Shapes: idx (B, T) -> logits (B, T, V).
    """

    def __init__(self, norm: str, placement: str, *, vocab: int, length: int, layers: int,
                 d_model: int, heads: int, **_):
        super().__init__()
        block, final = PLACEMENTS[placement]
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=math.sqrt(0.5))
        self.blocks = nn.ModuleList(block(d_model, heads, NORMS[norm]) for _ in range(layers))
        self.final = NORMS[norm](d_model) if final else nn.Identity()
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))      # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final(x))


# --- the task -----------------------------------------------------------------------------

def copy_batch(gen: torch.Generator, batch: int, copy_len: int, vocab: int) -> torch.Tensor:
    """(B, 2 L + 1) sequences [a_1..a_L, SEP, a_1..a_L]; a_k uniform in 0..V-2, SEP = V-1."""
    a = torch.randint(0, vocab - 1, (batch, copy_len), generator=gen)
    sep = torch.full((batch, 1), vocab - 1)
    return torch.cat([a, sep, a], dim=1)


def copy_loss(model: nn.Module, seq: torch.Tensor, copy_len: int) -> torch.Tensor:
    """Mean cross-entropy of predicting the copied half a_1..a_L (positions L..2L of the input)."""
    logits = model(seq[:, :-1])                                       # (B, 2L, V)
    pred = logits[:, copy_len:]                                        # predicts seq[:, L+1:]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), seq[:, copy_len + 1:].reshape(-1))


@contextmanager
def deterministic(threads: int = 1):
    """Inside the block: torch.use_deterministic_algorithms(True) and `threads` intra-op
    threads (the matrices are too small to gain from more); the previous settings after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


# --- (a) gradients at initialization ------------------------------------------------------

@dataclass(frozen=True)
class Config:
    norm: str
    placement: str

    @property
    def label(self) -> str:
        return f"{self.placement} {self.norm}"


CONFIGS = [Config(n, p) for p in PLACEMENTS for n in NORMS]


def block_grad_norms(model: Stack) -> list[float]:
    """Per block: sqrt(sum of squared gradients of its nn.Linear weights) (attention and MLP)."""
    return [math.sqrt(sum(float(m.weight.grad.square().sum())
                          for m in block.modules() if isinstance(m, nn.Linear)))
            for block in model.blocks]


def grad_norms_at_init(cfg: Config, size: dict) -> np.ndarray:
    """Mean over seeds and batches of each block's gradient norm at init: (layers,)."""
    length = 2 * size["copy_len"]
    norms = []
    for seed in range(size["grad_seeds"]):
        torch.manual_seed(SEED + seed)
        model = Stack(cfg.norm, cfg.placement, length=length, **size)
        gen = torch.Generator().manual_seed(1000 + seed)
        for _ in range(size["grad_batches"]):
            model.zero_grad()
            seq = copy_batch(gen, size["batch"], size["copy_len"], size["vocab"])
            copy_loss(model, seq, size["copy_len"]).backward()
            norms.append(block_grad_norms(model))
    return np.mean(norms, axis=0)


# --- (b) training --------------------------------------------------------------------------

def batches(size: dict) -> list[torch.Tensor]:
    """The training batches every configuration sees, from one seeded generator."""
    gen = torch.Generator().manual_seed(SEED)
    return [copy_batch(gen, size["batch"], size["copy_len"], size["vocab"])
            for _ in range(size["steps"])]


def train(cfg: Config, size: dict, data: list[torch.Tensor], held_out: torch.Tensor) -> dict:
    """AdamW (lr from `size`, no warmup, no decay) over `data`; loss per step and held-out loss."""
    torch.manual_seed(SEED)
    model = Stack(cfg.norm, cfg.placement, length=2 * size["copy_len"], **size)
    opt = torch.optim.AdamW(model.parameters(), lr=size["lr"], weight_decay=0.0)
    losses = []
    for seq in data:
        loss = copy_loss(model, seq, size["copy_len"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        held = copy_loss(model, held_out, size["copy_len"]).item()
    return {"losses": losses, "held_out": held}


def final_loss(losses: list[float], window: int = 20) -> float:
    """Mean training loss over the last `window` steps."""
    return float(np.mean(losses[-window:]))


# --- figures ------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


#: norm -> marker style, so that coinciding lines (LayerNorm and RMSNorm) stay visible.
MARKERS = {"LayerNorm": {"marker": "o", "ms": 9, "mfc": "none"},
           "RMSNorm": {"marker": "x", "ms": 6},
           "DyT": {"marker": "^", "ms": 6},
           "DyISRU": {"marker": "s", "ms": 5}}

#: placement -> line style.
LINES = {"Pre-LN": "-", "Post-LN": "--"}


def _style(cfg: Config) -> dict:
    return {"c": f"C{list(NORMS).index(cfg.norm)}", "ls": LINES[cfg.placement]}


def plot_grads(grads: dict[Config, np.ndarray], out: Path) -> Path:
    """One panel per placement: mean gradient norm per block at init (log), a line per norm."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PLACEMENTS), figsize=(11, 4.2), sharey=True)
    for ax, placement in zip(axes, PLACEMENTS):
        for cfg, g in grads.items():
            if cfg.placement == placement:
                ax.semilogy(np.arange(1, len(g) + 1), g, label=cfg.norm, **_style(cfg),
                            **MARKERS[cfg.norm])
        ax.set_title(placement)
        ax.set_xlabel("block (1 = next to the input, last = next to the output)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    axes[0].set_ylabel("gradient norm of the block's linear weights")
    fig.suptitle("Gradient norm per block at initialization (mean over seeds and batches)")
    fig.tight_layout()
    return save_figure(fig, out, "grad_norms")


def _smooth(v: list[float], window: int = 10) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot_losses(runs: dict[Config, dict], size: dict, out: Path) -> Path:
    """All eight training-loss curves (moving average over 10 steps) in one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for cfg, r in runs.items():
        ax.plot(np.arange(1, len(r["losses"]) + 1), _smooth(r["losses"]),
                label=f"{cfg.label} (final {final_loss(r['losses']):.3g})", lw=1.5, **_style(cfg))
    ax.axhline(math.log(size["vocab"] - 1), c="grey", lw=0.8, ls=":",
               label=f"ln({size['vocab'] - 1}): guessing")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy of the copied half (10-step mean)")
    ax.set_title(f"Copying task, {size['layers']} blocks, d_model {size['d_model']}: "
                 "solid Pre-LN, dashed Post-LN")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out, "loss_curves")


# --- tables and summary -------------------------------------------------------------------

def grad_table(grads: dict[Config, np.ndarray], out: Path) -> str:
    layers = len(next(iter(grads.values())))
    header = ["config", *(f"block {i + 1}" for i in range(layers)), "last / first"]
    rows = [[cfg.label, *map(float, g), float(g[-1] / g[0])] for cfg, g in grads.items()]
    write_table(out, "grad_norms", header, rows)
    return markdown_table(header, rows)


def loss_table(runs: dict[Config, dict], out: Path) -> str:
    header = ["config", "first-10-step mean loss", "final loss (last 20 steps)", "held-out loss"]
    rows = [[cfg.label, float(np.mean(r["losses"][:10])), final_loss(r["losses"]), r["held_out"]]
            for cfg, r in runs.items()]
    write_table(out, "final_loss", header, rows)
    return markdown_table(header, rows)


def summary_paragraphs(r: dict, size: dict, tables: dict) -> list[str]:
    ratio, final = r["grad_ratio"], r["final_loss"]
    pre = ", ".join(f"{n} {ratio[f'Pre-LN {n}']:.3g}" for n in NORMS)
    post = ", ".join(f"{n} {ratio[f'Post-LN {n}']:.3g}" for n in NORMS)
    best = min(final, key=final.get)
    worst = max(final, key=final.get)
    guess = math.log(size["vocab"] - 1)
    stuck = [k for k, v in final.items() if v > 0.5 * guess]
    ln_rms = max(abs(final[f"{p} LayerNorm"] / final[f"{p} RMSNorm"] - 1) for p in PLACEMENTS)
    return [
        f"A causal transformer of {size['layers']} blocks (d_model {size['d_model']}, "
        f"{size['heads']} heads, MLP 4 d_model) with each norm, placed Pre-LN or Post-LN. "
        "DyT starts at the DyT paper's defaults (alpha 0.5, weight 1, bias 0); DyISRU at the "
        "derivation's (weight sqrt(C), beta C: RMSNorm on unit-RMS inputs). Embeddings start "
        "N(0, 1/2) each (unit-RMS input stream), linear layers at torch's default. Seeded, "
        "deterministic algorithms, one intra-op thread.",
        "![Gradient norm per block at initialization](grad_norms.png)",
        f"Gradient norm of each block's linear weights at initialization, mean over "
        f"{size['grad_seeds']} seeds x {size['grad_batches']} batches of {size['batch']} "
        f"sequences. Ratio last block / first block, Pre-LN: {pre}; Post-LN: {post}. "
        "Xiong et al. (2020) report Post-LN's gradients growing toward the output and "
        "Pre-LN's even; at this depth the LayerNorm and RMSNorm stacks show that direction "
        "mildly. Post-LN DyT at the paper's init is the extreme case: tanh(0.5 x) about halves "
        "the stream after every sublayer, so the gradient shrinks geometrically toward the "
        "input. DyISRU at its derivation's init (RMSNorm on unit-RMS inputs) keeps its "
        "Post-LN gradients at LayerNorm's.",
        tables["grads"],
        "![Training loss of all eight configurations](loss_curves.png)",
        f"Training on the copying task ({size['copy_len']} random tokens from "
        f"{size['vocab'] - 1}, a separator, the same tokens again; loss on the copied half, "
        f"floor 0), {size['steps']} steps of AdamW at lr {size['lr']:g} without warmup, batch "
        f"{size['batch']}, the same seed and batches for every configuration. Lowest final "
        f"loss: {best} ({final[best]:.3g}); highest: {worst} ({final[worst]:.3g}). LayerNorm "
        f"and RMSNorm curves coincide (final losses within {ln_rms:.1%}). "
        + (f"Still above half the guessing loss ln({size['vocab'] - 1}) = {guess:.3g} at the "
           f"end: {', '.join(stuck)}; a stack on such a plateau leaves it at a step that "
           "depends even on the summation order (thread count), so read that curve as "
           "'slow to start', not as a fixed number. " if stuck else
           f"None is still above half the guessing loss ln({size['vocab'] - 1}) = "
           f"{guess:.3g} at the end; the slowest curve leaves its plateau at a step that "
           "depends even on the summation order (thread count, the rounding of the layers' "
           "code), so read its final loss as 'slow to start', not as a fixed number. ")
        + "One seed: differences of a few percent between the other curves are not evidence.",
        tables["losses"],
        f"Run time: {r['seconds']:.0f} s (gradients {r['seconds_grads']:.0f} s, training "
        f"{r['seconds_train']:.0f} s).",
    ]


# --- run ----------------------------------------------------------------------------------

def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    """Gradients at init and training for every (norm, placement); figures, tables, summary."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES[quick]
    with deterministic():
        progress(f"{NAME}: gradient norms at initialization")
        grads = {cfg: grad_norms_at_init(cfg, size) for cfg in CONFIGS}
        t1 = time.perf_counter()
        data = batches(size)
        held_out = copy_batch(torch.Generator().manual_seed(SEED + 1), 256, size["copy_len"],
                              size["vocab"])
        runs = {}
        for cfg in CONFIGS:
            progress(f"{NAME}: training {cfg.label} for {size['steps']} steps")
            runs[cfg] = train(cfg, size, data, held_out)
    t2 = time.perf_counter()
    plot_grads(grads, out)
    plot_losses(runs, size, out)
    tables = {"grads": grad_table(grads, out), "losses": loss_table(runs, out)}
    result = {"grad_norms": {c.label: [float(v) for v in g] for c, g in grads.items()},
              "grad_ratio": {c.label: float(g[-1] / g[0]) for c, g in grads.items()},
              "first_loss": {c.label: float(np.mean(r["losses"][:10])) for c, r in runs.items()},
              "final_loss": {c.label: final_loss(r["losses"]) for c, r in runs.items()},
              "held_out_loss": {c.label: r["held_out"] for c, r in runs.items()},
              "seconds_grads": t1 - t0, "seconds_train": t2 - t1,
              "seconds": time.perf_counter() - t0}
    write_summary(out, NAME, summary_paragraphs(result, size, tables))
    return result
