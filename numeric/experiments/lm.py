"""The papers' training claims, measured: a small byte-level language model with each norm.

Data: the Python standard library's own source, present on every machine without a download:
the ``*.py`` files directly under ``Path(os.__file__).parent``, sorted by name, taken whole
in that order while the total stays within ``corpus_mb`` MB (the corpus differs slightly
between Python versions; the version and the sizes are in the results). Split by file, by
position in that order: file i is held-out where i % 10 == 3 (the learning-rate choice),
validation where i % 10 == 7 (the final loss), training otherwise. Tokens are bytes (256).

Model: a causal pre-norm transformer, token + position embeddings (untied from the head),
``layers`` blocks x = x + Attn(N1(x)); x = x + MLP(N2(x)) (attention through
scaled_dot_product_attention with is_causal=True, MLP 4 d_model with GELU), a final norm N_f,
a linear head without bias. Norms, each in every place:

    LayerNorm, RMSNorm               torch's nn.LayerNorm, nn.RMSNorm
    DyT                              numeric.DyT, alpha 0.5 (the DyT paper's default)
    DyT (LLaMA alpha)                numeric.DyT, alpha from numeric.llama_alpha_init(d_model,
                                     "attention") in N1, (d_model, "other") in N2 and N_f,
                                     the DyT paper's rule for its LLaMA models
    DyISRU                           numeric.DyISRU at the derivation's init (weight sqrt(C),
                                     beta C: RMSNorm on unit-RMS inputs)
    Derf                             numeric.Derf at its default (alpha 0.5, shift 0)

Every parameter outside the norms is initialized from a generator seeded with the run's seed
(embeddings N(0, 1/2) each, so the stream starts at unit RMS; linear weights N(0, 0.02),
the two residual projections N(0, 0.02 / sqrt(2 layers)); biases 0), so a seed gives every
norm the same initial weights; the seed also fixes the order of the training windows (random
windows of ``context + 1`` bytes of the training split), the same for every norm.

Training: AdamW (betas 0.9, 0.95; weight decay 0.1 on every matrix, embeddings included,
none on biases and the norms' parameters), linear warmup over the first 5% of steps, cosine
decay to 10% of the peak, gradients clipped at norm 1. Protocol: (1) for each norm, each
learning rate of ``lrs`` with seed 0, scored by the loss on fixed windows of the held-out
split; (2) the best one trained with ``seeds`` seeds (seed 0's run reused) and scored on
fixed windows of the validation split (mean cross-entropy per byte, nats). Seeds share data
order and initial weights across norms, so two norms are compared by the paired differences
across seeds (a paired t-test, two-sided, 5%); the looser rule "the means differ by more
than the sum of their standard errors" is reported beside it.

Saturation: forward hooks on every DyT, Derf and DyISRU layer, on a fixed batch of validation
windows, at several points in training (and, when training reaches it, at the step nearest
1M training tokens): the fraction of elements whose slope is below 1% of the function's peak
slope,

    DyT     |alpha x| > atanh(sqrt(0.99)) = 2.993      (tanh' = sech^2 < 0.01)
    Derf    |alpha x + shift| > sqrt(ln 100) = 2.146   (erf' ~ exp(-u^2) < 0.01 of its peak)
    DyISRU  x^2 > beta (100^(2/3) - 1)                  ((beta / (beta + x^2))^(3/2) < 0.01)

and, at the end of each run, the RMS of every norm's input and the learned scalars (alpha,
shift, beta). The reference for "learned nothing from the context": the cross-entropy of the
validation bytes under the training split's byte frequencies (the unigram loss).

Wall time per training step (forward, backward, clipping, update) for each norm, median
over the final runs, with the layers as numeric provides them (op by op on small inputs,
fused through torch.compile from 65,536 elements; the first step, which compiles, is
reported apart). Deterministic algorithms and one intra-op thread. Subnormal numbers are
flushed to zero during the run (torch.set_flush_denormal, restored after): a deeply
saturated DyT or Derf unit passes back gradients below float32's smallest normal number,
and on this machine's CPU that made a DyT step about twice as slow (160 ms against 83 ms,
measured while developing this experiment) for no measurable change in any update; one
forward and backward pass of each trained model is timed both ways and reported.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import Derf, DyISRU, DyT, llama_alpha_init
from .placement import MLP, Attention, deterministic
from .report import markdown_table, save_figure, write_summary, write_table

NAME = "lm"
SEED = 0
VOCAB = 256
#: Intra-op threads: one. The matrices are small (d_model 64), and on this project's 2-core
#: machine, shared with other work, two threads made a step slower, not faster (batch
#: 16 x 128: LayerNorm 0.058 s with one thread, 1.6 s with two; DyT 0.081 s, 0.18 s).
THREADS = 1

#: quick (the tests) -> sizes. corpus_mb: MB of source read; context: bytes per window
#: (the model predicts each of its bytes from those before); steps per run; lrs: the sweep;
#: seeds per norm at the chosen rate; eval_windows: fixed windows per held-out/validation
#: score; sat_points: saturation measured at this many evenly spaced steps (0 and the end
#: included), plus the step nearest 1M tokens; sat_windows: the fixed batch it uses.
SIZES = {
    False: {"corpus_mb": 4.0, "layers": 4, "d_model": 64, "heads": 4, "context": 128,
            "batch": 16, "steps": 320, "lrs": (3e-4, 1e-3, 3e-3, 1e-2), "seeds": 3,
            "eval_windows": 256, "sat_points": 7, "sat_windows": 16, "timing_reps": 8},
    True: {"corpus_mb": 0.3, "layers": 2, "d_model": 32, "heads": 2, "context": 32,
           "batch": 8, "steps": 24, "lrs": (3e-3, 1e-2), "seeds": 3,
           "eval_windows": 32, "sat_points": 3, "sat_windows": 4, "timing_reps": 2},
}
WARMUP = 0.05          # fraction of steps with a linear warmup
FINAL_LR = 0.1         # cosine decay to this fraction of the peak
WEIGHT_DECAY = 0.1
CLIP = 1.0

#: Saturation thresholds (module docstring).
TANH_SAT = math.atanh(math.sqrt(0.99))
ERF_SAT = math.sqrt(math.log(100.0))
ISRU_SAT = 100.0 ** (2.0 / 3.0) - 1.0

#: norm name -> factory (C, "attention" | "other") -> module.
NORMS: dict[str, Callable[[int, str], nn.Module]] = {
    "LayerNorm": lambda c, kind: nn.LayerNorm(c),
    "RMSNorm": lambda c, kind: nn.RMSNorm(c),
    "DyT": lambda c, kind: DyT(c, alpha_init=0.5),
    "DyT (LLaMA alpha)": lambda c, kind: DyT(c, alpha_init=llama_alpha_init(c, kind)),
    "DyISRU": lambda c, kind: DyISRU(c),
    "Derf": lambda c, kind: Derf(c),
}
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, DyT, DyISRU, Derf)
#: the norms whose units can saturate.
SATURATING = ("DyT", "DyT (LLaMA alpha)", "Derf", "DyISRU")

#: The reported claims (the papers' own numbers), quoted in the summary.
STOLLENWERK = {"125M parameters, 5B tokens": {"LayerNorm": 3.209, "DyT": 3.349, "DyISRU": 3.307},
               "760M parameters, 20B tokens": {"LayerNorm": 2.675, "DyT": 2.770,
                                               "DyISRU": 2.732}}
CHEN = {"ViT-B top-1 (%)": {"LayerNorm": 82.3, "DyT": 82.5, "Derf": 82.8},
        "GPT-2 loss": {"LayerNorm": 2.94, "DyT": 2.97, "Derf": 2.94}}
VERMA_LOSS_GAP = 0.188          # DyT's loss over LayerNorm's, 64M model, 118M tokens
VERMA_SATURATION = 0.49         # DyT units saturated after 1M tokens
VERMA_TOKENS = 1_000_000
#: A run whose validation loss is within this many nats of the context-free (unigram) loss
#: has learned next to nothing beyond the byte frequencies.
PLATEAU = 0.05


# --- data ---------------------------------------------------------------------------------

def stdlib_dir() -> Path:
    return Path(os.__file__).parent


def split_of(i: int) -> str:
    """The split of the i-th file (by name): held-out, validation or train."""
    return {3: "held_out", 7: "validation"}.get(i % 10, "train")


def load_corpus(corpus_mb: float, root: Path | None = None) -> tuple[dict, dict]:
    """({split: uint8 tensor of its files' bytes, concatenated}, a description).

    The ``*.py`` files directly under ``root`` (default: the standard library's), sorted by
    name, whole, while the total stays within corpus_mb * 10^6 bytes."""
    root = stdlib_dir() if root is None else root
    limit = int(corpus_mb * 1e6)
    parts: dict[str, list[bytes]] = {"train": [], "held_out": [], "validation": []}
    files: dict[str, int] = {k: 0 for k in parts}
    total = 0
    for i, path in enumerate(sorted(root.glob("*.py"), key=lambda p: p.name)):
        blob = path.read_bytes()
        if total + len(blob) > limit:
            break
        total += len(blob)
        parts[split_of(i)].append(blob)
        files[split_of(i)] += 1
    data = {k: torch.frombuffer(bytearray(b"".join(v)), dtype=torch.uint8)
            for k, v in parts.items()}
    desc = {"python": platform.python_version(), "bytes": total,
            "unigram_loss": {k: unigram_loss(data["train"], v) for k, v in data.items()},
            "split_bytes": {k: int(v.numel()) for k, v in data.items()},
            "split_files": files, "files": sum(files.values()),
            "sha256": hashlib.sha256(b"".join(bytes(v.numpy()) for v in data.values()))
            .hexdigest()[:16]}
    return data, desc


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> torch.Tensor:
    """(len(starts), context + 1) int64 windows of data beginning at ``starts``."""
    return data[starts[:, None] + torch.arange(context + 1)].long()


def random_windows(data: torch.Tensor, gen: torch.Generator, batch: int,
                   context: int) -> torch.Tensor:
    return windows(data, torch.randint(0, data.numel() - context - 1, (batch,), generator=gen),
                   context)


def fixed_windows(data: torch.Tensor, n: int, context: int) -> torch.Tensor:
    """n windows at evenly spaced starts over the whole split."""
    return windows(data, torch.linspace(0, data.numel() - context - 1, n).long(), context)


# --- the model ----------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm: x + Attn(N1(x)), then + MLP(N2(.)); N1 is the attention's norm."""

    def __init__(self, d: int, heads: int, norm: Callable[[int, str], nn.Module]):
        super().__init__()
        self.n1, self.attn = norm(d, "attention"), Attention(d, heads)
        self.n2, self.mlp = norm(d, "other"), MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class ByteLM(nn.Module):
    """Token + position embeddings, pre-norm blocks, final norm, linear head.

    Shapes: idx (B, T) int64 bytes, T <= context -> logits (B, T, 256).
    """

    def __init__(self, norm: str, *, context: int, layers: int, d_model: int, heads: int, **_):
        super().__init__()
        factory = NORMS[norm]
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, factory) for _ in range(layers))
        self.final = factory(d_model, "other")
        self.head = nn.Linear(d_model, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))     # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final(x))


