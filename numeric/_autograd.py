"""The eager entry to the layer forms' Functions, and the reference norms' Functions.

The forms' Functions (``DyTFunction``, its backward's ``DyTBackward`` and the traced
``DyTTraced``, and so on per form) are printed into numeric/generated/functions.py from
derive/shell.py, the source the module of `dynorm generate --form` is printed from too:

    numeric.functional.dyt -> DyTFunction.apply -> the backend for the tensor's device
                              (numeric/backends.py: Triton, fused or op by op)
"""
from __future__ import annotations

import torch

from .generated import norm_vjps as N
from .generated.forms import FORMS
from .generated.functions import FUNCTIONS, TRACED  # noqa: F401 - numeric.functional's


def eager_apply(cls):
    """``cls.apply`` without torch's per-call ``inspect.signature`` of the forward (it binds
    default arguments, and ours have none; 39 us of a DyT call at (8, 4096) on a CPU): the
    C++ apply that torch.autograd.Function.apply calls after binding. For eager calls only:
    under torch.func's transforms it is cls.apply (numeric.functional chooses)."""
    return super(torch.autograd.Function, cls).apply


assert set(FUNCTIONS) == set(FORMS), "every generated form needs its Functions"
#: form -> its Function's eager apply (eager_apply).
EAGER = {form: eager_apply(c) for form, c in FUNCTIONS.items()}


# -- the reference norms -------------------------------------------------------------------

def _norm_functions(camel: str, run_forward, vjp):
    """The two Functions of a reference norm, RMSNorm or LayerNorm (no affine part), from its
    generated forward and the VJP of its derived Jacobian: ``<Norm>Function`` (eager and
    torch.func) and ``<Norm>Traced`` (what torch.compile traces: dynamo supports no custom
    ``jvp``; first order). The Jacobian is symmetric (a step of the derivation checks it), so
    the forward-mode product J v is the same printed VJP applied to v. The backward is op-by-op
    torch code, so a second order differentiates the printed VJP with autograd.

    apply(x, eps) in the compute dtype."""

    def save(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])
        ctx.eps = inputs[1]

    def run_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return vjp(grad, x, ctx.eps), None

    def run_jvp(ctx, x_t, _):
        (x,) = ctx.saved_tensors
        return vjp(x_t, x, ctx.eps)

    class Function(torch.autograd.Function):
        generate_vmap_rule = True
        forward, setup_context = staticmethod(run_forward), staticmethod(save)
        backward, jvp = staticmethod(run_backward), staticmethod(run_jvp)

    class Traced(torch.autograd.Function):
        forward, setup_context = staticmethod(run_forward), staticmethod(save)
        backward = staticmethod(run_backward)

    for cls, kind in ((Function, "Function"), (Traced, "Traced")):
        cls.__name__ = cls.__qualname__ = f"{camel}{kind}"
    return Function, Traced


RMSNormFunction, RMSNormTraced = _norm_functions("RMSNorm", N.rmsnorm_forward,
                                                 N.rmsnorm_backward)
LayerNormFunction, LayerNormTraced = _norm_functions("LayerNorm", N.layernorm_forward,
                                                     N.layernorm_backward)
#: norm -> its Function (eager calls and torch.func's transforms), and the traced one.
NORMS = {"rmsnorm": RMSNormFunction, "layernorm": LayerNormFunction}
TRACED_NORMS = {"rmsnorm": RMSNormTraced, "layernorm": LayerNormTraced}
EAGER_NORMS = {norm: eager_apply(c) for norm, c in NORMS.items()}
