"""Triton kernels from the catalog: per layer form one forward and one backward kernel.

The math is the PyTorch code's (derive.forms): the catalog's layer form, its sympy derivatives,
the same numerical-safety rules; then the kernel rules of ``rules`` replace what Triton's
interpreter cannot run (tanh, 1/cosh^2, hypot) by core ``tl`` math, each application
checked, and ``TritonPrinter`` prints the bodies after CSE. Only the skeleton around a
body (pointers, masks, loads, stores, the reduction) is written here, once for all forms.

Dtype policy (as derive/shell.py's): load in the tensor's dtype, compute in float32,
store in the output's dtype; x is clamped to float32's finite range first, so +-inf
saturates (zero gradient) and a NaN stays a NaN in its own element.

Forward: a 2-D grid of (BLOCK_R, BLOCK_C) tiles of a contiguous (N, C) view, one tile per
program: the 0-dim scalars are loaded once per program, weight and bias once per channel of
the tile (1/BLOCK_R loads per element), x once per element; no division by C.
Backward, stage one: a 2-D grid (row programs, channel blocks); a program walks
``rows_per_program`` rows in tiles of (BLOCK_R, BLOCK_C), writes grad_x, and sums the
gradients of weight and bias over its rows in a fixed order into partials[k, program,
channel], and each scalar's over its rows and channels into scalar_partials[k, program,
channel block] (float32, no atomics). Stage two, one launch of channel blocks + 1 programs:
each channel block sums its partials over the row programs, the last program each scalar's
over everything, in float64 and a fixed order, into the gradients themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .catalog import result
from .codegen import BANNER, op_count, statements
from .forms import FORMS, layer_functions, layer_step
from .printers import triton_code
from .rules import KERNEL_RULES, Rewritten, applies, template_rewrite
from .symbols import bias, grad, shift, weight, x

#: The clamp's bound: float32's largest finite value (a constexpr of the generated module).
FLOAT32_MAX = sp.Symbol("FLOAT32_MAX", positive=True)
_CLAMP = sp.Max(sp.Min(x, FLOAT32_MAX), -FLOAT32_MAX)  # NaN-propagating: NaN stays NaN


@dataclass(frozen=True)
class Kernel:
    """One form's kernel body: outputs in core tl math, and what the docstring says."""

    name: str
    params: tuple[sp.Symbol, ...]          # scalar parameters (alpha or beta, then shift)
    outputs: tuple[tuple[str, Rewritten], ...]
    doc: str
    rules: tuple[str, ...]

    @property
    def shifted(self) -> bool:
        return FORMS[self.name].shifted


def _docs(name: str) -> dict[str, str]:
    """The formulas the kernels compute, as the docstrings state them."""
    form, layer = FORMS[name], layer_step(name).expr
    pretty = sp.sstr(form.in_var(layer)) + (", z = x - shift" if form.shifted else "")
    derivs = "\n".join(f"    grad_{v.name} = grad * {sp.sstr(form.in_var(sp.diff(layer, v)))}"
                       for v in (x, *form.params, weight, bias))
    return {"forward": f"{name}: y[n, c] = {pretty}",
            "backward": f"{name}: the derivatives of y = {pretty}, times grad; grad_x element "
                        f"by element, the others summed over the rows:\n\n{derivs}"}


def _kernels(name: str) -> tuple[Kernel, Kernel]:
    """The forward and backward bodies: codegen's outputs (and grad_bias), kernel rules."""
    form = FORMS[name]
    forward, _, backward, *_ = layer_functions(FORMS[name])
    d_bias = ("grad_bias", Rewritten(grad * sp.diff(layer_step(name).expr, bias)))
    outs = {"forward": forward.outputs, "backward": (*backward.outputs, d_bias)}
    done = {k: tuple((n, template_rewrite(KERNEL_RULES, f"{name}_{k}_kernel:{n}", r)) for n, r in v)
            for k, v in outs.items()}
    rules = {k: tuple(rule for rule in KERNEL_RULES
                      if any(applies(rule, r) for _, r in v)) for k, v in outs.items()}
    docs = _docs(name)
    return tuple(Kernel(name, form.params, done[k], docs[k], rules[k])
                 for k in ("forward", "backward"))


