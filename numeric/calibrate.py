"""Fit and distil the layers a conversion put in place of a model's norms.

    report = numeric.convert(model, to="dyt_ln", calibrate=batches, steps=200,
                             held_out=other_batches)
    print(report)          # per layer: fit error before and after; the model's cosine

``numeric.convert`` builds the new layers and calls ``calibrate``; every stage changes the new
layers' parameters only (everything else frozen) and runs on one batch at a time:

1. fit, each new layer in forward order on the converted model's own activations (the
   layers before it already fitted), to the output the original model's norm gave on the
   same tokens (``fit_tokens`` of them, from as few batches as hold that many, chosen at
   random): its 0-dim scalars by a grid search, then its weight and bias channel by
   channel by least squares (the ones the norm had);
2. distil: Adam on the new layers' parameters, minimizing 1 - cosine between the converted
   and the original model's outputs (along the output's last dimension) plus, weighted by
   ``layer_loss``, each new layer's squared error to the norm it replaced, relative to that
   norm's mean square; each parameter's learning rate is ``lr`` times its scale in the
   units of the layer's input (its standard deviation s for an input shift);
3. evaluate: cosine between the two models' outputs on held-out batches.

The original model is the converted one with the old norms put back in place (a context
manager), so there is no copy of the model; at any time at most two batches' activations
exist: the original's (no graph) and the converted one's (with its graph, while distilling),
and while a layer is fitted, ``fit_tokens`` rows of its input and its norm's output.

``batches`` (and ``held_out``) is a list or tuple of batches, taken whole, or any other
iterable (a DataLoader, a generator, ``itertools.cycle(loader)``), of which at most
``max_batches`` (default 64) are read, once, and kept: an iterable that does not end is cut
there. When it had more, a warning says so; ``CalibrationReport.batches`` says how many
were used.

A batch is what the model takes: a tensor (``model(x)``), a tuple or list (``model(*b)``), or
a dict of tensors: passed as keywords when every key names a parameter of the model's
forward (``model(**b)``, as Hugging Face models take them), as one argument otherwise
(``model(b)``, as sentence-transformers take them). A dict with an ``attention_mask`` of
the activations' leading shape also says which tokens are real: padding is left out of
the fits, the layer loss and the errors. ``output`` picks the tensor to compare from what
the model returns: a key, an index, a function, or None for the output itself or its
first floating-point tensor.

A new layer with ``channels_last=False`` (in place of a channels-first norm) sees (N, C, ...)
activations: its inputs and outputs are read with the channels moved last.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import math
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .modules import Derf, DyISRU, DyISRULN, DyT, DyTLN

#: layer class -> its 0-dim parameters given where its curve bends: at |x - centre| = scale.
#: The grid search runs over a = log(s / scale) and b = (centre - m) / s, s and m the
#: standard deviation (per token, averaged) and mean of the layer's input.
SCALARS = {
    DyT: lambda scale, centre: {"alpha": 1 / scale},
    DyISRU: lambda scale, centre: {"log_beta": 2 * math.log(scale)},
    DyTLN: lambda scale, centre: {"alpha": 1 / scale, "shift": centre},
    DyISRULN: lambda scale, centre: {"log_beta": 2 * math.log(scale), "shift": centre},
    Derf: lambda scale, centre: {"alpha": 1 / scale, "shift": -centre / scale},
}

#: the grid search: first grid (a, b), then ZOOMS 3 x 3 grids, each half as wide.
GRID_A = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
GRID_B = [-3.0, -1.5, 0.0, 1.5, 3.0]
ZOOMS = 7
#: tokens per layer that the grid search sees (the least squares of weight and bias see all
#: the sample's tokens).
SEARCH_TOKENS = 128

FITS = ("sequential", "independent")

#: the options of a calibration and their defaults (numeric.convert reads them from here).
DEFAULTS = {"steps": 0, "held_out": None, "fit": "sequential", "output": None, "lr": 3e-3,
            "layer_loss": 0.0, "seed": 0, "fit_tokens": 1024, "progress": True,
            "max_batches": 64}


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward is skipped."""


