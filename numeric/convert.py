"""Replace a model's nn.LayerNorm and nn.RMSNorm modules with a dynamic counterpart.

    report = numeric.convert(model, to="dyisru")
    print(report)          # one line per replaced module

The known norms and the targets are tables; device and dtype of each replaced module are
kept. With ``keep_affine`` (default) a norm's learned weight and bias carry over: the new
weight is the norm's weight times the target's default scale, the bias is the norm's bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import DyISRU, DyISRULN, DyT, DyTLN

#: target name -> layer class.
TARGETS = {"dyt": DyT, "dyisru": DyISRU, "dyt_ln": DyTLN, "dyisru_ln": DyISRULN}


def _norm_parts(m: nn.Module):
    """(C, weight or None, bias or None) of a known norm."""
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"can only convert norms over the last dimension, got "
                         f"normalized_shape={shape}")
    return shape[0], getattr(m, "weight", None), getattr(m, "bias", None)


#: norm class -> how to read it (both share the reader; a new norm adds a row).
KNOWN_NORMS = {nn.LayerNorm: _norm_parts, nn.RMSNorm: _norm_parts}


@dataclass(frozen=True)
class Replacement:
    name: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.name}: {self.old} -> {self.new}"


class Report(list):
    """The replacements made, in module order; prints one line each."""

    def __str__(self) -> str:
        return "\n".join(map(str, self)) or "no LayerNorm or RMSNorm found"


def _build(old: nn.Module, to: str, keep_affine: bool, options: dict) -> nn.Module:
    c, w, b = KNOWN_NORMS[type(old)](old)
    ref = w if w is not None else next(old.buffers(), None)
    kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    new = TARGETS[to](c, bias=True, **options, **kw)
    if keep_affine:
        with torch.no_grad():
            if w is not None:
                new.weight.mul_(w.to(new.weight.dtype))
            if b is not None:
                new.bias.copy_(b.to(new.bias.dtype))
    return new


def convert(model: nn.Module, to: str = "dyisru", *, keep_affine: bool = True,
            **options) -> Report:
    """Replace every nn.LayerNorm / nn.RMSNorm in ``model`` in place; return what changed.

    ``to`` is one of TARGETS; ``options`` go to the target's constructor (alpha_init=...).
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {sorted(TARGETS)}, got {to!r}")
    report = Report()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) not in KNOWN_NORMS:
                continue
            new = _build(child, to, keep_affine, options)
            setattr(parent, child_name, new)
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            report.append(Replacement(full, repr(child), repr(new)))
    return report