# -- the skeleton --------------------------------------------------------------------------

def _lines(kernel: Kernel, indent: str) -> tuple[list[str], int]:
    """The printed body: the clamp, z = x - shift (clamped too: it overflows for x = 3e38,
    shift = -1e38, see forms.SHIFT), temporaries, outputs; and its op count."""
    pre = [(x, _CLAMP)] + ([(FORMS[kernel.name].var, _CLAMP.subs(x, x - shift))]
                           if kernel.shifted else [])
    assigned, body = statements(kernel.outputs)
    names = [n for n, _ in kernel.outputs]
    lines = [f"{indent}{sym} = {triton_code(value)}" for sym, value in [*pre, *assigned]]
    lines += [f"{indent}{n} = {triton_code(e)}" for n, e in zip(names, body)]
    return lines, op_count([v for _, v in assigned] + body)


def _docstring(kernel: Kernel, text: str, ops: int, extra: str) -> str:
    rules = ", ".join(kernel.rules) or "none"
    doc = (f"{text}\n\nFrom the catalog's {kernel.name} = {sp.sstr(result(kernel.name).expr)}."
           f"\nKernel rules: {rules}. {extra}\n\nOperations after CSE: {ops}.")
    doc = doc.replace("\n", "\n    ").replace("    \n", "\n")
    return f'    """{doc}\n    """\n'


def _load(name: str, at: str, mask: str) -> str:
    return f"tl.load({name}_ptr + {at}, mask={mask}, other=0.0).to(tl.float32)"


def forward_source(kernel: Kernel) -> str:
    scalars = [p.name for p in kernel.params]
    body, ops = _lines(kernel, "    ")
    args = ", ".join(["x_ptr", *(f"{s}_ptr" for s in scalars), "weight_ptr", "bias_ptr", "y_ptr",
                      "N", "C", "HAS_BIAS: tl.constexpr", "BLOCK_R: tl.constexpr",
                      "BLOCK_C: tl.constexpr"])
    head = [
        "    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)",
        "    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)",
        "    channel_mask = channels < C",
        "    mask = (rows < N)[:, None] & channel_mask[None, :]",
        "    offsets = rows.to(tl.int64)[:, None] * C + channels[None, :]",
        f"    x = {_load('x', 'offsets', 'mask')}",
        *(f"    {s} = tl.load({s}_ptr).to(tl.float32)" for s in scalars),
        f"    weight = {_load('weight', 'channels', 'channel_mask')}[None, :]",
        "    if HAS_BIAS:",
        f"        bias = {_load('bias', 'channels', 'channel_mask')}[None, :]",
        "    else:",
        "        bias = 0.0",
    ]
    tail = ["    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)"]
    doc = _docstring(kernel, kernel.doc, ops,
                     "Grid: (cdiv(N, BLOCK_R), cdiv(C, BLOCK_C)); x, y (N, C) contiguous, "
                     "weight and bias (C,), scalars 0-dim.")
    return (f"@triton.jit\ndef {kernel.name}_forward_kernel({args}):\n{doc}"
            + "\n".join(head + body + tail) + "\n")


def reduced(kernel: Kernel) -> tuple[list[str], list[str]]:
    """The backward's outputs summed over rows (all but grad_x): the scalars' (over the
    channels too) and the per-channel ones (weight's, bias's), each in partials order."""
    names = [n for n, _ in kernel.outputs if n != "grad_x"]
    scalar = [f"grad_{p.name}" for p in kernel.params]
    return scalar, [n for n in names if n not in scalar]


def _at(k: int, stride: str) -> str:
    """The offset of the k-th of several stacked arrays, stride elements apart."""
    return "" if k == 0 else f"{stride} + " if k == 1 else f"{k} * {stride} + "