# --- the model's inputs and outputs ----------------------------------------------------------

def _keywords(model: nn.Module) -> set[str]:
    params = inspect.signature(model.forward).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def call(model: nn.Module, batch):
    """Run the model on one batch (see the module's docstring for the kinds of batch)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch) if set(batch) <= _keywords(model) else model(batch)
    return model(*batch)


def _check_batches(batches, name: str, max_batches: int = DEFAULTS["max_batches"]):
    """(the batches as a list, whether the iterable had more): a list or tuple whole, at most
    ``max_batches`` of any other iterable (read once; one more is read to tell whether it
    had more, and a warning names the bound when it had)."""
    if isinstance(batches, (torch.Tensor, Mapping)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"{name} must be an iterable of batches (tensors, dicts or tuples of "
                        f"tensors), got {type(batches).__name__}")
    if isinstance(batches, (list, tuple)):
        taken, more = list(batches), False
    else:
        taken = list(itertools.islice(batches, max_batches + 1))
        more = len(taken) > max_batches
        del taken[max_batches:]
    if not taken:
        raise ValueError(f"{name} must hold at least one batch, got none")
    for b in taken:
        if not isinstance(b, (torch.Tensor, Mapping, tuple, list)):
            raise TypeError(f"{name}: each batch must be a tensor, a dict or a tuple of "
                            f"tensors, got {type(b).__name__}")
    if more:
        warnings.warn(f"{name}: took the first {max_batches} batches of a "
                      f"{type(batches).__name__} that has more (max_batches={max_batches}; "
                      f"pass a list to take every batch)", stacklevel=4)
    return taken, more


def pick_output(out, output=None) -> torch.Tensor:
    """The tensor to compare from a model's output (see the module's docstring)."""
    if callable(output):
        t = output(out)
    elif output is not None:
        try:
            t = out[output]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"output: the model's output ({type(out).__name__}) has no "
                             f"{output!r}") from None
    elif isinstance(out, torch.Tensor):
        t = out
    else:
        items = out.values() if isinstance(out, Mapping) else out
        t = next((v for v in items if isinstance(v, torch.Tensor) and v.is_floating_point()),
                 None)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"output must pick a floating-point tensor from the model's output, "
                        f"got {type(t).__name__}")
    return t


def _mask(batch, x: torch.Tensor):
    """The batch's attention mask as bool, when it has one of x's leading shape."""
    m = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if isinstance(m, torch.Tensor) and tuple(m.shape) == tuple(x.shape[:-1]):
        return m.to(device=x.device, dtype=torch.bool)
    return None


def _last(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A new layer's activation t with its channels last: moved from dim 1 for a layer with
    ``channels_last=False``, as it is otherwise."""
    return t.movedim(1, -1) if getattr(layer, "channels_last", True) is False else t


def _rows(x: torch.Tensor, mask) -> torch.Tensor:
    """(..., C) -> (n, C): a copy of the real tokens (all when mask is None), never a view
    that would keep the whole activation alive."""
    return (x[mask] if mask is not None else x.reshape(-1, x.shape[-1]).clone()).detach()


def _real(t: torch.Tensor, batch) -> torch.Tensor:
    """(..., C) -> (n, C): the rows of real tokens (all when the batch has no mask of t's
    leading shape), differentiable."""
    mask = _mask(batch, t)
    return t[mask] if mask is not None else t.reshape(-1, t.shape[-1])


