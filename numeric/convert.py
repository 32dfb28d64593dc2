"""Replace a model's LayerNorm and RMSNorm modules with a dynamic counterpart.

    report = numeric.convert(model, to="dyisru")
    print(report)          # one line per replaced module
    model = report.model   # the same model, or the replacement when model itself was a norm

The known norms and the targets are tables; subclasses of a known norm are converted too.
Each new layer takes the device and dtype of the norm's parameters (of the enclosing
module's, for a norm without any) and has a bias only if the norm had one. With
``keep_affine`` (default) a norm's learned weight and bias carry over: the new weight is the
norm's weight times the target's default scale, the bias is the norm's bias. A norm without
a weight gets the target's default scale as a frozen weight (requires_grad False), so the
converted model learns no affine parameter the original did not have.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import calibrate as calibration
from . import norms
from .layers import LAYERS

#: target name -> layer class.
TARGETS = LAYERS


def _norm_parts(m: nn.Module):
    """(C, weight or None, bias or None) of a known norm."""
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"can only convert norms over the last dimension, got "
                         f"normalized_shape={shape}")
    return shape[0], getattr(m, "weight", None), getattr(m, "bias", None)


#: norm class (and its subclasses) -> how to read it (a new norm adds a row).
KNOWN_NORMS = {nn.LayerNorm: _norm_parts, nn.RMSNorm: _norm_parts,
               norms.LayerNorm: _norm_parts, norms.RMSNorm: _norm_parts}


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


class Report(list):
    """The replacements made, in module order; prints one line each.

    ``model`` is the converted model: the one passed in, changed in place, or the new layer
    when the model itself was a norm. ``unfused`` names the modules whose fused path
    was turned off (see FUSED_PATHS). ``calibration`` (with ``calibrate``) is the
    numeric.calibrate.CalibrationReport: per layer its error before and after the fit and
    after distillation, the held-out cosines.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.unfused: list[str] = []
        self.calibration = None

    def __str__(self) -> str:
        lines = [str(r) for r in self] + [f"{n or '(model)'}: torch's fused path off (it "
                                          f"would run a LayerNorm)" for n in self.unfused]
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
    c, w, b = _lookup(KNOWN_NORMS, old)(old)
    new = TARGETS[to](c, **{"bias": b is not None, **place, **options})
    with torch.no_grad():
        if keep_affine and w is not None:
            new.weight.mul_(w.to(new.weight.dtype))
        if keep_affine and b is not None and new.bias is not None:
            new.bias.copy_(b.to(new.bias.dtype))
    if w is None:
        new.weight.requires_grad_(False)
    return new


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
            **options) -> Report:
    """Replace every LayerNorm / RMSNorm in ``model`` in place; return what changed.

    ``to`` is one of TARGETS; ``options`` go to the target's constructor (alpha_init=...,
    bias=...). When ``model`` itself is a norm, ``report.model`` is its replacement.

    With ``calibrate`` (an iterable of the model's inputs), the new layers are then fitted
    to the norms on those batches and distilled ``steps`` Adam steps against the original
    model's ``output`` (numeric.calibrate says how); ``held_out`` batches give the cosine
    to the original; ``report.calibration`` holds the per-layer errors and the cosines.
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {sorted(TARGETS)}, got {to!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    tuning = _check_calibration(calibrate, steps=steps, held_out=held_out, fit=fit,
                                output=output, lr=lr, layer_loss=layer_loss, seed=seed,
                                fit_tokens=fit_tokens, progress=progress)
    if _lookup(KNOWN_NORMS, model) is not None:
        report = Report(_build(model, to, keep_affine, options, _placement(model)))
        report.append(Replacement("", repr(model), repr(report.model)))
        slots = [calibration.Slot([""], [], model, report.model)]
        root = model
    else:
        report, slots = Report(model), _replace_all(model, to, keep_affine, options)
        report.extend(Replacement(s.names[0], repr(s.old), repr(s.new)) for s in slots)
        _unfuse(model, [n for s in slots for n in s.names], report)
        root = None
    if calibrate is not None and slots:
        report.calibration = calibration.run(report.model, slots, calibrate, root=root,
                                             **tuning)
    return report


def _replace_all(model: nn.Module, to: str, keep_affine: bool, options: dict):
    """Put a new layer in place of every known norm; one slot per norm, in module order."""
    slots = {}                                  # id(old norm) -> its slot
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if _lookup(KNOWN_NORMS, child) is None:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) not in slots:          # a norm shared by two parents stays shared
                new = _build(child, to, keep_affine, options, _placement(child, parent, model))
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
    for name in ("steps", "seed", "fit_tokens"):
        v = tuning[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < (1 if name == "fit_tokens" else 0):
            raise ValueError(f"{name} must be {'positive' if name == 'fit_tokens' else '>= 0'}"
                             f", got {v}")
    for name in ("lr", "layer_loss"):
        v = tuning[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (name == "lr" and v == 0):
            raise ValueError(f"{name} must be a finite number "
                             f"{'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
    if tuning["fit"] not in calibration.FITS:
        raise ValueError(f"fit must be one of {list(calibration.FITS)}, got {tuning['fit']!r}")
    return tuning