def is_norm_param(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` belongs to one of the model's norms."""
    owner = model.get_submodule(name.rpartition(".")[0])
    return isinstance(owner, NORM_TYPES)


@torch.no_grad()
def init_weights(model: ByteLM, seed: int) -> None:
    """Every parameter outside the norms from one generator seeded with ``seed``, in module
    order (which the norms do not change): the same weights for every norm."""
    gen = torch.Generator().manual_seed(seed)
    residual = 0.02 / math.sqrt(2 * len(model.blocks))
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, math.sqrt(0.5), generator=gen)
        elif isinstance(m, nn.Linear):
            std = residual if name.endswith(("attn.proj", "mlp.fc2")) else 0.02
            nn.init.normal_(m.weight, 0.0, std, generator=gen)
            if m.bias is not None:
                m.bias.zero_()


def build(norm: str, seed: int, size: dict) -> ByteLM:
    model = ByteLM(norm, **size)
    init_weights(model, seed)
    return model


def fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the parameters outside the norms, by name."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not is_norm_param(model, name):
            h.update(name.encode())
            h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def lm_loss(model: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per byte) of predicting seq[:, 1:] from seq[:, :-1]."""
    logits = model(seq[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), seq[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, seqs: torch.Tensor, batch: int) -> float:
    """Mean cross-entropy per byte over all the windows, in chunks of ``batch``."""
    total = 0.0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        total += lm_loss(model, chunk).item() * len(chunk)
    return total / len(seqs)


# --- saturation ---------------------------------------------------------------------------

def layer_name(module_name: str) -> str:
    """"blocks.0.n1" -> "1 attn", "blocks.0.n2" -> "1 mlp", "final" -> "final"."""
    if module_name == "final":
        return "final"
    _, i, n = module_name.split(".")
    return f"{int(i) + 1} {'attn' if n == 'n1' else 'mlp'}"


def saturated(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of x's elements where the layer's slope is below 1% of its peak."""
    x = x.detach().float()
    if isinstance(module, DyT):
        return (module.alpha.detach() * x).abs() > TANH_SAT
    if isinstance(module, Derf):
        return (module.alpha.detach() * x + module.shift.detach()).abs() > ERF_SAT
    if isinstance(module, DyISRU):
        return x.square() > module.beta.detach() * ISRU_SAT
    raise TypeError(f"no saturation for {type(module).__name__}")


@torch.no_grad()
def _each_norm(model: nn.Module, seq: torch.Tensor, types, record) -> dict:
    """Layer -> record(module, its input) for every module of ``types``, one forward pass
    over seq (forward hooks, removed after)."""
    out: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, types):
            def hook(mod, inputs, output, name=name):
                out[layer_name(name)] = record(mod, inputs[0])
            hooks.append(m.register_forward_hook(hook))
    try:
        model(seq[:, :-1])
    finally:
        for h in hooks:
            h.remove()
    return out


def saturation(model: nn.Module, seq: torch.Tensor) -> dict[str, float]:
    """Layer -> fraction of its input elements saturated, one forward pass over seq."""
    return _each_norm(model, seq, (DyT, Derf, DyISRU),
                      lambda mod, x: saturated(mod, x).float().mean().item())


def scalars(module: nn.Module) -> dict[str, float]:
    """A norm's learned scalars: alpha (DyT, Derf), shift (Derf), beta (DyISRU); none for
    LayerNorm and RMSNorm."""
    if isinstance(module, DyISRU):
        return {"beta": module.beta.item()}
    return {k: getattr(module, k).item() for k in ("alpha", "shift") if hasattr(module, k)}


def norm_state(model: nn.Module, seq: torch.Tensor) -> dict[str, dict[str, float]]:
    """Layer -> the RMS of every norm's input on seq, and its learned scalars."""
    return _each_norm(model, seq, NORM_TYPES, lambda mod, x: {
        "input_rms": x.detach().double().square().mean().sqrt().item(), **scalars(mod)})


def unigram_loss(train: torch.Tensor, target: torch.Tensor) -> float:
    """Cross-entropy (nats per byte) of target's bytes under the training split's byte
    frequencies (add-one smoothed): the loss of a model that ignores the context."""
    p = torch.bincount(train.long(), minlength=VOCAB).double() + 1
    counts = torch.bincount(target.long(), minlength=VOCAB).double()
    return float(-(counts * (p / p.sum()).log()).sum() / counts.sum())


# --- training -----------------------------------------------------------------------------

def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over WARMUP of the steps, then cosine from peak to FINAL_LR * peak."""
    warm = max(1, round(WARMUP * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm - 1)
    return peak * (FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def checkpoints(size: dict) -> list[int]:
    """Steps (before whose update) saturation is measured: evenly spaced from 0 to the end,
    and the step nearest VERMA_TOKENS training tokens when training reaches it."""
    steps = size["steps"]
    points = {int(round(v)) for v in np.linspace(0, steps, size["sat_points"])}
    per_step = size["batch"] * size["context"]
    if steps * per_step >= VERMA_TOKENS:
        points.add(int(round(VERMA_TOKENS / per_step)))
    return sorted(points)


def data_seed(seed: int) -> int:
    return 1000 + seed


def train(norm: str, lr: float, seed: int, size: dict, data: dict, evals: dict) -> dict:
    """One run: ``steps`` AdamW steps from seed's init on seed's windows; training loss per
    step, step times, saturation at the checkpoints, final held-out and validation loss."""
    model = build(norm, seed, size)
    fp = fingerprint(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(data_seed(seed))
    steps, marks = size["steps"], set(checkpoints(size))
    track = norm in SATURATING
    losses, times, sat = [], [], {}
    diverged = False
    for step in range(steps):
        if track and step in marks:
            sat[step] = saturation(model, evals["saturation"])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        seq = random_windows(data["train"], gen, size["batch"], size["context"])
        t = time.perf_counter()
        loss = lm_loss(model, seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            diverged = True
            break
    if track and not diverged and steps in marks:
        sat[steps] = saturation(model, evals["saturation"])
    score = (lambda k: math.inf) if diverged else (
        lambda k: evaluate(model, evals[k], size["batch"]))
    return {"norm": norm, "lr": lr, "seed": seed, "fingerprint": fp, "losses": losses,
            "times": times, "saturation": sat, "diverged": diverged,
            "end_state": {} if diverged else norm_state(model, evals["saturation"]),
            "held_out": score("held_out"), "validation": score("validation"), "model": model}


# --- subnormal numbers and step times -------------------------------------------------------

def flush_denormal_on() -> bool:
    """Whether this thread flushes subnormal float32 numbers to zero (torch.set_flush_denormal
    has no getter: a subnormal times one comes out 0 exactly when it does)."""
    return bool((torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0)


@contextmanager
def flushed(on: bool = True):
    """Inside the block: subnormal numbers flushed to zero (on) or kept; the previous setting
    after."""
    before = flush_denormal_on()
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def step_timing(model: nn.Module, seq: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms of one forward and backward pass of ``model`` on ``seq``, with subnormals
    flushed and kept, alternating (the first pass of each is a warm-up, not counted)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(reps + 1):
        for flag in (True, False):
            with flushed(flag):
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                lm_loss(model, seq).backward()
                dt = time.perf_counter() - t
            if i:
                times[flag].append(dt)
    model.zero_grad(set_to_none=True)
    return {"flushed_ms": 1e3 * float(np.median(times[True])),
            "kept_ms": 1e3 * float(np.median(times[False]))}


# --- statistics ---------------------------------------------------------------------------

def seed_stats(values: list[float]) -> dict:
    v = np.asarray(values, float)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"seeds": [float(x) for x in v], "mean": float(v.mean()), "std": std,
            "se": std / math.sqrt(len(v)), "min": float(v.min()), "max": float(v.max())}


def compare(a: list[float], b: list[float]) -> dict:
    """a against b, seed by seed (paired): mean of a - b, its standard error, the paired
    t-test's two-sided p, how many seeds have a < b, and both rules' verdicts."""
    from scipy import special      # stdtr: Student's t distribution (scipy.stats loads slower)

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if not np.all(np.isfinite(d)):
        t, p = math.nan, math.nan
    elif se == 0:
        t, p = (math.inf, 0.0) if d.mean() != 0 else (0.0, 1.0)
    else:
        t = float(d.mean() / se)
        p = float(2 * special.stdtr(n - 1, -abs(t)))
    sa, sb = seed_stats(a), seed_stats(b)
    return {"mean_diff": float(d.mean()), "rel_diff": float(d.mean() / sb["mean"]),
            "rel_diff_reversed": float(-d.mean() / sa["mean"]), "se_diff": se, "t": t,
            "p": p, "a_lower": int((d < 0).sum()), "n": n,
            "paired": bool(p < 0.05) if p == p else False,
            "unpaired": bool(abs(sa["mean"] - sb["mean"]) > sa["se"] + sb["se"])}


# --- figures ------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _color(norm: str) -> str:
    return f"C{list(NORMS).index(norm)}"


def _smooth(v, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    n = np.arange(1, len(v) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def plot_losses(final: dict[str, list[dict]], size: dict, unigram: float, out: Path) -> Path:
    """Training loss against tokens (mean over seeds, moving average), whole run and the
    second half; the band is the seeds' range; ``unigram``: the context-free loss."""
    plt = _pyplot()
    per_step = size["batch"] * size["context"]
    window = max(1, size["steps"] // 30)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for norm, runs in final.items():
        n = min(len(r["losses"]) for r in runs)
        curves = np.array([_smooth(r["losses"][:n], window) for r in runs])
        tokens = np.arange(1, n + 1) * per_step / 1e6
        for ax, lo in zip(axes, (0, n // 2)):
            ax.plot(tokens[lo:], curves.mean(0)[lo:], c=_color(norm), lw=1.4,
                    label=f"{norm} (lr {runs[0]['lr']:g})")
            ax.fill_between(tokens[lo:], curves.min(0)[lo:], curves.max(0)[lo:],
                            color=_color(norm), alpha=0.15, lw=0)
    axes[0].axhline(math.log(VOCAB), c="grey", lw=0.8, ls=":", label="ln 256: uniform bytes")
    for ax in axes:
        ax.axhline(unigram, c="k", lw=0.8, ls="--",
                   label="byte frequencies only (no context)" if ax is axes[0] else None)
    axes[0].set_title("whole run")
    axes[1].set_title("second half, zoomed (band: range over seeds)")
    for ax in axes:
        ax.set_xlabel("training tokens (millions)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"training loss, nats per byte ({window}-step mean, mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Byte-level LM, {size['layers']} blocks, d_model {size['d_model']}: "
                 "training loss at each norm's chosen learning rate")
    fig.tight_layout()
    return save_figure(fig, out, "loss_curves")


def plot_validation(val: dict[str, dict], chosen: dict, unigram: float, out: Path) -> Path:
    """Validation loss per norm: each seed a dot, the mean a bar with +-1 standard error;
    ``unigram``: the context-free loss."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.axhline(unigram, c="k", lw=0.8, ls="--", label="byte frequencies only (no context)")
    ax.legend(fontsize=8, loc="center left")
    for i, (norm, s) in enumerate(val.items()):
        ax.errorbar(i, s["mean"], yerr=s["se"], fmt="s", c=_color(norm), ms=8, capsize=6)
        ax.scatter(i + np.linspace(-0.12, 0.12, len(s["seeds"])), s["seeds"], c=_color(norm),
                   s=18, alpha=0.7, zorder=3)
    ax.set_xticks(range(len(val)))
    ax.set_xticklabels([f"{n}\nlr {chosen[n]:g}" for n in val], fontsize=8)
    ax.set_ylabel("validation loss, nats per byte")
    ax.set_title("Validation loss per norm: seeds (dots), mean +- standard error (squares)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, "validation_loss")


def plot_sweep(sweep: dict[str, dict[float, dict]], chosen: dict, out: Path) -> Path:
    """Held-out loss against the learning rate per norm (seed 0); the chosen one circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (norm, runs) in enumerate(sweep.items()):
        lrs = sorted(runs)
        ys = [runs[lr]["held_out"] for lr in lrs]
        ax.plot(lrs, ys, marker="os^v<>"[i % 6], c=_color(norm), label=norm)
        ax.plot(chosen[norm], runs[chosen[norm]]["held_out"], "o", ms=13, mfc="none",
                c=_color(norm))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("held-out loss, nats per byte (seed 0)")
    ax.set_title("Learning-rate sweep; circled: each norm's choice")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, "lr_sweep")


def plot_saturation(sat: dict[str, dict], size: dict, out: Path) -> Path:
    """Per saturating norm: fraction of saturated elements per layer against training
    tokens (mean over seeds), with Verma's 49% after 1M tokens."""
    plt = _pyplot()
    names = [n for n in SATURATING if n in sat]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), sharey=True,
                             squeeze=False)
    for ax, norm in zip(axes[0], names):
        s = sat[norm]
        tokens = np.asarray(s["tokens"], float) / 1e6
        layers = list(s["layers"])
        cmap = plt.get_cmap("viridis")
        for j, layer in enumerate(layers):
            ax.plot(tokens, s["layers"][layer], marker=".", lw=1.2,
                    c="k" if layer == "final" else cmap(j / max(1, len(layers) - 1)),
                    ls="--" if "attn" in layer else "-", label=layer)
        ax.plot(tokens, s["mean"], c="red", lw=2.2, label="mean of layers")
        ax.axhline(VERMA_SATURATION, c="orange", lw=1.2, ls=":",
                   label="Verma 2026: 49% after 1M tokens")
        if tokens[-1] >= 0.5 * VERMA_TOKENS / 1e6:          # the point itself, if near
            ax.scatter([VERMA_TOKENS / 1e6], [VERMA_SATURATION], marker="*", s=160,
                       c="orange", zorder=5)
        ax.set_title(f"{norm} (lr {s['lr']:g})")
        ax.set_xlabel("training tokens (millions)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("fraction of elements saturated (slope < 1% of peak)")
    axes[0][0].set_ylim(-0.02, 1.02)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Saturated units per layer over training (fixed validation batch, mean over "
                 "seeds; dashed: attention norms)")
    fig.tight_layout()
    return save_figure(fig, out, "saturation")


# --- tables and summary -------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _anchor_gaps() -> dict[str, dict[str, float]]:
    """Stollenwerk's relative gaps to LayerNorm: scale -> norm -> loss / LN - 1."""
    return {k: {n: v[n] / v["LayerNorm"] - 1 for n in ("DyT", "DyISRU")}
            for k, v in STOLLENWERK.items()}


def _flip(c: dict) -> dict:
    """The comparison b vs a from a vs b."""
    return {**c, "mean_diff": -c["mean_diff"], "t": -c["t"], "a_lower": c["n"] - c["a_lower"],
            "rel_diff": c["rel_diff_reversed"], "rel_diff_reversed": c["rel_diff"]}


def pair(cmp: dict, a: str, b: str) -> dict:
    """The comparison of a against b, whichever order the table holds it in."""
    return cmp[f"{a} vs {b}"] if f"{a} vs {b}" in cmp else _flip(cmp[f"{b} vs {a}"])


def _verdict(c: dict, a: str, b: str) -> str:
    """A sentence piece: a against b, with the paired test's verdict."""
    word = "below" if c["mean_diff"] < 0 else "above"
    support = "the seeds support it" if c["paired"] else "the seeds do not support it"
    return (f"{a} {abs(c['mean_diff']):.4f} nats {word} {b} ({_pct(c['rel_diff'])}; lower in "
            f"{c['a_lower']} of {c['n']} seeds; paired p = {c['p']:.2g}, {support})")


def _direction(key: str, c: dict) -> str:
    """"a vs b" as "lower below higher (gap)"."""
    a, b = key.split(" vs ")
    if c["mean_diff"] > 0:
        a, b, c = b, a, _flip(c)
    return f"{a} below {b} ({_pct(c['rel_diff'])})"


def _plateau(r: dict, size: dict) -> str:
    """The context-free loss, and the runs that ended near it."""
    u = r["corpus"]["unigram_loss"]
    stuck = {n: k for n, k in r["at_unigram"].items() if k}
    gain = {n: u["validation"] - v["mean"] for n, v in r["validation"].items()}
    return (f"A model that ignores the context, predicting the training split's byte "
            f"frequencies, scores {u['validation']:.4f} on validation (and "
            f"{u['train']:.4f} on the training split, the dashed line in the curves). What "
            "each norm's model gained from the context, that loss minus its validation loss: "
            + ", ".join(f"{n} {g:.3f}" for n, g in gain.items())
            + f" nats (relative to LayerNorm's: "
            + ", ".join(f"{n} {g / gain['LayerNorm']:.0%}" for n, g in gain.items()
                        if n != "LayerNorm") + "). "
            + (f"Seeds ending within {PLATEAU} nats of it, i.e. having learned little beyond "
               "the byte frequencies: "
               + ", ".join(f"{n} {k} of {size['seeds']}" for n, k in stuck.items()) + "."
               if stuck else f"No seed ends within {PLATEAU} nats of it."))


def _t_crit(n: int) -> float:
    """The paired t-test's threshold (two-sided, 5%) for n seeds, in standard errors."""
    from scipy import special
    return float(special.stdtrit(n - 1, 0.975))


def _edges(r: dict, size: dict) -> str:
    lo, hi = min(size["lrs"]), max(size["lrs"])
    low = [n for n, lr in r["chosen_lr"].items() if lr == lo]
    high = [n for n, lr in r["chosen_lr"].items() if lr == hi]
    if not low and not high:
        return "Every norm's best rate lies inside the grid."
    parts = []
    if low:
        parts.append(f"at its lowest rate, {lo:g}: {', '.join(low)}")
    if high:
        parts.append(f"at its highest, {hi:g}: {', '.join(high)}")
    return ("Chosen at the grid's edge (the best rate may lie beyond it): "
            + "; ".join(parts) + ".")


def summary_paragraphs(r: dict, size: dict, tables: dict) -> list[str]:
    val, cmp, sat, t = r["validation"], r["comparisons"], r["saturation"], r["timing"]
    corpus, model, alphas = r["corpus"], r["model"], r["llama_alpha"]
    order = sorted(val, key=lambda n: val[n]["mean"])
    mean = {n: v["mean"] for n, v in val.items()}
    gaps = _anchor_gaps()
    small, large = gaps

    def c(a, b):
        return pair(cmp, a, b)

    def lower(a, b):        # a below b, and the seeds support it
        return c(a, b)["paired"] and c(a, b)["mean_diff"] < 0

    supported = [_direction(k, v) for k, v in cmp.items() if v["paired"]]
    looser = [_direction(k, v) for k, v in cmp.items() if v["unpaired"] and not v["paired"]]
    paras = [
        f"A causal byte-level transformer trained on the Python standard library's own source "
        f"(the `*.py` files beside `os`, sorted by name, whole files up to "
        f"{size['corpus_mb']:g} MB: {corpus['files']} files, {corpus['bytes']:,} bytes, "
        f"Python {corpus['python']}; another Python version reads a slightly different "
        f"corpus). Split by file: training {corpus['split_bytes']['train']:,} bytes, "
        f"held-out {corpus['split_bytes']['held_out']:,} (the learning-rate choice), "
        f"validation {corpus['split_bytes']['validation']:,} (the final loss). "
        f"{size['layers']} pre-norm blocks, d_model {size['d_model']}, {size['heads']} heads, "
        f"MLP 4 d_model, context {size['context']} bytes, untied embeddings starting at unit "
        f"RMS: {model['params']:,} parameters ({model['non_embedding']:,} outside the "
        f"embeddings and head). Each run: {size['steps']} AdamW steps of {size['batch']} "
        f"windows, {r['tokens_per_run']:,} training tokens (under one pass over the training "
        f"split), warmup then cosine decay, clipping at 1. Norms, each in every place: "
        f"nn.LayerNorm, nn.RMSNorm, DyT with alpha 0.5, DyT with the DyT paper's LLaMA rule "
        f"(llama_alpha_init: alpha {alphas['attention']:g} in the attention norms, "
        f"{alphas['other']:g} in the others"
        + (f"; d_model {size['d_model']} lies below the rule's smallest width, 1024, where it "
           f"clamps, so the two are equal here" if size["d_model"] < 1024 else "")
        + "), DyISRU at the derivation's init (beta C, weight sqrt(C)), Derf at its default "
        f"(alpha 0.5). Each norm's learning rate is chosen from "
        f"{', '.join(f'{x:g}' for x in size['lrs'])} on the held-out split (seed 0), then "
        f"trained with {size['seeds']} seeds (seed 0's run reused) and scored on "
        f"{size['eval_windows']} fixed validation windows. A seed fixes the initial weights "
        f"outside the norms and the data order, the same for every norm (checked: every "
        f"norm's runs have the same fingerprint of those weights, seed by seed).",
        "![Held-out loss against the learning rate](lr_sweep.png)",
        tables["sweep"] + "\n" + _edges(r, size),
        "![Training loss curves](loss_curves.png)",
        "![Validation loss per norm and seed](validation_loss.png)",
        f"Validation loss (nats per byte; uniform bytes would be ln 256 = "
        f"{math.log(VOCAB):.3f}), mean over {size['seeds']} seeds, lowest first: "
        + ", ".join(f"{n} {mean[n]:.4f}" for n in order) + ". " + _plateau(r, size),
        tables["validation"],
        "Which differences the seeds support: seeds share the data order and the initial "
        "weights across norms, so each pair is compared seed by seed, by a paired t-test on "
        f"the {size['seeds']} differences (two-sided, 5%, {size['seeds'] - 1} degrees of "
        f"freedom: the mean difference must exceed {_t_crit(size['seeds']):.1f} standard "
        "errors of the paired differences). "
        + (f"Supported: {'; '.join(supported)}. " if supported else
           "No difference is supported by the paired test. ")
        + (f"The looser rule (means further apart than the sum of their standard errors) "
           f"adds: {'; '.join(looser)}." if looser else
           "The looser rule (means further apart than the sum of their standard errors) "
           "adds no pair."),
        tables["comparisons"],
    ]
    # the claims, one by one
    dyt_ln, llama_ln = c("DyT", "LayerNorm"), c("DyT (LLaMA alpha)", "LayerNorm")
    isru_ln, isru_dyt = c("DyISRU", "LayerNorm"), c("DyISRU", "DyT")
    derf_dyt, derf_ln = c("Derf", "DyT"), c("Derf", "LayerNorm")
    paras.append(
        "**DyT matches LayerNorm** (Zhu et al. 2025, on ViT, DiT and LLaMA): "
        + ("holds here, no difference the seeds support: " if not dyt_ln["paired"] else
           "does not hold here: ")
        + _verdict(dyt_ln, "DyT", "LayerNorm") + "; with the LLaMA rule's alpha, "
        + _verdict(llama_ln, "DyT (LLaMA alpha)", "LayerNorm") + ".")
    derf_state = ("holds here against both: " if lower("Derf", "DyT") and lower("Derf", "LayerNorm")
                  else "holds here against DyT only: " if lower("Derf", "DyT")
                  else "holds here against LayerNorm only: " if lower("Derf", "LayerNorm")
                  else "does not hold here: ")
    paras.append(
        "**Derf beats DyT and LayerNorm** (Chen et al. 2025: ViT-B top-1 "
        + " / ".join(f"{v:g}" for v in CHEN["ViT-B top-1 (%)"].values())
        + " for LN / DyT / Derf; GPT-2 loss "
        + " / ".join(f"{v:g}" for v in CHEN["GPT-2 loss"].values())
        + ", so on their language model Derf ties LayerNorm and beats DyT): " + derf_state
        + _verdict(derf_dyt, "Derf", "DyT") + "; " + _verdict(derf_ln, "Derf", "LayerNorm")
        + ".")
    in_order = mean["LayerNorm"] < mean["DyISRU"] < mean["DyT"]
    paras.append(
        "**On GPT-style language models DyT trails LayerNorm and DyISRU sits between them** "
        f"(Stollenwerk 2026, nanoGPT, 125M parameters, 5B tokens: validation loss LN "
        f"{STOLLENWERK[small]['LayerNorm']}, DyT {STOLLENWERK[small]['DyT']}, DyISRU "
        f"{STOLLENWERK[small]['DyISRU']}, i.e. DyT {_pct(gaps[small]['DyT'])} and DyISRU "
        f"{_pct(gaps[small]['DyISRU'])} over LN; 760M, 20B tokens: "
        f"{STOLLENWERK[large]['LayerNorm']} / {STOLLENWERK[large]['DyT']} / "
        f"{STOLLENWERK[large]['DyISRU']}, DyT {_pct(gaps[large]['DyT'])}, DyISRU "
        f"{_pct(gaps[large]['DyISRU'])}): "
        + ("holds here, each step of the order supported by the seeds: "
           if lower("LayerNorm", "DyISRU") and lower("DyISRU", "DyT") else
           "the means fall in that order, but not every step is supported by the seeds: "
           if in_order else "the order differs here: ")
        + _verdict(dyt_ln, "DyT", "LayerNorm") + "; " + _verdict(isru_ln, "DyISRU", "LayerNorm")
        + "; " + _verdict(isru_dyt, "DyISRU", "DyT") + "."
        + (f" The gaps to LayerNorm here are {dyt_ln['rel_diff'] / gaps[small]['DyT']:.1f} "
           f"(DyT) and {isru_ln['rel_diff'] / gaps[small]['DyISRU']:.1f} (DyISRU) times "
           "Stollenwerk's at 125M." if dyt_ln["rel_diff"] > 0 and isru_ln["rel_diff"] > 0
           else ""))
    worst = order[-1]
    near = r["saturation_at_1m"]
    end = r["tokens_per_run"]
    if near:
        where = (f"at {near['tokens']:,} training tokens" if near["tokens"] != end else
                 f"at the end of training, {end:,} tokens (the nearest this run comes to 1M)")
        sat_text = (
            f"Saturated elements (slope below 1% of the peak) {where}, mean over layers and "
            "seeds: " + ", ".join(f"{n} {near['mean'][n]:.1%}" for n in near["mean"])
            + "; the most saturated layer: "
            + ", ".join(f"{n} {near['max'][n]:.1%} ({near['argmax'][n]})" for n in near["max"])
            + f"; against Verma's {VERMA_SATURATION:.0%}. ")
        if near["tokens"] != end:
            sat_text += ("At the end of training (" + f"{end:,} tokens): "
                         + ", ".join(f"{n} {s['mean'][-1]:.1%}" for n, s in sat.items()) + ". ")
    else:
        sat_text = ""
    peak = {n: max(s["mean"]) for n, s in sat.items()}
    paras.append(
        f"**At small scale DyT hurts most** (Verma 2026: {_pct(VERMA_LOSS_GAP)} loss for a "
        f"64M model on 118M tokens; {VERMA_SATURATION:.0%} of its units saturated after 1M "
        f"tokens): DyT's gap to LayerNorm here is {_pct(dyt_ln['rel_diff'])} "
        f"({_pct(llama_ln['rel_diff'])} with the LLaMA rule's alpha), against "
        f"Stollenwerk's {_pct(gaps[small]['DyT'])} and {_pct(gaps[large]['DyT'])} at 125M "
        f"and 760M and Verma's {_pct(VERMA_LOSS_GAP)} at 64M "
        f"({dyt_ln['rel_diff'] / VERMA_LOSS_GAP:.2f} times Verma's); "
        + (f"DyT's is the largest gap of all norms here" if worst in ("DyT", "DyT (LLaMA alpha)")
           else f"the largest gap here is {worst}'s ({_pct(mean[worst] / mean['LayerNorm'] - 1)})")
        + ". " + sat_text
        + ("Over the whole run the mean saturation peaks at "
           + ", ".join(f"{n} {v:.1%}" for n, v in peak.items()) + ". " if peak else "")
        + "Verma's threshold for 'saturated' may differ from this one (slope below 1% of "
        "the peak), so compare the sizes, not the digits.")
    paras += ["![Saturated units per layer over training](saturation.png)", tables["saturation"],
              tables["end_state"]]
    slow = {n: t["kept_ms"][n] / t["flushed_ms"][n] for n in val}
    paras.append(
        f"Wall time per training step on this machine ({THREADS} thread, batch "
        f"{size['batch']} x {size['context']} bytes, median over the final runs' steps, the "
        f"layers as numeric runs them: op by op below 65,536 elements, fused through "
        f"torch.compile above, and these activations have "
        f"{size['batch'] * size['context'] * size['d_model']:,}): "
        + ", ".join(f"{n} {t['step_ms'][n]:.1f} ms" for n in val) + ", i.e. "
        + ", ".join(f"{n} {t['step_ms'][n] / t['step_ms']['LayerNorm']:.2f}x"
                    for n in val if n != "LayerNorm")
        + " LayerNorm's. The runs flush subnormal numbers to zero (torch.set_flush_denormal): "
        "a deeply saturated tanh or erf unit passes back a gradient below float32's smallest "
        "normal number, and arithmetic on such subnormal numbers is slow on this CPU. One "
        "forward and backward pass of each trained model (seed 0) with subnormals kept "
        "takes " + ", ".join(f"{n} {slow[n]:.2f}x" for n in val)
        + " the time with them flushed; the flushed values (below 1.2e-38) change no AdamW "
        "update measurably. The machine was shared with other work: read differences under "
        "10% as noise.")
    paras.append(tables["step_time"])
    paras.append(_caveats(r, size, order, lower))
    paras.append(
        f"Run time: {t['seconds']:.0f} s ({t['seconds'] / 60:.1f} min: sweep "
        f"{t['seconds_sweep']:.0f} s, further seeds {t['seconds_seeds']:.0f} s), "
        f"torch {r['torch']}, {THREADS} intra-op thread, deterministic algorithms.")
    return paras


def _caveats(r: dict, size: dict, order: list[str], lower) -> str:
    """Where the ordering disagrees with the anchors, and why it might."""
    model, mean = r["model"], {n: v["mean"] for n, v in r["validation"].items()}
    sat = r["saturation"]
    disagree = []
    if not mean["LayerNorm"] < mean["DyISRU"] < mean["DyT"]:
        disagree.append("Stollenwerk's order LN < DyISRU < DyT")
    if not lower("Derf", "DyT") or lower("LayerNorm", "Derf"):
        disagree.append("Chen's Derf at least matching LayerNorm and beating DyT")
    if pair(r["comparisons"], "DyT", "LayerNorm")["paired"]:
        disagree.append("Zhu's DyT matching LayerNorm")
    head = ("Where this run disagrees with the anchors (" + "; ".join(disagree) + "), "
            if disagree else "This run agrees with every anchor's ordering; ")
    bounded = [n for n in ("DyT", "DyT (LLaMA alpha)", "Derf")
               if n in sat and sat[n]["mean"][-1] > 0.1]
    isru = sat.get("DyISRU")
    flat = math.sqrt(ISRU_SAT * size["d_model"])
    return (
        head + "these differences from the papers' setting may be why: the model has "
        f"{model['params']:,} parameters against 64M to 760M and sees "
        f"{r['tokens_per_run']:,} tokens against 118M to 20B "
        f"({r['tokens_per_run'] / model['params']:.1f} tokens per parameter), so it is far "
        "from converged and the speed of early training weighs more than the final quality "
        "the papers measure. The tokens are bytes (256 symbols against GPT-2's 50k "
        "subwords): the losses are nats per byte, comparable with the papers' only in their "
        "relative gaps. Each norm gets its learning rate from a "
        f"{len(size['lrs'])}-point grid on one seed, coarser than a paper's tuning. "
        + (f"And {', '.join(bounded)} bound every output: the pre-norm residual stream "
           "grows during training while their alpha starts at a value set for unit-scale "
           "inputs and moves by about one learning rate per step at most, so a large share "
           "of their units ends in the flat part of the curve (at the end: "
           + ", ".join(f"{n} {sat[n]['mean'][-1]:.0%}" for n in bounded)
           + "), passing back almost no gradient, where LayerNorm and RMSNorm divide the "
           "growth out. " + _growth(r, bounded) if bounded else "")
        + (f"DyISRU's curve at its init (beta = C = {size['d_model']}) flattens only beyond "
           f"|x| = sqrt({ISRU_SAT:.1f} beta) = {flat:.0f}; its saturation at the end: "
           f"{isru['mean'][-1]:.1%}." if isru else ""))


def _growth(r: dict, bounded: list[str]) -> str:
    """The final norm's input RMS per norm and the bounded norms' learned alpha, at the end."""
    end = r["end_state"]
    if not end:
        return ""
    alphas = {n: [v["alpha"] for v in end[n].values()] for n in bounded if n in end}
    return ("At the end the final norm's input has RMS "
            + ", ".join(f"{n} {end[n]['final']['input_rms']:.3g}" for n in end)
            + "; alpha, per layer, ended between "
            + ", ".join(f"{min(a):.3g} and {max(a):.3g} ({n})" for n, a in alphas.items())
            + " (the tables above). ")


def _tables(r: dict, size: dict, out: Path) -> dict[str, str]:
    """Every table from the results (CSV and Markdown into out): name -> its Markdown."""
    norms = list(r["validation"])
    val, t = r["validation"], r["timing"]
    tables = {}
    lrs = [f"{lr:g}" for lr in size["lrs"]]
    header = ["norm", *(f"lr {lr}" for lr in lrs), "chosen"]
    rows = [[n, *(r["lr_sweep"][n][lr] for lr in lrs), f"{r['chosen_lr'][n]:g}"] for n in norms]
    write_table(out, "lr_sweep", header, rows)
    tables["sweep"] = ("Held-out loss (nats per byte, seed 0) at each peak learning rate:\n\n"
                       + markdown_table(header, rows))
    header = ["norm", "lr", "validation loss (mean)", "std over seeds", "standard error",
              "min", "max", "vs LayerNorm", *(f"seed {i}" for i in range(size["seeds"]))]
    ln = val["LayerNorm"]["mean"]
    rows = [[n, f"{r['chosen_lr'][n]:g}", s["mean"], s["std"], s["se"], s["min"], s["max"],
             _pct(s["mean"] / ln - 1), *s["seeds"]] for n, s in val.items()]
    write_table(out, "validation_loss", header, rows)
    tables["validation"] = markdown_table(header, rows)
    header = ["a vs b", "mean a - b", "relative to b", "SE of paired differences", "t",
              "paired p", "seeds with a < b", "paired t-test (5%)", "|diff| > SE_a + SE_b"]
    rows = [[k, c["mean_diff"], _pct(c["rel_diff"]), c["se_diff"], c["t"], c["p"],
             f"{c['a_lower']}/{c['n']}", "supported" if c["paired"] else "-",
             "yes" if c["unpaired"] else "-"] for k, c in r["comparisons"].items()]
    write_table(out, "comparisons", header, rows)
    tables["comparisons"] = markdown_table(header, rows)
    sat = r["saturation"]
    tables["saturation"] = ""
    if sat:
        tokens = next(iter(sat.values()))["tokens"]
        header = ["norm", "layer", *(f"{tk:,} tokens" for tk in tokens)]
        rows = [[n, ly, *(f"{x:.1%}" for x in v)] for n, s in sat.items()
                for ly, v in [*s["layers"].items(), ("mean", s["mean"])]]
        write_table(out, "saturation", header, rows)
        tables["saturation"] = ("Fraction of elements saturated per layer (mean over seeds; "
                                "layer k attn/mlp: the norm before block k's attention/MLP):"
                                "\n\n" + markdown_table(header, rows))
    end = r["end_state"]
    tables["end_state"] = ""
    if end:
        layers = list(next(iter(end.values())))
        rms_header = ["layer", *end]
        rms_rows = [[ly, *(end[n][ly]["input_rms"] for n in end)] for ly in layers]
        write_table(out, "input_rms", rms_header, rms_rows)
        learned = [(n, k) for n in end for k in end[n][layers[0]] if k != "input_rms"]
        header = ["layer", *(f"{n} {k}" for n, k in learned)]
        rows = [[ly, *(end[n][ly][k] for n, k in learned)] for ly in layers]
        write_table(out, "learned_scalars", header, rows)
        tables["end_state"] = (
            "At the end of training, on the fixed validation batch (mean over seeds): the RMS "
            "of each norm's input,\n\n" + markdown_table(rms_header, rms_rows)
            + "\nand the learned scalars (initial: " + _inits(size) + "):\n\n"
            + markdown_table(header, rows))
    per_step = size["batch"] * size["context"]
    header = ["norm", "ms per training step (median)", "vs LayerNorm", "tokens per second",
              "first step of its first run, ms (compiling, where fused)",
              "fwd+bwd trained, flushed, ms", "fwd+bwd trained, subnormals kept, ms",
              "kept / flushed"]
    rows = [[n, t["step_ms"][n], f"{t['step_ms'][n] / t['step_ms']['LayerNorm']:.2f}x",
             round(per_step / (t["step_ms"][n] / 1e3)), t["first_step_ms"][n],
             t["flushed_ms"][n], t["kept_ms"][n], f"{t['kept_ms'][n] / t['flushed_ms'][n]:.2f}x"]
            for n in norms]
    write_table(out, "step_time", header, rows)
    tables["step_time"] = markdown_table(header, rows)
    return tables


def _inits(size: dict) -> str:
    c = size["d_model"]
    return (f"DyT alpha 0.5; DyT (LLaMA alpha) {llama_alpha_init(c, 'attention'):g} "
            f"(attention), {llama_alpha_init(c, 'other'):g} (other); Derf alpha 0.5, shift 0; "
            f"DyISRU beta {c}")


def write_report(r: dict, size: dict, out: Path) -> Path:
    """The tables and summary.md from the results alone."""
    return write_summary(out, NAME, summary_paragraphs(r, size, _tables(r, size, out)))


# --- run ----------------------------------------------------------------------------------

def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    """The sweep, the seeds, the measurements; figures, tables and summary.md into ``out``.
    Deterministic algorithms, THREADS intra-op threads and subnormals flushed to zero inside;
    the previous settings after."""
    with deterministic(min(THREADS, torch.get_num_threads())), flushed(True):
        return _run(Path(out), SIZES[quick], progress)


def _run(out: Path, size: dict, progress) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data, corpus = load_corpus(size["corpus_mb"])
    progress(f"{NAME}: corpus {corpus['files']} files, {corpus['bytes']:,} bytes "
             f"(Python {corpus['python']})")
    ctx = size["context"]
    evals = {"held_out": fixed_windows(data["held_out"], size["eval_windows"], ctx),
             "validation": fixed_windows(data["validation"], size["eval_windows"], ctx),
             "saturation": fixed_windows(data["validation"], size["sat_windows"], ctx)}
    total = len(NORMS) * (len(size["lrs"]) + size["seeds"] - 1)
    done = 0

    def one(norm, lr, seed):
        nonlocal done
        r = train(norm, lr, seed, size, data, evals)
        done += 1
        progress(f"{NAME}: [{done}/{total}] {norm}, lr {lr:g}, seed {seed}: {size['steps']} "
                 f"steps, {sum(r['times']):.0f} s; held-out {r['held_out']:.4f}, validation "
                 f"{r['validation']:.4f}")
        return r

    sweep = {n: {lr: one(n, lr, 0) for lr in size["lrs"]} for n in NORMS}
    chosen = {n: min(size["lrs"], key=lambda lr: (sweep[n][lr]["held_out"], lr)) for n in NORMS}
    t1 = time.perf_counter()
    final = {n: [sweep[n][chosen[n]]] + [one(n, chosen[n], s) for s in range(1, size["seeds"])]
             for n in NORMS}
    t2 = time.perf_counter()
    progress(f"{NAME}: timing a forward and backward pass of each trained model")
    seq = random_windows(data["train"], torch.Generator().manual_seed(SEED), size["batch"], ctx)
    timing = {n: step_timing(final[n][0]["model"], seq, size["timing_reps"]) for n in NORMS}
    result = _results(final, sweep, chosen, size, corpus)
    result["timing"].update({
        "flushed_ms": {n: v["flushed_ms"] for n, v in timing.items()},
        "kept_ms": {n: v["kept_ms"] for n, v in timing.items()},
        "first_step_ms": {n: 1e3 * sweep[n][size["lrs"][0]]["times"][0] for n in NORMS},
        "seconds_sweep": t1 - t0, "seconds_seeds": t2 - t1})
    plot_sweep(sweep, chosen, out)
    plot_losses(final, size, corpus["unigram_loss"]["train"], out)
    plot_validation(result["validation"], chosen, corpus["unigram_loss"]["validation"], out)
    if result["saturation"]:
        plot_saturation(result["saturation"], size, out)
    _write_curves(final, out)
    result["timing"]["seconds"] = time.perf_counter() - t0
    write_report(result, size, out)
    return result


def _results(final, sweep, chosen, size, corpus) -> dict:
    """The key numbers of the runs (JSON-ready; the loss curves go to loss_curves.csv)."""
    norms = list(NORMS)
    val = {n: seed_stats([r["validation"] for r in final[n]]) for n in norms}
    cmp = {f"{a} vs {b}": compare([r["validation"] for r in final[a]],
                                  [r["validation"] for r in final[b]])
           for i, a in enumerate(norms) for b in norms[i + 1:]}
    per_step = size["batch"] * size["context"]
    sat = {}
    for n in norms:
        runs = [r for r in final[n] if r["saturation"]]
        if not runs:
            continue
        steps = [s for s in checkpoints(size) if all(s in r["saturation"] for r in runs)]
        layers = list(runs[0]["saturation"][steps[0]])
        per_layer = {ly: [float(np.mean([r["saturation"][s][ly] for r in runs])) for s in steps]
                     for ly in layers}
        sat[n] = {"lr": chosen[n], "steps": steps, "tokens": [s * per_step for s in steps],
                  "layers": per_layer,
                  "mean": [float(np.mean([per_layer[ly][k] for ly in layers]))
                           for k in range(len(steps))]}
    near = {}
    if sat:
        tokens = next(iter(sat.values()))["tokens"]
        k = int(np.argmin([abs(tk - VERMA_TOKENS) for tk in tokens]))
        near = {"tokens": tokens[k], "mean": {n: s["mean"][k] for n, s in sat.items()},
                "max": {n: max(v[k] for v in s["layers"].values()) for n, s in sat.items()},
                "argmax": {n: max(s["layers"], key=lambda ly: s["layers"][ly][k])
                           for n, s in sat.items()}}
    model = build("LayerNorm", SEED, size)
    params = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for m in (model.tok, model.pos, model.head) for p in m.parameters())
    return {
        "python": corpus["python"], "torch": torch.__version__, "corpus": corpus,
        "model": {"params": params, "non_embedding": params - emb},
        "tokens_per_run": size["steps"] * per_step,
        "llama_alpha": {k: llama_alpha_init(size["d_model"], k) for k in ("attention", "other")},
        "lr_sweep": {n: {f"{lr:g}": sweep[n][lr]["held_out"] for lr in size["lrs"]}
                     for n in norms},
        "chosen_lr": chosen,
        "validation": val,
        "comparisons": cmp,
        "first_loss": {n: float(np.mean([r["losses"][0] for r in final[n]])) for n in norms},
        "final_train_loss": {n: float(np.mean([np.mean(r["losses"][-10:]) for r in final[n]]))
                             for n in norms},
        "diverged": {n: [f"lr {lr:g}" for lr, r in sweep[n].items() if r["diverged"]]
                     + [f"seed {r['seed']}" for r in final[n][1:] if r["diverged"]]
                     for n in norms},
        "init_fingerprint": {n: [r["fingerprint"] for r in final[n]] for n in norms},
        "saturation": sat,
        "saturation_at_1m": near,
        "end_state": {n: {ly: {k: float(np.mean([r["end_state"][ly][k] for r in final[n]]))
                               for k in final[n][0]["end_state"][ly]}
                          for ly in final[n][0]["end_state"]}
                      for n in norms if all(r["end_state"] for r in final[n])},
        "at_unigram": {n: sum(r["validation"] > corpus["unigram_loss"]["validation"]
                              - PLATEAU for r in final[n]) for n in norms},
        "timing": {"step_ms": {n: 1e3 * float(np.median([t for r in final[n]
                                                          for t in r["times"][1:]]))
                               for n in norms}},
    }


def _write_curves(final: dict[str, list[dict]], out: Path) -> Path:
    """loss_curves.csv (no Markdown twin: one row per step): the training loss of every
    final run, step by step."""
    cols = [(n, r["seed"], r["losses"]) for n, runs in final.items() for r in runs]
    n = max(len(v) for *_, v in cols)
    path = out / "loss_curves.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"{name} seed {s}" for name, s, _ in cols)])
        w.writerows([[i + 1, *(f"{v[i]:.6g}" if i < len(v) else "" for *_, v in cols)]
                     for i in range(n)])
    return path
