"""Replace a model's LayerNorm and RMSNorm modules with a dynamic counterpart.

    report = numeric.convert(model, to="dyisru")
    print(report)          # one line per replaced module
    model = report.model   # the same model, or the replacement when model itself was a norm

The known norms and the targets are tables; subclasses of a known norm are converted too.
A subclass with a forward of its own is converted only where the converter can tell what it
computes: it is probed (``_layout``) for each row of LAYOUTS, and converted when it computes
its known norm over the channels of exactly one layout, channels last or channels first
(timm's ``LayerNorm2d``, a LayerNorm over dim 1 of (N, C, H, W), becomes a channels-first
layer, ``channels_last=False``, where the target has that form: DyT). Any other such
subclass stays in place and the report names it with the reason (``report.skipped``).
Each new layer takes the device and dtype of the norm's parameters (of the enclosing
module's, for a norm without any) and has a bias only if the norm had one. With
``keep_affine`` (default) a norm's learned weight and bias carry over: the new weight is the
norm's weight times the target's default scale, the bias is the norm's bias. A norm without
a weight gets the target's default scale as a frozen weight (requires_grad False), so the
converted model learns no affine parameter the original did not have.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as tF

from . import calibrate as calibration
from . import reference_norms
from .modules import LAYERS


def _norm_parts(m: nn.Module):
    """(C, weight or None, bias or None) of a known norm."""
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"can only convert norms over the last dimension, got "
                         f"normalized_shape={shape}")
    return shape[0], getattr(m, "weight", None), getattr(m, "bias", None)


def _layer_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torch's LayerNorm of x over its last dimension with m's weight, bias and eps."""
    return tF.layer_norm(x, tuple(m.normalized_shape), m.weight, m.bias, m.eps)


def _rms_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torch's RMSNorm of x over its last dimension with m's weight and eps."""
    return tF.rms_norm(x, tuple(m.normalized_shape), m.weight, m.eps)


@dataclass(frozen=True)
class Norm:
    """How to read a known norm: ``parts`` gives (C, weight, bias); ``reference`` (norm, x)
    what it computes over x's last dimension, which a subclass's own forward is probed
    against; ``what`` names that computation."""
    parts: Callable
    reference: Callable
    what: str


#: norm class (and its subclasses) -> how to read it (a new norm adds a row).
KNOWN_NORMS = {nn.LayerNorm: Norm(_norm_parts, _layer_norm, "LayerNorm"),
               nn.RMSNorm: Norm(_norm_parts, _rms_norm, "RMSNorm"),
               reference_norms.LayerNorm: Norm(_norm_parts, _layer_norm, "LayerNorm"),
               reference_norms.RMSNorm: Norm(_norm_parts, _rms_norm, "RMSNorm")}

#: the forwards that compute a known norm over the last dimension: a norm whose class runs
#: one of them converts without a probe.
PLAIN_FORWARDS = {c.forward for c in KNOWN_NORMS}


@dataclass(frozen=True)
class Layout:
    """Where a norm's channels are: the shape of a probe input with C channels, the moves
    that put the channels last and back, and the target's options for this layout."""
    probe_shape: Callable[[int], tuple]
    to_last: Callable[[torch.Tensor], torch.Tensor]
    from_last: Callable[[torch.Tensor], torch.Tensor]
    options: dict


#: layout name -> how to probe for it; a subclass of a known norm with a forward of its own
#: is converted when it computes its norm in exactly one of these (a new pattern adds a row).
#: The probe's other sizes (2, 3, 5) differ from one another, so a forward that reads the
#: channels from another dimension fails or computes other values.
LAYOUTS = {
    "channels last": Layout(lambda c: (2, 3, 5, c), lambda x: x, lambda y: y, {}),
    "channels first": Layout(lambda c: (2, c, 3, 5), lambda x: x.movedim(1, -1),
                             lambda y: y.movedim(-1, 1), {"channels_last": False}),
}


def _lookup(table: dict, m: nn.Module):
    """The row of the nearest class in m's class hierarchy that the table has, or None."""
    return next((table[c] for c in type(m).__mro__ if c in table), None)


def _no_fused_layer(layer: nn.TransformerEncoderLayer) -> None:
    # Its forward takes the fused path only when activation_relu_or_gelu is set, and
    # checks that before reading norm1.eps (which a converted layer does not have).
    layer.activation_relu_or_gelu = 0


