"""One autograd.Function per layer form, with every derivative printed from the formula.

    numeric.functional.dyt -> DyTFunction.apply -> the backend for the tensor's device
                              (numeric/backends.py: Triton, fused or op by op)

Each ``<Form>Function`` computes y = weight * f(x; scalars) + bias. It saves x and the
parameters only (the backward recomputes), applies the dtype policy once (compute in float32,
float64 for float64, return x's dtype; each parameter's gradient in its own dtype), and
supports every mode of autograd:

- backward: the printed first derivatives (``<form>_backward``), through the backend;
- double backward (``create_graph=True``, gradient penalties, Hessian-vector products,
  torch.func.grad of grad): the backward is itself a Function, ``<Form>Backward``, whose
  backward is the printed second derivatives (``<form>_hvp``) and the printed forward-mode
  product (``<form>_jvp``), op by op on every device (the Triton and fused backends print
  first order only); a third order differentiates that op-by-op code with autograd;
- forward mode (torch.func.jvp, jacfwd, hessian): ``jvp`` is the printed ``<form>_jvp``;
- torch.func.vmap: the rule is generated from the forward (op by op under vmap).
"""
from __future__ import annotations

import torch

from .backends import RUN, cast, choose, compute_dtype
from .generated.torch_forms import CODE
from .generated import norm_vjps as N
from .generated.forms import FORMS


def eager_apply(cls):
    """``cls.apply`` without torch's per-call ``inspect.signature`` of the forward (it binds
    default arguments, and ours have none; 39 us of a DyT call at (8, 4096) on a CPU): the
    C++ apply that torch.autograd.Function.apply calls after binding. For eager calls only:
    under torch.func's transforms it is cls.apply (numeric.functional chooses)."""
    return super(torch.autograd.Function, cls).apply


def _clamped(x: torch.Tensor) -> torch.Tensor:
    ct = compute_dtype(x.dtype)
    big = torch.finfo(ct).max
    return x.to(ct).clamp(-big, big)


def _tamed(x: torch.Tensor) -> torch.Tensor:
    """x clamped to sqrt(finfo.max)/256 (7e151 in float64, 7e16 in float32): see _second."""
    ct = compute_dtype(x.dtype)
    big = torch.finfo(ct).max ** 0.5 / 256
    return x.to(ct).clamp(-big, big)


def _or_zero(t, x: torch.Tensor) -> torch.Tensor:
    """A tangent or cotangent in x's compute dtype; None (no direction) is a 0-dim zero."""
    ct = compute_dtype(x.dtype)
    return torch.zeros((), dtype=ct, device=x.device) if t is None else t.to(ct)


