"""A layer for a formula of one's own: ``dynorm generate --form NAME=EXPR --out FILE``.

The formula f(x; scalars) becomes ``forms.Form.of(NAME, f)``, and from there the path of
the built-in forms: y = weight * f + bias, its first and second derivatives and its
forward-mode product, each the symbolic derivative after the numerical-safety and speed
rules (each application checked), printed by ``TorchPrinter`` after CSE. Around them, the
autograd shell numeric's own forms are printed with (``derive.shell``: the dtype policy, an
autograd.Function whose backward is a Function of its own, so that the double backward runs
the printed second derivatives, ``jvp`` for forward mode, a vmap rule generated from the
forward, the Function torch.compile traces), then (``SHELL``) the functional
``NAME(x, weight, bias=None, *, scalars)`` and an ``nn.Module``. The file imports torch only.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

import sympy as sp

from .codegen import (OP_BY_OP_FIELDS, code_table, emit, hypot_prelude, torch_functions,
                      uses_hypot)
from .formula import FormulaError, identifier, parse
from . import shell
from .forms import Form, Function, camel, sites
from .parser import parse as parse_names
from .printers import UnsupportedNode, torch_code
from .steps import bounded
from .symbols import x

#: A scalar without ``--init`` starts at this value (the formula as written at scalar 1).
DEFAULT_INIT = 1.0

#: Each rule application is checked by both witnesses; an exact witness (SymPy reducing the
#: difference to 0) that has not decided in EXACT_SECONDS, or once EXACT_TOTAL seconds of
#: them are spent, leaves the claim to the numeric witness (50 digits at random points), and
#: the notes say so: SymPy's simplify may take minutes on a long formula's second derivatives.
EXACT_SECONDS = 2.0
EXACT_TOTAL = 10.0
#: Functions nested deeper than this are refused: every derivative of tanh(tanh(...)) holds
#: every level, the second ones every pair, and SymPy recurses once per level.
MAX_NESTING = 12

#: Names a scalar may not take: the layer's own arguments and outputs, the printed code's
#: temporaries (the rules' h, q, p, u, e, d, sg, hmax, hmin, hratio; the shift's z; CSE's
#: t0, s0, ...), the functions they call (torch, hypot), and every attribute of
#: torch.nn.Module (the scalars are attributes of the module). Names ending in _t or _v are
#: the printed tangents.
RESERVED = frozenset({
    "x", "y", "weight", "bias", "grad", "torch", "dtype", "z", "hypot", "hypot_minmax",
    "h", "q", "p", "u", "e", "d", "sg", "hmax", "hmin", "hratio",
    "training", "normalized_shape", "inits", "reset_parameters",
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
    "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
    "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
    "share_memory", "state_dict", "to", "to_empty", "train", "type", "xpu", "zero_grad",
})
_GENERATED_NAME = re.compile(r"^([st]\d+|.*_[tv]|grad_.*|h_.*)$")


def _check_names(name: str, form: Form) -> None:
    identifier(name, "form name")
    if not name[0].islower() or name == "torch":
        raise FormulaError(f"form name {name!r} must start with a lowercase letter and not be "
                           f"torch (its module class is {camel(name)!r})")
    for s in form.scalars:
        identifier(s.name, "parameter")
        if s.name in RESERVED or _GENERATED_NAME.match(s.name):
            raise FormulaError(f"parameter name {s.name!r} is reserved (the generated code "
                               "or torch.nn.Module uses it); rename it")


def nesting(e: sp.Basic) -> int:
    """How many functions (or non-integer powers) deep e is: tanh(exp(x)) is 2."""
    deepest, stack = 0, [(e, 0)]
    while stack:
        node, depth = stack.pop()
        depth += isinstance(node, sp.Function) or (node.is_Pow and not node.exp.is_Integer)
        deepest = max(deepest, depth)
        stack.extend((a, depth) for a in node.args)
    return deepest


def form(name: str, formula) -> Form:
    """The Form of ``formula`` (text, parsed by ``derive.formula``, or a SymPy expression
    of the canonical x), named ``name``; FormulaError for a formula without x, nested
    deeper than MAX_NESTING, or with a name the generated code cannot use."""
    f = parse(formula) if isinstance(formula, str) else sp.sympify(formula, strict=True)
    if x not in f.free_symbols:
        raise FormulaError(f"the formula must depend on x, got {sp.sstr(f)!r}")
    depth = nesting(f)
    if depth > MAX_NESTING:
        raise FormulaError(f"the formula nests functions {depth} deep (at most {MAX_NESTING})")
    out = Form.of(name, f)
    _check_names(name, out)
    return out


def dropped(text: str, f: Form) -> list[str]:
    """The names ``text`` uses as scalars that its formula lost (tanh(alpha*x) + 0*beta is
    tanh(alpha*x)): the module has no parameter for them."""
    names: list[str] = []
    parse_names(text, {x.name: x}, lambda n: names.append(n) or sp.Symbol(n, real=True))
    kept = {s.name for s in f.scalars}
    return sorted({n for n in names if n not in kept})


def _inits(form: Form, inits: dict[str, float]) -> dict[str, float]:
    names = [s.name for s in form.scalars]
    for k, v in inits.items():
        if k not in names:
            raise FormulaError(f"--init {k}: not a parameter of the formula (parameters: "
                               f"{', '.join(names) or 'none'})")
        if not math.isfinite(v):
            raise FormulaError(f"--init {k}: must be finite, got {v!r}")
    return {k: float(inits.get(k, DEFAULT_INIT)) for k in names}


#: What each printed function holds, for the error when one cannot be printed.
_ROLES = {"forward": "the forward", "forward_nobias": "the forward",
          "backward": "the first derivatives", "jvp": "the forward-mode product",
          "hvp": "the second derivatives"}


def _emit(name: str, fn: Function) -> str:
    try:
        return emit(fn)
    except UnsupportedNode as e:
        role = _ROLES[fn.name[len(name) + 1:]]
        raise UnsupportedNode(f"{role} ({fn.name}): {e}") from None


def module(name: str, formula, inits: dict[str, float] | None = None,
           command: str = "dynorm generate --form") -> str:
    """The source of the standalone module for ``name`` = ``formula`` (see the module
    docstring). Raises FormulaError for bad text or names, UnsupportedNode (from the
    printer) for a function or power the printer cannot spell in torch."""
    return generate(name, formula, inits, command).source


@dataclass(frozen=True)
class Generated:
    """A generated module: its source, its functional's signature, and what its user should
    know (a parameter the formula lost, a claim checked numerically only)."""

    source: str
    signature: str
    notes: tuple[str, ...] = ()


def _keywords(scalars) -> str:
    """The functional's keyword-only parameters after bias: ", *, alpha, shift"."""
    return "".join(f", {s}" for s in ("*", *scalars)) if scalars else ""


