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

class NormFunction(torch.autograd.Function):
    """RMSNorm or LayerNorm (no affine part) by the generated forward and the VJP of the
    derived Jacobian. The Jacobian is symmetric (a step of the derivation checks it), so the
    forward-mode product J v is the same printed VJP applied to v. The backward is op-by-op
    torch code, so a second order differentiates the printed VJP with autograd.

    apply(x, eps) in the compute dtype.
    """

    norm: str
    generate_vmap_rule = True

    @classmethod
    def forward(cls, x, eps):
        return getattr(N, f"{cls.norm}_forward")(x, eps)

    @classmethod
    def setup_context(cls, ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])
        ctx.eps = inputs[1]

    @classmethod
    def backward(cls, ctx, grad):
        (x,) = ctx.saved_tensors
        return getattr(N, f"{cls.norm}_backward")(grad, x, ctx.eps), None

    @classmethod
    def jvp(cls, ctx, x_t, _):
        (x,) = ctx.saved_tensors
        return getattr(N, f"{cls.norm}_backward")(x_t, x, ctx.eps)


class RMSNormFunction(NormFunction):
    norm = "rmsnorm"


class LayerNormFunction(NormFunction):
    norm = "layernorm"


class TracedNorm(torch.autograd.Function):
    """What torch.compile traces in place of a ``NormFunction`` (dynamo supports no custom
    ``jvp``): the same generated forward and VJP, first order.

    apply(norm, x, eps) in the compute dtype.
    """

    @staticmethod
    def forward(norm, x, eps):
        return getattr(N, f"{norm}_forward")(x, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.norm, ctx.eps = inputs[0], inputs[2]

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return None, getattr(N, f"{ctx.norm}_backward")(grad, x, ctx.eps), None


NORMS = {c.norm: c for c in (RMSNormFunction, LayerNormFunction)}
EAGER_NORMS = {norm: eager_apply(c) for norm, c in NORMS.items()}