def row_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows along the last dimension, float64, flattened."""
    a = a.detach().double().reshape(-1, a.shape[-1])
    b = b.detach().double().reshape(-1, b.shape[-1])
    return nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-300)


# --- the slots: where the old norms were ------------------------------------------------------

@dataclass
class Slot:
    """One replaced norm: its names, the (parent, attribute) places it held, old and new."""
    names: list[str]
    places: list[tuple[nn.Module, str]]
    old: nn.Module
    new: nn.Module
    calls: int = 1                       # times it runs in one forward
    stats: tuple[float, float] = (1.0, 0.0)   # s, m of its input at the fit
    bend: tuple[float, float] = (0.0, 0.0)    # a, b found by the fit
    out_rms: float = 1.0                 # RMS of the norm's output at the fit
    report: "LayerReport | None" = None


@dataclass
class LayerReport:
    """Relative RMS error |new(x) - old(x)| / |old(x)| of one new layer on its own inputs."""
    name: str
    before: float = math.nan     # as the converter built it, before the fit
    fitted: float = math.nan
    distilled: float = math.nan


@dataclass
class CalibrationReport:
    layers: list[LayerReport]
    fit: str
    steps: int
    seconds: dict = field(default_factory=dict)
    cosine: dict = field(default_factory=dict)       # stage -> (mean, min) on held-out
    history: list = field(default_factory=list)      # (step, loss) of every step
    #: argument ("calibrate", "held_out") -> (batches used, whether the iterable had more)
    batches: dict = field(default_factory=dict)
    #: the Calibration itself: ``.distil(steps)`` goes on, ``.cosines(batches)`` measures
    calibration: "Calibration | None" = field(default=None, repr=False)

    def __str__(self) -> str:
        w = max(len("layer"), *(len(r.name) for r in self.layers))
        lines = [f"relative RMS error of each new layer against its norm, on its own inputs "
                 f"({self.fit} fit, {self.steps} distillation steps)",
                 f"{'layer':<{w}} {'as built':>9} {'fitted':>9} {'distilled':>9}"]
        lines += [f"{r.name:<{w}} {r.before:9.4g} {r.fitted:9.4g} {r.distilled:9.4g}"
                  for r in self.layers]
        lines += [f"held-out cosine to the original, {stage}: mean {mean:.4f}, min {low:.4f}"
                  for stage, (mean, low) in self.cosine.items()]
        lines += [f"{name}: the first {n} batches of an iterable that has more (max_batches)"
                  for name, (n, more) in self.batches.items() if more]
        return "\n".join(lines)


# --- fitting one layer ------------------------------------------------------------------------

def _scalars_of(layer: nn.Module):
    return next((SCALARS[c] for c in type(layer).__mro__ if c in SCALARS), None)


def _has_shift(layer: nn.Module) -> bool:
    return "shift" in _scalars_of(layer)(1.0, 0.0)


def _set_scalars(layer: nn.Module, a: float, b: float, s: float, m: float) -> None:
    values = _scalars_of(layer)(s * math.exp(-a), m + b * s)
    with torch.no_grad():
        for name, v in values.items():
            getattr(layer, name).fill_(v)


def _affine(f, y, layer: nn.Module, w0, b0):
    """Per channel least squares of y ~ w f + b over the free ones of w, b: (w, b, sse)."""
    fit_w, fit_b = layer.weight.requires_grad, layer.bias is not None
    if fit_w and fit_b:
        fm, ym = f.mean(0), y.mean(0)
        fc, yc = f - fm, y - ym
        w = (fc * yc).sum(0) / (fc * fc).sum(0).clamp_min(1e-300)
        b = ym - w * fm
    elif fit_w:
        w, b = (f * (y - b0)).sum(0) / (f * f).sum(0).clamp_min(1e-300), b0
    elif fit_b:
        w, b = w0, (y - w0 * f).mean(0)
    else:
        w, b = w0, b0
    return w, b, ((w * f + b - y) ** 2).sum().item()


def relative_error(pred: torch.Tensor, y: torch.Tensor) -> float:
    """|pred - y| / |y| (Frobenius), float64."""
    pred, y = pred.double(), y.double()
    return math.sqrt(((pred - y) ** 2).sum().item() / max((y * y).sum().item(), 1e-300))


def input_stats(x: torch.Tensor) -> tuple[float, float]:
    """s (root of the mean over tokens of the per-token variance) and m (the mean) of x (n, C)."""
    x = x.double()
    s = x.var(-1, unbiased=False).mean().sqrt().item()
    return (s if s > 0 else 1.0), x.mean().item()


def fit_layer(slot: Slot, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Fit slot.new to y = old(x) on the rows (n, C); return its error before and after
    (computed in float64, with the layer's parameters as they are)."""
    new = slot.new
    x, y = x.double(), y.double()
    with torch.no_grad():
        before = relative_error(_float64(new)(x), y)
        probe = _unit_probe(new)
        s, m = input_stats(x)
        w0 = new.weight.detach().double()
        b0 = new.bias.detach().double() if new.bias is not None else torch.zeros_like(w0)
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        xs, ys = x[pick[:SEARCH_TOKENS]], y[pick[:SEARCH_TOKENS]]

        def sse(a, b):
            _set_scalars(probe, a, b, s, m)
            return _affine(probe(xs), ys, new, w0, b0)[2]

        a, b = _search(sse, _has_shift(new))
        _set_scalars(probe, a, b, s, m)
        w, bias, _ = _affine(probe(x), y, new, w0, b0)
        _set_scalars(new, a, b, s, m)
        new.weight.copy_(w)
        if new.bias is not None:
            new.bias.copy_(bias)
        slot.stats, slot.bend = (s, m), (a, b)
        slot.out_rms = y.pow(2).mean().sqrt().item() or 1.0
        return before, relative_error(_float64(new)(x), y)