def signature(name: str, scalars) -> str:
    """The functional's signature as the module defines it."""
    return f"{name}(x, weight, bias=None{_keywords(scalars)})"


def generate(name: str, formula, inits: dict[str, float] | None = None,
             command: str = "dynorm generate --form",
             seconds: float = EXACT_SECONDS, total: float = EXACT_TOTAL) -> Generated:
    """The module for ``name`` = ``formula`` with its signature and notes (see ``module``);
    each exact witness within ``seconds`` (all within ``total``), else numeric only."""
    f = form(name, formula)
    values = _inits(f, inits or {})
    notes = [f"{n} drops out of the formula ({sp.sstr(f.formula)}): the layer has no "
             f"parameter {n}" for n in (dropped(formula, f) if isinstance(formula, str) else ())]
    try:
        with bounded(seconds, total) as bound:
            functions = torch_functions(f)
        code = "\n\n".join(_emit(name, fn) for fn in functions)
    except RecursionError:
        raise FormulaError("the formula is nested too deeply for SymPy") from None
    if bound.numeric_only:
        shown = "; ".join(bound.numeric_only[:3]) + ("; ..." if len(bound.numeric_only) > 3
                                                     else "")
        notes.append(f"{len(bound.numeric_only)} check(s) of the rules' applications went over "
                     f"the exact witness's bound ({seconds:g} s each, {total:g} s in all) and "
                     f"rest on the numeric witness alone (random points, 50 digits): {shown}")
    scalars = tuple(s.name for s in f.scalars)
    formula_text = sp.sstr(f.formula)
    rooted = [s.a for s in sites(f) if not s.a.is_number]
    fields = {
        "name": name, "Camel": camel(name), "formula": formula_text, "command": command,
        "scalars": repr(scalars), "inits": repr(values),
        "signature": signature(name, scalars),
        "module_signature": (f"{camel(name)}(normalized_shape, *"
                             + "".join(f", {k}={v!r}" for k, v in values.items())
                             + ", bias=True, device=None, dtype=None)"),
        "scalar_doc": (f"the scalars {', '.join(scalars)}: numbers or 0-dim tensors"
                       if scalars else "no scalars"),
        "all": ",\n           ".join(f'"{n}"' for n in (
            name, camel(name), f"{camel(name)}Function", f"{camel(name)}Backward", "SCALARS",
            "INITS", *(fn.name for fn in functions))),
        "functions": "\n\n".join([*((hypot_prelude(),) if uses_hypot(code) else ()), code]),
        "params": _keywords(scalars),
        "policy": shell.POLICY, "autograd": shell.AUTOGRAD,
        "rooted": repr(tuple(sp.sstr(a) for a in rooted)),
        "scalar_args": ", ".join(scalars),
        "rooted_code": "".join(f"{torch_code(a)}, " for a in rooted),
        "code_table": code_table((name,), OP_BY_OP_FIELDS).strip(),
        "functions_classes": shell.functions(name, camel(name), name,
                                             f"weight * ({formula_text}) + bias", scalars),
        "values": "{" + ", ".join(f'"{s}": {s}' for s in scalars) + "}",
    }
    return Generated(string.Template(SHELL).substitute(fields), fields["signature"],
                     tuple(notes))