def _sum_like(g: torch.Tensor, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An element-wise term (broadcast to x's shape) summed to the shape of its parameter
    (0-dim or (C,)), in the parameter's dtype; float64 accumulators for float32 terms."""
    acc = torch.float64 if g.dtype == torch.float32 else g.dtype
    g = g.expand(x.shape)
    s = g.sum(dtype=acc) if like.dim() == 0 else g.reshape(-1, x.shape[-1]).sum(0, dtype=acc)
    return s.to(like.dtype)


class FormFunction(torch.autograd.Function):
    """y = weight * f(x; scalars) + bias for the form named by the subclass's ``form``.

    apply(x, *scalars, weight, bias), the generated functions' order: x (..., C); each
    scalar 0-dim, in the order of FORMS[form].scalars; weight (C,); bias (C,) or None.
    """

    form: str
    code: object                    # the form's generated functions (CODE[form])
    backward_function: type         # its FormBackward
    generate_vmap_rule = True

    @classmethod
    def forward(cls, x, *args):
        *scalars, weight, bias = args
        return RUN[choose(x)][0](cls.code, x, scalars, weight, bias)

    @classmethod
    def setup_context(cls, ctx, inputs, output):
        *saved, bias = inputs                     # x, *scalars, weight
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.bias_dtype = None if bias is None else bias.dtype

    @classmethod
    def backward(cls, ctx, grad):
        # Differentiable (create_graph=True: grad mode is on) through the Function of the
        # backward; a first-order backward computes the same values without one.
        second = cls.backward_function
        run = second.apply if torch.is_grad_enabled() else second.forward
        *grads, gb = run(grad, *ctx.saved_tensors)  # grad_x, *grad_scalars, grad_weight
        need = ctx.needs_input_grad
        gb = cast(gb, ctx.bias_dtype) if ctx.bias_dtype is not None and need[-1] else None
        return (*(g if n else None for g, n in zip(grads, need)), gb)

    @classmethod
    def jvp(cls, ctx, x_t, *tangents):
        *scalars_t, weight_t, bias_t = tangents
        x, *scalars, weight = ctx.saved_tensors
        ct = compute_dtype(x.dtype)
        args = [t.to(ct) for t in (*scalars, weight)]
        tangents = [_or_zero(t, x) for t in (x_t, *scalars_t, weight_t)]
        y_t = cls.code.jvp(_clamped(x), *args, *tangents)
        if bias_t is not None:
            y_t = y_t + bias_t.to(ct)
        return y_t.expand(x.shape).to(x.dtype)


class FormBackward(torch.autograd.Function):
    """The backward of a FormFunction as a Function of its own: its forward is the first
    derivatives (through the backend), its backward and jvp the second (op by op).

    apply(grad, x, *scalars, weight) -> (grad_x, *grad_scalars, grad_weight, grad_bias),
    the generated backward's order, each in its input's dtype (grad_bias in the dtype the
    backend gives it, float32, float64 or the weight's; the caller casts it).
    """

    form: str
    code: object
    generate_vmap_rule = True

    @classmethod
    def forward(cls, grad, x, *args):
        *scalars, weight = args
        gx, gs, gw, gb = RUN[choose(x)][1](cls.code, grad, x, scalars, weight)
        return (gx, *(cast(g, s.dtype) for g, s in zip(gs, scalars)), cast(gw, weight.dtype), gb)

    @classmethod
    def setup_context(cls, ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
        ctx.bias_grad_dtype = output[-1].dtype      # the backend's (see the docstring)

    @classmethod
    def _second(cls, grad, x, weight, scalars, v_x, v_w, v_s):
        """(h_x, h_weight, [h_scalars]) element by element: grad * the second derivatives
        along (v_x, v_s, v_w), in the compute dtype.

        The second derivatives of the saturating forms multiply x^2 (or x and another large
        factor) by a factor that has underflowed to 0 (sech(u)^2, exp(-u^2)): for huge x an
        intermediate product overflows and inf * 0 gives NaN where the true value is 0.
        Those elements (and only those: a NaN input stays NaN either way) are evaluated again
        at x clamped to sqrt(finfo.max)/256, where every such term is already 0."""
        ct = compute_dtype(x.dtype)
        hvp = cls.code.hvp
        args = [grad.to(ct), None, *(t.to(ct) for t in (*scalars, weight)),
                *(_or_zero(t, x) for t in (v_x, *v_s, v_w))]
        args[1] = _clamped(x)
        plain = hvp(*args)
        args[1] = _tamed(x)
        tamed = hvp(*args)
        h_x, *h_s, h_w = (torch.where(torch.isnan(p), t, p) for p, t in zip(plain, tamed))
        return h_x, h_w, h_s

    @classmethod
    def backward(cls, ctx, c_x, *cotangents):
        *c_s, c_w, c_b = cotangents
        grad, x, *scalars, weight = ctx.saved_tensors
        ct = compute_dtype(x.dtype)
        h_x, h_w, h_s = cls._second(grad, x, weight, scalars, c_x, c_w, c_s)
        # d(outputs . c)/d grad: the first derivatives along c, i.e. the forward-mode product.
        args = [t.to(ct) for t in (*scalars, weight)]
        d_grad = cls.code.jvp(
            _clamped(x), *args, *(_or_zero(t, x) for t in (c_x, *c_s, c_w)))
        if c_b is not None:
            d_grad = d_grad + c_b.to(ct)
        return (d_grad.expand(x.shape).to(grad.dtype), h_x.expand(x.shape).to(x.dtype),
                *(_sum_like(h, x, s) for h, s in zip(h_s, scalars)), _sum_like(h_w, x, weight))

    @classmethod
    def jvp(cls, ctx, grad_t, x_t, *tangents):
        *scalars_t, weight_t = tangents
        grad, x, *scalars, weight = ctx.saved_tensors
        ct = compute_dtype(x.dtype)
        h_x, h_w, h_s = cls._second(grad, x, weight, scalars, x_t, weight_t, scalars_t)
        g_t = _or_zero(grad_t, x).expand(x.shape)
        args = [t.to(ct) for t in (*scalars, weight)]
        f_x, *f_s, f_w = cls.code.backward(g_t, _clamped(x), *args)
        return ((f_x + h_x).expand(x.shape).to(x.dtype),
                *(_sum_like(f + h, x, s) for f, h, s in zip(f_s, h_s, scalars)),
                _sum_like(f_w + h_w, x, weight),
                cast(_sum_like(g_t, x, weight.detach().to(ct)), ctx.bias_grad_dtype))


# -- one named pair per form -------------------------------------------------------------------

class DyTBackward(FormBackward):
    form, code = "dyt", CODE["dyt"]


class DyTFunction(FormFunction):
    """DyT: weight * tanh(alpha x) + bias."""
    form, code, backward_function = "dyt", CODE["dyt"], DyTBackward


class DyISRUBackward(FormBackward):
    form, code = "dyisru", CODE["dyisru"]


class DyISRUFunction(FormFunction):
    """DyISRU: weight * x / sqrt(beta + x^2) + bias."""
    form, code, backward_function = "dyisru", CODE["dyisru"], DyISRUBackward


class DyTLNBackward(FormBackward):
    form, code = "dyt_ln", CODE["dyt_ln"]


class DyTLNFunction(FormFunction):
    """DyT's LayerNorm form: weight * tanh(alpha (x - shift)) + bias."""
    form, code, backward_function = "dyt_ln", CODE["dyt_ln"], DyTLNBackward


class DyISRULNBackward(FormBackward):
    form, code = "dyisru_ln", CODE["dyisru_ln"]


class DyISRULNFunction(FormFunction):
    """DyISRU's LayerNorm form: weight * (x - shift) / sqrt(beta + (x - shift)^2) + bias."""
    form, code, backward_function = "dyisru_ln", CODE["dyisru_ln"], DyISRULNBackward


class DerfBackward(FormBackward):
    form, code = "derf", CODE["derf"]


class DerfFunction(FormFunction):
    """Derf: weight * erf(alpha x + shift) + bias."""
    form, code, backward_function = "derf", CODE["derf"], DerfBackward


#: form -> its Function (its backward's: ``backward_function``).
FUNCTIONS = {c.form: c for c in (DyTFunction, DyISRUFunction, DyTLNFunction, DyISRULNFunction,
                                 DerfFunction)}
assert set(FUNCTIONS) == set(FORMS), "every generated form needs its Functions"
#: form -> its Function's eager apply (eager_apply).
EAGER = {form: eager_apply(c) for form, c in FUNCTIONS.items()}


class TracedFunction(torch.autograd.Function):
    """What torch.compile traces in place of a ``<Form>Function``: the same forward and
    first derivatives through the same backends. Dynamo supports neither a custom ``jvp``
    nor a backward that is a Function with one, and a compiled graph has no double backward
    or forward mode of its own.

    apply(form, x, *scalars, weight, bias).
    """

    @staticmethod
    def forward(form, x, *args):
        *scalars, weight, bias = args
        return RUN[choose(x)][0](CODE[form], x, scalars, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        form, *saved, bias = inputs               # x, *scalars, weight
        ctx.save_for_backward(*saved)
        ctx.form, ctx.bias_dtype = form, None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad):
        x, *scalars, weight = ctx.saved_tensors
        gx, gs, gw, gb = RUN[choose(x)][1](CODE[ctx.form], grad, x, scalars, weight)
        gb = None if ctx.bias_dtype is None else cast(gb, ctx.bias_dtype)
        return (None, gx, *(cast(g, s.dtype) for g, s in zip(gs, scalars)),
                cast(gw, weight.dtype), gb)


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
