"""Triton kernels from the catalog: per layer form one forward and one backward kernel.

The math is the PyTorch code's (derive.layers): the catalog's layer form, its sympy derivatives,
the same numerical-safety rules; then the kernel rules of ``rules`` replace what Triton's
interpreter cannot run (tanh, 1/cosh^2, hypot) by core ``tl`` math, each application
checked, and ``TritonPrinter`` prints the bodies after CSE. Only the skeleton around a
body (pointers, masks, loads, stores, the reduction) is written here, once for all forms.

Dtype policy (as numeric/_autograd.py): load in the tensor's dtype, compute in float32,
store in the output's dtype; x is clamped to float32's finite range first, so +-inf
saturates (zero gradient) and a NaN stays a NaN in its own element.

Forward: a 1-D grid over the N*C elements of a contiguous (N, C) view, BLOCK elements per
program; channel = offset % C indexes weight and bias; 0-dim scalars are loaded once.
Backward: a 2-D grid (row programs, channel blocks); a program walks ``rows_per_program``
rows in tiles of (BLOCK_R, BLOCK_C), writes grad_x, and sums every parameter's gradient
over its rows in a fixed order into partials[k, program, channel] (float32, no atomics);
the caller sums the partials over programs (and channels, for a 0-dim parameter).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .catalog import result
from .codegen import BANNER, op_count, statements
from .layers import FORMS, layer_functions, layer_step
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
    shift = -1e38, see layers.SHIFT), temporaries, outputs; and its op count."""
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
                      "n_elements", "C", "HAS_BIAS: tl.constexpr", "BLOCK: tl.constexpr"])
    head = [
        "    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offsets < n_elements",
        "    channel = offsets % C",
        f"    x = {_load('x', 'offsets', 'mask')}",
        *(f"    {s} = tl.load({s}_ptr).to(tl.float32)" for s in scalars),
        f"    weight = {_load('weight', 'channel', 'mask')}",
        "    if HAS_BIAS:",
        f"        bias = {_load('bias', 'channel', 'mask')}",
        "    else:",
        "        bias = 0.0",
    ]
    tail = ["    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)"]
    doc = _docstring(kernel, kernel.doc, ops,
                     "Grid: (cdiv(N*C, BLOCK),); x, y (N, C) contiguous, weight and bias (C,), "
                     "scalars 0-dim.")
    return (f"@triton.jit\ndef {kernel.name}_forward_kernel({args}):\n{doc}"
            + "\n".join(head + body + tail) + "\n")


def reduced(kernel: Kernel) -> list[str]:
    """The backward's outputs summed over rows (all but grad_x), in partials order."""
    return [n for n, _ in kernel.outputs if n != "grad_x"]


def backward_source(kernel: Kernel) -> str:
    scalars = [p.name for p in kernel.params]
    body, ops = _lines(kernel, "        ")
    sums = reduced(kernel)
    args = ", ".join(["grad_ptr", "x_ptr", *(f"{s}_ptr" for s in scalars), "weight_ptr",
                      "grad_x_ptr", "partials_ptr", "N", "C", "rows_per_program",
                      "BLOCK_R: tl.constexpr", "BLOCK_C: tl.constexpr"])
    head = [
        "    program = tl.program_id(0)",
        "    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)",
        "    channel_mask = channels < C",
        *(f"    {s} = tl.load({s}_ptr).to(tl.float32)" for s in scalars),
        f"    weight = {_load('weight', 'channels', 'channel_mask')}[None, :]",
        *(f"    sum_{n} = tl.zeros((BLOCK_C,), dtype=tl.float32)" for n in sums),
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
        *(f"        sum_{n} += tl.sum(tl.where(mask, {n}, 0.0), axis=0)" for n in sums),
    ]
    tail = [
        "    row = program.to(tl.int64) * C + channels",
        "    stride = tl.num_programs(0).to(tl.int64) * C",
        *(f"    tl.store(partials_ptr + {k} * stride + row, sum_{n}, mask=channel_mask)"
          if k else f"    tl.store(partials_ptr + row, sum_{n}, mask=channel_mask)"
          for k, n in enumerate(sums)),
    ]
    layout = ", ".join(f"{k}: {n}" for k, n in enumerate(sums))
    doc = _docstring(kernel, kernel.doc, ops,
                     "Grid: (row programs, cdiv(C, BLOCK_C)); grad, x, grad_x (N, C) "
                     "contiguous; rows_per_program a multiple of BLOCK_R.\npartials "
                     f"(float32, {len(sums)} x row programs x C), k = {layout}.")
    return (f"@triton.jit\ndef {kernel.name}_backward_kernel({args}):\n{doc}"
            + "\n".join(head + body + loop_tail + tail) + "\n")


def kernels_module() -> str:
    pairs = [_kernels(name) for name in FORMS]
    names = [f"{f.name}_{what}_kernel" for f, _ in pairs for what in ("forward", "backward")]
    quoted = lambda ns: ", ".join(f'"{n}"' for n in ns)  # noqa: E731
    table = "\n".join(f'    "{b.name}": ({quoted(reduced(b))}),' for _, b in pairs)
    body = "\n\n".join(f"{forward_source(f)}\n\n{backward_source(b)}" for f, b in pairs)
    all_names = quoted([*names, "FLOAT32_MAX", "PARTIALS"])
    return (f'{BANNER}"""Triton kernels of the layer forms DyT, DyISRU and their LayerNorm '
            "forms.\n\nForward and backward per form, printed from the catalog's "
            "expressions and their derivatives\n(derive/kernelgen.py). Core tl math only "
            "(exp, sqrt, abs, where, maximum, minimum):\nthey run in Triton's interpreter "
            "(TRITON_INTERPRET=1) as on a GPU. Compute in float32; load\nand store in the "
            'tensors\' own dtypes. numeric/kernels.py launches them.\n"""\n'
            "import triton\nimport triton.language as tl\n\n"
            f"__all__ = [{all_names}]\n\n"
            "#: x is clamped to float32's finite range: +-inf saturates with zero gradient.\n"
            f"FLOAT32_MAX = tl.constexpr({float.fromhex('0x1.fffffep+127')!r})\n\n"
            "#: form -> the backward's outputs summed into partials[k], in order k = 0, 1, ...\n"
            f"PARTIALS = {{\n{table}\n}}\n\n\n{body}")


def sources() -> dict:
    """Relative path -> renderer of the generated kernels."""
    return {"numeric/generated/kernels.py": kernels_module}