SHELL = '''\
# generated by `$command`, do not edit.
"""$name: y = weight * ($formula) + bias over the last dimension, with every derivative.

Generated by dynorm from the formula: the forward, the first derivatives (the backward), the
second derivatives (the double backward) and the forward-mode product (jvp) are each printed
from the symbolic derivative after dynorm's numerical-safety and speed rules, never autograd
through the forward. Needs torch only.

    $signature
    $module_signature

x: (..., C), a floating-point tensor; weight, bias: (C,) (bias None means 0);
$scalar_doc.
Computes in float32 (float64 for float64 input) and returns x's dtype; every gradient comes
back in its input's dtype. Supports backward, double backward (create_graph=True), forward
mode (torch.func.jvp, jacfwd, hessian) and torch.func.vmap.
"""
import math
import numbers
from typing import Callable, NamedTuple

import torch

__all__ = [$all]

#: The scalar parameters, in the order of the printed functions' arguments.
SCALARS = $scalars
#: The module's initial values of the scalars.
INITS = $inits


$functions

# -- the autograd shell (printed from dynorm's derive/shell.py, as its own layers') -------

$code_table


$policy

def _run(x):
    """The (forward, backward) that run x: op by op."""
    return torch_forward, torch_backward


$autograd

$functions_classes

# -- the functional and the module ----------------------------------------------------------

def _tensor(t, what, x, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"$name: {what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"$name: {what} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"$name: {what} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"$name: {what} is on {t.device}, x on {x.device}")
    return t


def _scalar(v, what, x):
    if isinstance(v, torch.Tensor):
        return _tensor(v, what, x, ())
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise TypeError(f"$name: {what} must be a finite number or a 0-dim tensor, got {v!r}")
    return torch.tensor(float(v), dtype=compute_dtype(x.dtype), device=x.device)


#: The expressions of the scalars whose square root the overflow-safe form takes (each a in
#: a term of the shape (a + (x - c)^2)^k): none may be negative, or the printed code is NaN
#: everywhere, where the formula is real for |x - c| > sqrt(-a).
ROOTED = $rooted


def _rooted($scalar_args):
    """The values of ROOTED at the scalars (0-dim tensors, in the order of SCALARS)."""
    return ($rooted_code)


def _check_rooted(values):
    """ValueError for a negative value of ROOTED, where the scalars can be read at no cost: on
    the CPU (a CUDA tensor's value would wait for the device), not traced, not under
    torch.func."""
    if not ROOTED or torch.compiler.is_compiling() or any(
            v.device.type != "cpu" or torch._C._functorch.is_functorch_wrapped_tensor(v)
            for v in values):
        return
    with torch.no_grad():
        rooted = _rooted(*values)
    for text, v in zip(ROOTED, rooted):
        if v.item() < 0:
            raise ValueError(f"$name: {text} must be >= 0, got {v.item():g}: the layer takes "
                             f"sqrt({text}) to stay finite for every x, and the formula is "
                             "not real near its center for a negative value")


def $name(x, weight, bias=None$params):
    """y = weight * ($formula) + bias over the last dimension of x.

    x: (..., C), floating point; weight: (C,); bias: (C,) or None; $scalar_doc.
    Returns x's shape and dtype."""
    return _apply(x, weight, bias, $values)


def _apply(x, weight, bias, scalars):
    """$name's arguments checked, then its Function (the traced one under torch.compile)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise TypeError("$name: x must be a floating-point tensor with at least one dimension")
    C = x.shape[-1]
    weight = _tensor(weight, "weight", x, (C,))
    bias = None if bias is None else _tensor(bias, "bias", x, (C,))
    values = [_scalar(scalars[s], s, x) for s in SCALARS]
    _check_rooted(values)
    fn = ${Camel}Traced if torch.compiler.is_compiling() else ${Camel}Function
    return fn.apply(x, *values, weight, bias)


class ${Camel}(torch.nn.Module):
    """y = weight * ($formula) + bias over the last dimension: weight (C,) starts at 1,
    bias (C,) at 0 (or is None), each scalar a 0-dim parameter starting at INITS (or at the
    keyword given here)."""

    def __init__(self, normalized_shape, *, bias=True, device=None, dtype=None, **inits):
        super().__init__()
        shape = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (
            normalized_shape,)
        if (len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool)
                or shape[0] < 1):
            raise ValueError(f"normalized_shape must be a positive int C (or (C,)), got "
                             f"{normalized_shape!r}")
        shape = (shape[0],)
        for k in inits:
            if k not in SCALARS:
                raise TypeError(f"$Camel() got an unexpected keyword {k!r} (scalars: "
                                f"{', '.join(SCALARS) or 'none'})")
        for k, v in inits.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{k} must be a finite number, got {v!r}")
        self.normalized_shape = shape
        self.inits = {**INITS, **{k: float(v) for k, v in inits.items()}}
        factory = {"device": device, "dtype": dtype}
        for s in SCALARS:
            self.register_parameter(s, torch.nn.Parameter(torch.empty((), **factory)))
        self.weight = torch.nn.Parameter(torch.empty(shape, **factory))
        self.bias = torch.nn.Parameter(torch.empty(shape, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            for s in SCALARS:
                getattr(self, s).fill_(self.inits[s])
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        return $name(x, self.weight, self.bias, **{s: getattr(self, s) for s in SCALARS})

    def extra_repr(self):
        scalars = "".join(f", {s}={getattr(self, s).item():g}" for s in SCALARS)
        return f"{self.normalized_shape[0]}{scalars}, bias={self.bias is not None}"
'''