def _float64(layer: nn.Module) -> nn.Module:
    """A float64 copy of the layer (float64 runs op by op: nothing to compile per shape)."""
    return copy.deepcopy(layer).double().requires_grad_(False)


def _unit_probe(layer: nn.Module) -> nn.Module:
    """A float64 copy of the layer with weight 1 and no bias: f(x) alone."""
    probe = _float64(layer)
    with torch.no_grad():
        probe.weight.fill_(1.0)
    probe.bias = None
    return probe


def _search(sse, shift: bool) -> tuple[float, float]:
    """The (a, b) of least sse: a grid, then ZOOMS 3 x 3 grids, each half as wide, around
    the best point so far."""
    grid_b = GRID_B if shift else [0.0]
    best = min((sse(a, b), a, b) for a in GRID_A for b in grid_b)
    da, db = GRID_A[1] - GRID_A[0], (GRID_B[1] - GRID_B[0]) if shift else 0.0
    for _ in range(ZOOMS):
        da, db = da / 2, db / 2
        _, a0, b0 = best
        steps = [(i, j) for i in (-1, 0, 1) for j in ((-1, 0, 1) if shift else (0,))]
        best = min(best, *((sse(a0 + i * da, b0 + j * db), a0 + i * da, b0 + j * db)
                           for i, j in steps if (i, j) != (0, 0)))
    return best[1], best[2]


# --- the calibration --------------------------------------------------------------------------

class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled, self.stream = enabled, stream or sys.stderr
        self.t0, self.shown = time.perf_counter(), -1

    def note(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=self.stream, flush=True)

    def bar(self, what: str, i: int, n: int, extra: str = "") -> None:
        if not self.enabled:
            return
        tty = getattr(self.stream, "isatty", lambda: False)()
        tenth = 10 * i // max(n, 1)
        if not tty and tenth == self.shown and i != n:
            return
        self.shown = tenth
        filled = 20 * i // max(n, 1)
        line = (f"[{time.perf_counter() - self.t0:6.1f}s] {what} [{'#' * filled}"
                f"{'.' * (20 - filled)}] {i}/{n} {extra}")
        end = "\n" if not tty or i == n else ""
        print(("\r" if tty else "") + line, end=end, file=self.stream, flush=True)
        if i == n:
            self.shown = -1