def backward_source(kernel: Kernel) -> str:
    scalars = [p.name for p in kernel.params]
    body, ops = _lines(kernel, "        ")
    per_scalar, per_channel = reduced(kernel)
    args = ", ".join(["grad_ptr", "x_ptr", *(f"{s}_ptr" for s in scalars), "weight_ptr",
                      "grad_x_ptr", "partials_ptr", "scalar_partials_ptr", "N", "C",
                      "rows_per_program", "BLOCK_R: tl.constexpr", "BLOCK_C: tl.constexpr"])
    head = [
        "    program = tl.program_id(0)",
        "    block = tl.program_id(1)",
        "    channels = block * BLOCK_C + tl.arange(0, BLOCK_C)",
        "    channel_mask = channels < C",
        *(f"    {s} = tl.load({s}_ptr).to(tl.float32)" for s in scalars),
        f"    weight = {_load('weight', 'channels', 'channel_mask')}[None, :]",
        *(f"    sum_{n} = tl.zeros((BLOCK_C,), dtype=tl.float32)"
          for n in per_scalar + per_channel),
        "    first = program * rows_per_program",
        "    for start in tl.range(first, first + rows_per_program, BLOCK_R):",
        "        rows = start + tl.arange(0, BLOCK_R)",
        "        mask = (rows < N)[:, None] & channel_mask[None, :]",
        "        offsets = rows.to(tl.int64)[:, None] * C + channels[None, :]",
        f"        x = {_load('x', 'offsets', 'mask')}",
        f"        grad = {_load('grad', 'offsets', 'mask')}",
    ]
    loop_tail = [
        "        tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)",
        *(f"        sum_{n} += tl.sum(tl.where(mask, {n}, 0.0), axis=0)"
          for n in per_scalar + per_channel),
    ]
    tail = [
        "    programs = tl.num_programs(0).to(tl.int64)",
        "    row = program.to(tl.int64) * C + channels",
        *(f"    tl.store(partials_ptr + {_at(k, 'programs * C')}row, sum_{n}, mask=channel_mask)"
          for k, n in enumerate(per_channel)),
        "    cell = program.to(tl.int64) * tl.num_programs(1) + block",
        *(f"    tl.store(scalar_partials_ptr + {_at(k, 'programs * tl.num_programs(1)')}cell, "
          f"tl.sum(sum_{n}, axis=0))" for k, n in enumerate(per_scalar)),
    ]
    layout = lambda ns: ", ".join(f"{k}: {n}" for k, n in enumerate(ns))  # noqa: E731
    doc = _docstring(kernel, kernel.doc, ops,
                     "Grid: (row programs, cdiv(C, BLOCK_C)); grad, x, grad_x (N, C) "
                     "contiguous; rows_per_program a multiple of BLOCK_R.\npartials "
                     f"(float32, {len(per_channel)} x row programs x C), k = "
                     f"{layout(per_channel)}; scalar_partials (float32, {len(per_scalar)} x "
                     f"row programs x channel blocks), k = {layout(per_scalar)}.")
    return (f"@triton.jit\ndef {kernel.name}_backward_kernel({args}):\n{doc}"
            + "\n".join(head + body + loop_tail + tail) + "\n")


def _scalar_sum(k: int) -> list[str]:
    at = "" if k == 0 else "cells + "
    return [f"    if N_SCALARS > {k}:",
            "        total = tl.zeros((BLOCK,), dtype=tl.float64)",
            "        for start in tl.range(0, cells, BLOCK):",
            "            at = start + tl.arange(0, BLOCK)",
            f"            total += tl.load(scalar_partials_ptr + {at}at, mask=at < cells, "
            "other=0.0).to(tl.float64)",
            f"        tl.store(grad_scalar{k}_ptr, _rounded(tl.sum(total, axis=0), "
            f"grad_scalar{k}_ptr))"]