def _no_nested(encoder: nn.TransformerEncoder) -> None:
    # With use_nested_tensor False its forward keeps padded tensors for its layers.
    encoder.use_nested_tensor = False


#: torch modules (and subclasses) with a fused inference path that runs its own LayerNorm
#: (from the norms' eps, weight and bias) -> how to make them run their submodules instead.
FUSED_PATHS = {nn.TransformerEncoderLayer: _no_fused_layer, nn.TransformerEncoder: _no_nested}


@dataclass(frozen=True)
class Replacement:
    name: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.name or '(model)'}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class Skipped:
    name: str
    old: str
    why: str

    def __str__(self) -> str:
        return f"{self.name or '(model)'}: skipped {self.old}: {self.why}"


class Report(list):
    """The replacements made, in module order; prints one line each.

    ``model`` is the converted model: the one passed in, changed in place, or the new layer
    when the model itself was a norm. ``skipped`` lists the norms left in place (subclasses
    whose own forward the converter cannot map onto a target), with the reason. ``unfused``
    names the modules whose fused path was turned off (see FUSED_PATHS). ``calibration``
    (with ``calibrate``) is the numeric.calibrate.CalibrationReport: per layer its error
    before and after the fit and after distillation, the held-out cosines, the batches used.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.skipped: list[Skipped] = []
        self.unfused: list[str] = []
        self.calibration = None

    def __str__(self) -> str:
        lines = [str(r) for r in self] + [str(s) for s in self.skipped]
        lines += [f"{n or '(model)'}: torch's fused path off (it would run a LayerNorm)"
                  for n in self.unfused]
        if self.calibration is not None:
            lines.append(str(self.calibration))
        return "\n".join(lines) or "no LayerNorm or RMSNorm found"


def _placement(*modules: nn.Module) -> dict:
    """device and dtype of the first floating-point tensor of the first module that has one."""
    for m in modules:
        for t in itertools.chain(m.parameters(), m.buffers()):
            if t.is_floating_point():
                return {"device": t.device, "dtype": t.dtype}
    return {}


def _build(old: nn.Module, to: str, keep_affine: bool, options: dict, place: dict) -> nn.Module:
    c, w, b = _lookup(KNOWN_NORMS, old).parts(old)
    new = LAYERS[to](c, **{"bias": b is not None, **place, **options})
    with torch.no_grad():
        if keep_affine and w is not None:
            new.weight.mul_(w.to(new.weight.dtype))
        if keep_affine and b is not None and new.bias is not None:
            new.bias.copy_(b.to(new.bias.dtype))
    if w is None:
        new.weight.requires_grad_(False)
    return new


# --- what a norm with a forward of its own computes ------------------------------------------

def _own_forward(m: nn.Module) -> bool:
    """Whether m runs a forward other than a known norm's (its class's, or one set on it)."""
    return "forward" in vars(m) or type(m).forward not in PLAIN_FORWARDS


def _probe_copy(m: nn.Module, place: dict) -> tuple[nn.Module, dict]:
    """A copy of the norm with random weight and bias (so that no value of the norm's own,
    a zero weight say, hides the layout), and where to run it: the norm's device and dtype,
    or the CPU for a norm on the meta device (which has no values to compare)."""
    device = torch.device(place.get("device", "cpu"))
    where = {"device": "cpu" if device.type == "meta" else device,
             "dtype": place.get("dtype", torch.get_default_dtype())}
    probe = copy.deepcopy(m)
    if any(t.is_meta for t in itertools.chain(probe.parameters(), probe.buffers())):
        probe.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, centre in (("weight", 1.0), ("bias", 0.0)):
            p = getattr(probe, name, None)
            if isinstance(p, torch.Tensor) and p.is_floating_point():
                p.copy_(centre + 0.5 * torch.randn(p.shape, generator=g))
    return probe, where


def _mismatch(probe: nn.Module, reference: Callable, layout: Layout, c: int,
              where: dict) -> str:
    """"" when the probe computes ``reference`` over the channels of ``layout`` on a random
    input, in training and in eval mode; else how it does not. The reference is computed in
    float32 (float64 for float64), the tolerance is 16 ulp of the dtype, 1e-3 at the least:
    the layouts' outputs differ by O(1). torch's random state is left as it was (a forward
    may draw, a dropout say)."""
    x = torch.randn(layout.probe_shape(c), generator=torch.Generator().manual_seed(1))
    x = x.to(**where)
    compute = torch.float64 if where["dtype"] == torch.float64 else torch.float32
    tol = max(1e-3, 16 * torch.finfo(where["dtype"]).eps)
    device = torch.device(where["device"])
    with torch.no_grad(), torch.random.fork_rng(
            devices=[] if device.type == "cpu" else [device], device_type=device.type):
        want = layout.from_last(reference(probe.to(compute), layout.to_last(x.to(compute))))
        probe.to(where["dtype"])
        for training in (True, False):
            probe.train(training)
            try:
                got = probe(x)
            except Exception as e:          # noqa: BLE001 - any failure: not this layout
                said = (str(e).splitlines() or [""])[0]
                said = said if len(said) <= 100 else said[:97] + "..."
                return f"raised {type(e).__name__} ({said})"
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                shape = tuple(getattr(got, "shape", ()))
                return f"returned {type(got).__name__} of shape {shape}"
            err = (got.to(compute) - want).abs().max().item()
            if not err <= tol:
                return f"differs by up to {err:.3g} (in {'training' if training else 'eval'})"
    return ""


def _layout(m: nn.Module, place: dict) -> tuple[str | None, str]:
    """(the LAYOUTS row m's own forward computes its known norm in, "") when exactly one
    matches, else (None, why)."""
    known = _lookup(KNOWN_NORMS, m)
    c = known.parts(m)[0]
    forward = f"its forward ({type(m).__qualname__}.forward)"
    try:
        probe, where = _probe_copy(m, place)
    except Exception as e:                  # noqa: BLE001 - a copy we cannot make or fill
        return None, f"{forward} is its own and no copy could be made to probe it ({e})"
    misses = {name: _mismatch(probe, known.reference, layout, c, where)
              for name, layout in LAYOUTS.items()}
    found = [name for name, miss in misses.items() if not miss]
    if not found:
        return None, (f"{forward} computes no {known.what} over the channels: "
                      + "; ".join(f"{name} input: {miss}" for name, miss in misses.items()))
    if len(found) > 1:
        return None, (f"{forward} computes a {known.what} in more than one layout "
                      f"({', '.join(found)}): no one layer replaces it")
    return found[0], ""


def _accepts(cls: type, options: dict) -> bool:
    """Whether cls's constructor takes every keyword of options."""
    return set(options) <= set(inspect.signature(cls).parameters)


def _plan(m: nn.Module, to: str, place: dict) -> tuple[dict | None, str]:
    """(the target's options for m's layout, "") when m can be converted to ``to``, else
    (None, why it stays)."""
    if not _own_forward(m):
        return {}, ""
    name, why = _layout(m, place)
    if name is None:
        return None, why
    options = LAYOUTS[name].options
    if not _accepts(LAYERS[to], options):
        able = sorted(t for t, cls in LAYERS.items() if _accepts(cls, options))
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        return None, (f"it computes its norm {name}, and {to} has no such form ({given}); "
                      f"{' or '.join(able) or 'no target'} has")
    return options, ""


def _unfuse(model: nn.Module, replaced: list[str], report: Report) -> None:
    """Turn off torch's fused paths in every module that holds a replaced norm."""
    for name, m in model.named_modules():
        fix = _lookup(FUSED_PATHS, m)
        if fix is not None and any(r.startswith(f"{name}.") or not name for r in replaced):
            fix(m)
            report.unfused.append(name)


_TUNING = calibration.DEFAULTS


def convert(model: nn.Module, to: str = "dyisru", *, keep_affine: bool = True,
            calibrate=None, steps: int = _TUNING["steps"], held_out=_TUNING["held_out"],
            fit: str = _TUNING["fit"], output=_TUNING["output"], lr: float = _TUNING["lr"],
            layer_loss: float = _TUNING["layer_loss"], seed: int = _TUNING["seed"],
            fit_tokens: int = _TUNING["fit_tokens"], progress: bool = _TUNING["progress"],
            max_batches: int = _TUNING["max_batches"], **options) -> Report:
    """Replace every LayerNorm / RMSNorm in ``model`` in place; return what changed.

    ``to`` is one of LAYERS; ``options`` go to the target's constructor (alpha_init=...,
    bias=...). When ``model`` itself is a norm, ``report.model`` is its replacement.

    A subclass of a norm with a forward of its own is converted only when a probe shows it
    computes its norm over the channels, last or first (see LAYOUTS); else it stays and
    ``report.skipped`` says why.

    With ``calibrate`` (an iterable of the model's inputs), the new layers are then fitted
    to the norms on those batches and distilled ``steps`` Adam steps against the original
    model's ``output`` (numeric.calibrate says how); ``held_out`` batches give the cosine
    to the original; ``report.calibration`` holds the per-layer errors and the cosines.
    ``calibrate`` and ``held_out`` are read once and kept: a list or tuple whole, at most
    ``max_batches`` (default 64) of any other iterable, so that one that does not end
    (``itertools.cycle(loader)``) is cut there; a warning says when an iterable had more,
    and ``report.calibration.batches`` how many were used.
    """
    if to not in LAYERS:
        raise ValueError(f"to must be one of {sorted(LAYERS)}, got {to!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    tuning = _check_calibration(calibrate, steps=steps, held_out=held_out, fit=fit,
                                output=output, lr=lr, layer_loss=layer_loss, seed=seed,
                                fit_tokens=fit_tokens, progress=progress,
                                max_batches=max_batches)
    if _lookup(KNOWN_NORMS, model) is not None:
        report, slots = Report(model), []
        layout, why = _plan(model, to, _placement(model))
        if layout is None:
            report.skipped.append(Skipped("", repr(model), why))
        else:
            report.model = _build(model, to, keep_affine, {**options, **layout},
                                  _placement(model))
            report.append(Replacement("", repr(model), repr(report.model)))
            slots = [calibration.Slot([""], [], model, report.model)]
        root = model
    else:
        report = Report(model)
        slots = _replace_all(model, to, keep_affine, options, report)
        report.extend(Replacement(s.names[0], repr(s.old), repr(s.new)) for s in slots)
        _unfuse(model, [n for s in slots for n in s.names], report)
        root = None
    if calibrate is not None and slots:
        report.calibration = calibration.run(report.model, slots, calibrate, root=root,
                                             **tuning)
    return report


def _replace_all(model: nn.Module, to: str, keep_affine: bool, options: dict,
                 report: Report):
    """Put a new layer in place of every known norm that can be converted; one slot per
    norm, in module order; the norms left in place go to report.skipped."""
    slots = {}                                  # id(old norm) -> its slot
    left = set()                                # id of the norms left in place
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if _lookup(KNOWN_NORMS, child) is None or id(child) in left:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) not in slots:          # a norm shared by two parents stays shared
                place = _placement(child, parent, model)
                layout, why = _plan(child, to, place)
                if layout is None:
                    left.add(id(child))
                    report.skipped.append(Skipped(full, repr(child), why))
                    continue
                new = _build(child, to, keep_affine, {**options, **layout}, place)
                slots[id(child)] = calibration.Slot([], [], child, new)
            slot = slots[id(child)]
            slot.names.append(full)
            slot.places.append((parent, child_name))
            setattr(parent, child_name, slot.new)
    return list(slots.values())


def _check_calibration(calibrate, **tuning) -> dict:
    """The calibration's options, checked; calibrate=None takes none of them."""
    if calibrate is None:
        given = [k for k, v in tuning.items()
                 if k != "progress" and v is not _TUNING[k] and v != _TUNING[k]]
        if given:
            raise ValueError(f"{given[0]} needs calibrate (the batches to fit on), got "
                             f"calibrate=None")
        return tuning
    for name, least in (("steps", 0), ("seed", 0), ("fit_tokens", 1), ("max_batches", 1)):
        v = tuning[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < least:
            raise ValueError(f"{name} must be {'positive' if least else '>= 0'}, got {v}")
    for name in ("lr", "layer_loss"):
        v = tuning[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (name == "lr" and v == 0):
            raise ValueError(f"{name} must be a finite number "
                             f"{'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
    if tuning["fit"] not in calibration.FITS:
        raise ValueError(f"fit must be one of {list(calibration.FITS)}, got {tuning['fit']!r}")
    return tuning
