"""The numerical experiments, by name: ``python -m numeric NAME --out DIR``.

Each module named here exposes ``run(out: pathlib.Path, *, quick: bool = False,
progress=print) -> dict`` that writes its figures (PNG) and tables (CSV and Markdown)
into ``out`` and returns its key numbers; ``quick`` is the small configuration the
fast tests use. Modules are imported only when their experiment runs.
"""
from __future__ import annotations

import importlib

#: experiment name -> (module, one-line description); the CLI dispatches through it.
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "outliers": ("numeric.experiments.outliers",
                 "the paper's outlier demonstration: DyT and DyISRU fitted to a norm's output"),
    "shapes": ("numeric.experiments.shapes",
               "the S-curves behind DyT: a norm's output against its input over many tokens"),
    "real-model": ("numeric.experiments.real_model",
                   "all-MiniLM-L6-v2's own LayerNorms: identity, fits, replacement"),
    "placement": ("numeric.experiments.placement",
                  "Pre-LN vs Post-LN with each norm: gradients at init and short training"),
    "norms-axes": ("numeric.experiments.norms_axes",
                   "BatchNorm, LayerNorm and RMSNorm over explicit axes, checked"),
    "lm": ("numeric.experiments.lm",
           "a byte-level language model with each norm: loss, seeds, saturation, step time"),
}


#: measurements rather than experiments: run by name, not by ``all``.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "bench": ("numeric.bench", "our layers against eager, compiled, fused norms (and kernels)"),
    "gpu-verify": ("numeric.verify", "on a CUDA machine: the whole suite, largest errors, bench"),
}

RUNNABLE = {**EXPERIMENTS, **BENCHMARKS}


def load(name: str):
    """The run function of an experiment or benchmark (KeyError for an unknown name)."""
    module, _ = RUNNABLE[name]
    return importlib.import_module(module).run