class Calibration:
    """The stages on a converted model; ``run`` does all of them, the experiment steps in.

    ``root`` is the old norm when the model itself was one (then ``model`` is the new layer).
    ``batches`` are kept as a list (at most ``max_batches`` of an iterable other than a list
    or tuple; ``more_batches`` says whether it had more).
    """

    def __init__(self, model: nn.Module, slots: list[Slot], batches, *,
                 output=DEFAULTS["output"], seed: int = DEFAULTS["seed"],
                 fit_tokens: int = DEFAULTS["fit_tokens"], lr: float = DEFAULTS["lr"],
                 layer_loss: float = DEFAULTS["layer_loss"],
                 progress: bool = DEFAULTS["progress"],
                 max_batches: int = DEFAULTS["max_batches"], root: nn.Module | None = None):
        self.model, self.slots, self.root = model, slots, root
        self.batches, self.more_batches = _check_batches(batches, "calibrate", max_batches)
        self.output, self.seed, self.fit_tokens = output, seed, fit_tokens
        self.lr, self.layer_loss = lr, layer_loss
        self.progress = Progress(progress)
        self.step, self.optimizer, self.order = 0, None, []
        self.history: list[tuple[int, float]] = []
        self._reference: dict[int, torch.Tensor] = {}

    # -- running the two models --

    @contextmanager
    def original(self):
        """Within the block, the model computes what it did before the conversion."""
        if self.root is not None:
            yield self.root
            return
        for slot in self.slots:
            for parent, attr in slot.places:
                setattr(parent, attr, slot.old)
        try:
            yield self.model
        finally:
            for slot in self.slots:
                for parent, attr in slot.places:
                    setattr(parent, attr, slot.new)

    def capture(self, batch, slot: Slot, original: bool) -> list[tuple]:
        """(input, output) of each of the slot's calls in a forward of the batch by the
        original or the converted model, the rest of the forward skipped once the slot has
        run its calls; channels last (``_last``)."""
        seen = []

        def hook(_m, args, out):
            seen.append((_last(slot.new, args[0].detach()), _last(slot.new, out.detach())))
            if len(seen) == slot.calls:
                raise _Stop

        handle = (slot.old if original else slot.new).register_forward_hook(hook)
        try:
            with torch.no_grad():
                if original:
                    with self.original() as m:
                        call(m, batch)
                else:
                    call(self.model, batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen

    def census(self) -> None:
        """How often each slot's norm runs in one forward (on the first batch)."""
        counts = {id(s): 0 for s in self.slots}
        handles = [s.old.register_forward_pre_hook(
            lambda _m, _a, k=id(s): counts.__setitem__(k, counts[k] + 1)) for s in self.slots]
        try:
            with torch.no_grad(), self.original() as m:
                pick_output(call(m, self.batches[0]), self.output)
        finally:
            for h in handles:
                h.remove()
        for s in self.slots:
            s.calls = max(counts[id(s)], 1)

    # -- 1. fit --

    def fit(self, mode: str = "sequential") -> None:
        """Fit every slot to the old norm's output in the original model, on the same
        tokens: "sequential" takes the slot's input from the converted model (the slots
        before it already fitted, in order); "independent" from the original model."""
        if mode not in FITS:
            raise ValueError(f"fit must be one of {list(FITS)}, got {mode!r}")
        self.census()
        self.fit_batches = []
        order = torch.randperm(len(self.batches),
                               generator=torch.Generator().manual_seed(self.seed)).tolist()
        for k, slot in enumerate(self.slots):
            self.progress.bar("fit", k, len(self.slots), slot.names[0])
            x, y = self._sample(slot, order, converted=mode == "sequential")
            slot.report.before, slot.report.fitted = fit_layer(slot, x, y)
        self.progress.bar("fit", len(self.slots), len(self.slots))

    def _sample(self, slot: Slot, order: list[int], converted: bool):
        """The slot's inputs (from the converted model, or the original) and the old norm's
        outputs in the original model on the same tokens: the first fit_tokens real tokens
        of the batches taken in a seeded random order, only as many batches as that needs
        (self.fit_batches: those any slot needed)."""
        xs, ys, n = [], [], 0
        for i in order:
            if n >= self.fit_tokens:
                break
            batch = self.batches[i]
            if not any(b is batch for b in self.fit_batches):
                self.fit_batches.append(batch)
            pairs = self.capture(batch, slot, original=True)
            if converted:
                pairs = [(x, y) for (x, _), (_, y) in
                         zip(self.capture(batch, slot, original=False), pairs)]
            for x, y in pairs:
                mask = _mask(batch, y)
                xs.append(_rows(x, mask))
                ys.append(_rows(y, mask))
                n += xs[-1].shape[0]
        return torch.cat(xs)[:self.fit_tokens], torch.cat(ys)[:self.fit_tokens]

    # -- 2. distil --

    def trainable(self) -> list[tuple[nn.Parameter, float]]:
        """(parameter, learning-rate scale) of every new layer's trainable parameter."""
        out, seen = [], set()
        for slot in self.slots:
            if id(slot.new) in seen:
                continue
            seen.add(id(slot.new))
            scales = _lr_scales(slot)
            out += [(p, scales[n]) for n, p in slot.new.named_parameters() if p.requires_grad]
        return out

    @contextmanager
    def _frozen(self):
        """Only the new layers' trainable parameters require grad within the block."""
        train = {id(p) for p, _ in self.trainable()}
        models = [self.model] + ([self.root] if self.root is not None else [])
        with self.original() as m:
            everything = {id(p): p for mm in [*models, m] for p in mm.parameters()}
        saved = {k: p.requires_grad for k, p in everything.items()}
        for k, p in everything.items():
            p.requires_grad_(k in train)
        try:
            yield
        finally:
            for k, p in everything.items():
                p.requires_grad_(saved[k])

    def distil(self, steps: int) -> None:
        """``steps`` more steps of Adam, one batch each (a seeded shuffle of the batches per
        pass over them); resumable: the optimizer and the order carry over."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(
                [{"params": [p], "lr": self.lr * s} for p, s in self.trainable()])
            self._order_gen = torch.Generator().manual_seed(self.seed)
        with self._frozen():
            for i in range(steps):
                if not self.order:
                    self.order = torch.randperm(len(self.batches),
                                                generator=self._order_gen).tolist()
                loss = self._loss(self.batches[self.order.pop(0)])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                self.history.append((self.step, loss.item()))
                self.progress.bar("distil", i + 1, steps, f"loss {loss.item():.4g}")

    def _loss(self, batch) -> torch.Tensor:
        want = self.layer_loss > 0
        ref_layers, new_layers = [], []
        handles = [s.old.register_forward_hook(
            lambda _m, _a, out, s=s: ref_layers.append(_last(s.new, out.detach())))
            for s in self.slots] if want else []
        try:
            with torch.no_grad(), self.original() as m:
                ref = pick_output(call(m, batch), self.output)
        finally:
            for h in handles:
                h.remove()
        handles = [s.new.register_forward_hook(
            lambda _m, _a, out, s=s: new_layers.append(_last(s.new, out)))
            for s in self.slots] if want else []
        try:
            out = pick_output(call(self.model, batch), self.output)
        finally:
            for h in handles:
                h.remove()
        loss = 1 - nn.functional.cosine_similarity(_real(out, batch), _real(ref, batch),
                                                   dim=-1).mean()
        if want:
            terms = []
            for new, old in zip(new_layers, ref_layers):
                n, o = _real(new, batch), _real(old, batch)
                terms.append(((n - o) ** 2).mean() / (o * o).mean().clamp_min(1e-30))
            loss = loss + self.layer_loss * torch.stack(terms).mean()
        return loss

    # -- 3. measure --

    def local_errors(self) -> list[float]:
        """Per slot, |new(x) - old(x)| / |old(x)| on its inputs in the converted model, over
        the calibration batches."""
        sums = {id(s): [0.0, 0.0] for s in self.slots}

        def hook(slot, batch, x, out):
            old, out = _last(slot.new, slot.old(x)), _last(slot.new, out)
            mask = _mask(batch, out)
            new, old = _rows(out, mask).double(), _rows(old, mask).double()
            sums[id(slot)][0] += ((new - old) ** 2).sum().item()
            sums[id(slot)][1] += (old * old).sum().item()

        for batch in self.batches:
            handles = [s.new.register_forward_hook(
                lambda _m, args, out, s=s: hook(s, batch, args[0], out)) for s in self.slots]
            try:
                with torch.no_grad():
                    call(self.model, batch)
            finally:
                for h in handles:
                    h.remove()
        return [math.sqrt(a / max(b, 1e-300)) for a, b in (sums[id(s)] for s in self.slots)]

    def outputs(self, batches, original: bool) -> list[torch.Tensor]:
        """The compared output of each batch (its rows of real tokens), by the original or
        the converted model."""
        outs = []
        with torch.no_grad():
            for batch in batches:
                if original:
                    with self.original() as m:
                        out = pick_output(call(m, batch), self.output)
                else:
                    out = pick_output(call(self.model, batch), self.output)
                outs.append(_real(out, batch).detach())
        return outs

    def cosines(self, batches) -> torch.Tensor:
        """Per row of the outputs, cosine between the converted and the original model's,
        on the given batches (the original's outputs are computed once and kept)."""
        key = id(batches)
        if key not in self._reference:
            self._reference[key] = self.outputs(batches, original=True)
        new = self.outputs(batches, original=False)
        return torch.cat([row_cosines(a, b) for a, b in zip(new, self._reference[key])])


def _lr_scales(slot: Slot) -> dict[str, float]:
    """Parameter name -> learning-rate scale: how far it moves when the curve's bend or
    centre moves by one unit of (a, b) (the input's s for an input shift); the weight by its
    RMS, the bias by the RMS of the norm's output."""
    s, m = slot.stats
    a, b = slot.bend
    table = _scalars_of(slot.new)
    here = table(s * math.exp(-a), m + b * s)
    h = 1e-4
    db = {k: (table(s * math.exp(-a), m + (b + h) * s)[k] - v) / h for k, v in here.items()}
    da = {k: (table(s * math.exp(-a - h), m + b * s)[k] - v) / h for k, v in here.items()}
    scales = {k: abs(db[k]) if abs(db[k]) > 0 else abs(da[k]) for k in here}
    w = slot.new.weight.detach().double().pow(2).mean().sqrt().item()
    return {**scales, "weight": w, "bias": slot.out_rms}


def run(model: nn.Module, slots: list[Slot], batches, *, steps: int = DEFAULTS["steps"],
        held_out=DEFAULTS["held_out"], fit: str = DEFAULTS["fit"],
        max_batches: int = DEFAULTS["max_batches"], root: nn.Module | None = None,
        **options) -> CalibrationReport:
    """Fit, distil ``steps`` steps, measure; the new layers' parameters change in place.
    At most ``max_batches`` batches are read from ``batches`` and from ``held_out`` each,
    unless it is a list or tuple (taken whole)."""
    batches, more = _check_batches(batches, "calibrate", max_batches)
    held, more_held = (_check_batches(held_out, "held_out", max_batches)
                       if held_out is not None else (None, False))
    for slot in slots:
        if _scalars_of(slot.new) is None:
            raise ValueError(f"calibrate: no fit for {type(slot.new).__name__} (known: "
                             f"{', '.join(c.__name__ for c in SCALARS)})")
    was = [(m, m.training) for m in (model, root) if m is not None]
    for m, _ in was:
        m.eval()
    try:
        cal = Calibration(model, slots, batches, root=root, max_batches=max_batches,
                          **options)
        for slot in slots:
            slot.report = LayerReport(slot.names[0])
        t0 = time.perf_counter()
        cal.fit(fit)
        seconds = {"fit": time.perf_counter() - t0}
        cosine = {}
        if held is not None:
            c = cal.cosines(held)
            cosine["fitted"] = (c.mean().item(), c.min().item())
        if steps:
            t0 = time.perf_counter()
            cal.distil(steps)
            seconds["distil"] = time.perf_counter() - t0
            if held is not None:
                c = cal.cosines(held)
                cosine["distilled"] = (c.mean().item(), c.min().item())
        if steps:
            for slot, err in zip(slots, cal.local_errors()):
                slot.report.distilled = err
        used = {"calibrate": (len(batches), more)}
        if held is not None:
            used["held_out"] = (len(held), more_held)
        return CalibrationReport([s.report for s in slots], fit, steps, seconds, cosine,
                                 cal.history, used, cal)
    finally:
        for m, mode in was:
            m.train(mode)