#: Stage two of every form's backward (one kernel: the forms differ only in how many
#: scalars they have, N_SCALARS, at most MAX_SCALARS; an unused pointer is never touched).
MAX_SCALARS = 2
SUMS = "\n".join([
    "@triton.jit",
    "def sums_kernel(partials_ptr, scalar_partials_ptr, grad_scalar0_ptr, grad_scalar1_ptr, "
    "grad_weight_ptr, grad_bias_ptr, programs, C, channel_blocks, N_SCALARS: tl.constexpr, "
    "BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):",
    '    """Stage two of the backward, one launch. Grid: (channel_blocks + 1,); program b <',
    "    channel_blocks sums partials[k, :, its channels] (k = 0: weight, 1: bias) over the row",
    "    programs into grad_weight and grad_bias, the last program scalar_partials[k] into",
    "    the k-th scalar's 0-dim gradient, k < N_SCALARS; float64, a fixed order, rounded once",
    '    to each gradient\'s dtype."""',
    "    block = tl.program_id(0)",
    "    if block < channel_blocks:",
    "        channels = block * BLOCK_C + tl.arange(0, BLOCK_C)",
    "        mask = channels < C",
    "        grad_weight = tl.zeros((BLOCK_C,), dtype=tl.float64)",
    "        grad_bias = tl.zeros((BLOCK_C,), dtype=tl.float64)",
    "        row = channels.to(tl.int64)",
    "        for program in tl.range(0, programs):",
    "            grad_weight += tl.load(partials_ptr + row, mask=mask, other=0.0).to(tl.float64)",
    "            grad_bias += tl.load(partials_ptr + programs * C + row, mask=mask, "
    "other=0.0).to(tl.float64)",
    "            row += C",
    "        tl.store(grad_weight_ptr + channels, _rounded(grad_weight, grad_weight_ptr), "
    "mask=mask)",
    "        tl.store(grad_bias_ptr + channels, _rounded(grad_bias, grad_bias_ptr), mask=mask)",
    "    else:",
    "        cells = programs * channel_blocks",
    *("    " + line for k in range(MAX_SCALARS) for line in _scalar_sum(k)),
]) + "\n"


#: A float64 sum in the dtype of the tensor it is stored to: through float32 where that is
#: narrower (as torch rounds float64 to bfloat16 or float16; the interpreter's direct
#: conversion from float64 to bfloat16 gives garbage).
ROUNDED = (
    "@triton.jit\n"
    "def _rounded(v, ptr):\n"
    '    """v (float64) in the element type of ptr, through float32 unless that is float64."""\n'
    "    if ptr.dtype.element_ty == tl.float64:\n"
    "        return v\n"
    "    return v.to(tl.float32).to(ptr.dtype.element_ty)\n")


def kernels_module() -> str:
    pairs = [_kernels(name) for name in FORMS]
    roles = ("forward", "backward")
    names = [*(f"{f.name}_{role}_kernel" for f, _ in pairs for role in roles), "sums_kernel"]
    quoted = lambda ns: ", ".join(f'"{n}"' for n in ns)  # noqa: E731
    table = "\n".join(f'    "{f.name}": FormKernels('
                      + ", ".join(f"{f.name}_{role}_kernel" for role in roles)
                      + f", sums_kernel, {len(f.params)}),"
                      for f, _ in pairs)
    body = "\n\n".join(f"{forward_source(f)}\n\n{backward_source(b)}" for f, b in pairs)
    all_names = quoted([*names, "FLOAT32_MAX", "FormKernels", "KERNELS"])
    return (f'{BANNER}"""Triton kernels of the layer forms DyT, DyISRU and their LayerNorm '
            "forms.\n\nForward, backward and the backward's second stage per form, printed "
            "from the catalog's\nexpressions and their derivatives (derive/kernelgen.py). "
            "Core tl math only (exp, sqrt,\nabs, where, maximum, minimum): they run in "
            "Triton's interpreter (TRITON_INTERPRET=1) as\non a GPU. Compute in float32 "
            "(the second stage's sums in float64); load and store in the\ntensors' own "
            'dtypes. numeric/triton_backend.py launches them.\n"""\n'
            "from typing import NamedTuple\n\nimport triton\nimport triton.language as tl\n\n"
            f"__all__ = [{all_names}]\n\n"
            "#: x is clamped to float32's finite range: +-inf saturates with zero gradient.\n"
            f"FLOAT32_MAX = tl.constexpr({float.fromhex('0x1.fffffep+127')!r})\n\n\n"
            f"{ROUNDED}\n\n{SUMS}\n\n{body}"
            "\n\nclass FormKernels(NamedTuple):\n    forward: object\n    backward: object\n"
            "    sums: object\n    scalars: int          # the sums' N_SCALARS\n\n\n"
            "#: form -> its kernels.\n"
            f"KERNELS = {{\n{table}\n}}\n")


def sources() -> dict:
    """Relative path -> renderer of the generated kernels."""
    return {"numeric/generated/triton_kernels.py": kernels_module}
