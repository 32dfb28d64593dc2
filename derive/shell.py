"""The autograd shell around the printed functions: one source for the built-in forms
(``numeric/generated/shell.py`` and ``numeric/generated/functions.py``) and for the module
``dynorm generate --form`` writes, so that the two cannot drift apart.

- ``WARM_UP``: a one-element call of each math function at import, so that no two threads
  make MKL's first call together (its CPU detection races: pytorch/pytorch#188792).
- ``POLICY`` (``WARM_UP`` first): the dtype policy and the op-by-op backend: compute in
  float32 (float64 for float64 input), x clamped to the compute dtype's finite range, each
  gradient in its input's dtype; ``torch_forward`` and ``torch_backward`` run a form's
  printed functions (the row ``code`` of its table), in blocks of rows on a large CPU
  input.
- ``AUTOGRAD``: the bodies of the Functions, for any form: the first-order backward through
  the backend, the double backward and forward mode from the printed second derivatives and
  forward-mode product. They call ``_run(x)``, the (forward, backward) pair of the backend
  that runs x: the backends' choice in numeric (Triton, fused or op by op), op by op in a
  user's module.
- ``FORM``: the three Functions of one form, a class each that a reader can find by name:
  ``<Form>Function`` (eager and torch.func), ``<Form>Backward`` (its backward, a Function of
  its own so that a double backward runs the printed second derivatives) and
  ``<Form>Traced`` (what torch.compile traces: dynamo supports neither a custom ``jvp`` nor
  a backward that is a Function with one). Each takes x, the scalars, weight, bias: the
  printed functions' order.

Nothing here is derived: it is Python source, printed verbatim (``FORM`` with the form's
names) and checked as the rest of the generated code is (``dynorm generate --check``).
"""
from __future__ import annotations

import string

#: Run once at import (numeric's shell, a user's module, derive.testing): torch's CPU
#: elementwise math (tanh, exp, erf, ...) goes to MKL's VML, which detects the CPU at its
#: first call and, when two threads make that first call together, can run one thread's
#: chunk with a low-accuracy kernel (tanh off by up to 5e-5 relative in float32, about 870
#: ulps; seen with the MKL bundled in torch 2.11 and 2.13, pytorch/pytorch#188792). A
#: one-element call is never split across threads, so it settles the detection first.
WARM_UP = '''\
def warm_up_math():
    """One single-threaded call of each elementwise math function the printed code can
    use, in float32 and float64, so that MKL's first-call CPU detection is done before any
    call is split across threads (pytorch/pytorch#188792: a race there gave one thread's
    chunk of torch.tanh 14 correct bits)."""
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype, device="cpu")    # whatever the default device
        for fn in (torch.tanh, torch.cosh, torch.sinh, torch.exp, torch.expm1, torch.log,
                   torch.log1p, torch.sqrt, torch.rsqrt, torch.erf, torch.atan, torch.atanh,
                   torch.asinh, torch.sin, torch.cos, torch.tan):
            fn(one)


warm_up_math()
'''

POLICY = WARM_UP + '''\


def compute_dtype(dtype):
    """float64 stays float64; every other float computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cast(t, dtype):
    """t in dtype, and t itself where it already is: torch 2.11's dynamo gives an
    autograd.Function whose forward returns a no-op .to() zero gradients (every input's,
    under torch.compile)."""
    return t if t.dtype == dtype else t.to(dtype)


#: The largest finite value of each compute dtype (read once, not per call).
BIG = {torch.float32: torch.finfo(torch.float32).max,
       torch.float64: torch.finfo(torch.float64).max}


def clamped(x, ct):
    """x in the compute dtype ct, clamped to its finite range: +-inf saturates to the bound
    (gradient 0) and a NaN stays in its element."""
    big = BIG[ct]
    return x.to(ct).clamp(-big, big)


def tamed(x, ct):
    """x clamped to sqrt(finfo.max)/256 (7e151 in float64, 7e16 in float32): where a second
    derivative multiplies an overflowed product by an underflowed factor (inf * 0), it is
    evaluated again here, where every such term is already 0."""
    big = torch.finfo(ct).max ** 0.5 / 256
    return x.to(ct).clamp(-big, big)


def or_zero(t, ct, device):
    """A tangent or cotangent in the compute dtype; None (no direction) is a 0-dim zero."""
    return torch.zeros((), dtype=ct, device=device) if t is None else t.to(ct)


def sum_like(g, x, like):
    """An element-wise term (broadcast to x's shape) summed to the shape of its parameter
    (0-dim or (C,)), in the parameter's dtype; float64 accumulators for float32 terms."""
    acc = torch.float64 if g.dtype == torch.float32 else g.dtype
    g = g.expand(x.shape)
    s = g.sum(dtype=acc) if like.dim() == 0 else g.reshape(-1, x.shape[-1]).sum(0, dtype=acc)
    return s.to(like.dtype)


def in_compute(ct, tensors):
    """The parameters in the compute dtype (None stays None)."""
    return [None if t is None else cast(t, ct) for t in tensors]


#: Op by op on a CPU, inputs of more elements go through in blocks of rows of about this
#: many: each op's temporaries are then 1 MiB (float32) and reused in cache, instead of a
#: new 16 MiB tensor per op at (4096, 1024), whose first touch costs more than the op.
BLOCK_ELEMENTS = 1 << 18


def _blocks(x):
    """Slices of rows of x as (rows, C) when x is worth splitting (a large CPU input op by
    op, outside torch.compile, which guards no size), else None."""
    if (torch.compiler.is_compiling() or x.device.type != "cpu"
            or x.numel() <= BLOCK_ELEMENTS):
        return None
    rows, C = x.numel() // x.shape[-1], x.shape[-1]
    step = max(1, BLOCK_ELEMENTS // max(C, 1))
    return [slice(i, i + step) for i in range(0, rows, step)]


def torch_forward(code, x, scalars, weight, bias):
    """y = weight * f(x; scalars) + bias by the printed forward, in x's dtype."""
    ct = compute_dtype(x.dtype)
    *ps, w, b = in_compute(ct, (*scalars, weight, bias))
    fn, args = (code.forward_nobias, (*ps, w)) if b is None else (code.forward, (*ps, w, b))
    blocks = _blocks(x)
    if blocks is None:
        return cast(fn(clamped(x, ct), *args), x.dtype)
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    for rows in blocks:
        y[rows] = fn(clamped(x2[rows], ct), *args)
    return y.view(x.shape)


def torch_backward(code, grad, x, scalars, weight):
    """(grad_x in x's dtype, [each scalar's gradient], grad_weight, grad_bias) by the
    printed first derivatives. The scalars' gradients are summed in float64; the weight's
    and bias's over the rows in the compute dtype, as eager autograd does, then (a large
    input's row blocks) in float64."""
    ct = compute_dtype(x.dtype)
    *ps, w = in_compute(ct, (*scalars, weight))
    C = x.shape[-1]
    blocks = _blocks(x)
    if blocks is None:
        x2, g = x.reshape(-1, C), cast(grad.reshape(-1, C), ct)
        bx, *bs, bw = code.backward(g, clamped(x2, ct), *ps, w)
        return (cast(bx, x.dtype).reshape(x.shape), [t.sum(dtype=torch.float64) for t in bs],
                bw.sum(0), g.sum(0))
    x2, g2 = x.reshape(-1, C), grad.reshape(-1, C)
    gx = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    sums = None
    for rows in blocks:
        g = cast(g2[rows], ct)
        gx[rows], *bs, bw = code.backward(g, clamped(x2[rows], ct), *ps, w)
        part = [*(t.sum(dtype=torch.float64) for t in bs), bw.sum(0, dtype=torch.float64),
                g.sum(0, dtype=torch.float64)]
        sums = part if sums is None else [s + p for s, p in zip(sums, part)]
    *gs, gw, gb = sums
    return gx.reshape(x.shape), gs, gw, gb
'''

AUTOGRAD = '''\
def save_inputs(ctx, inputs, output):
    """<Form>Function's context: x, the scalars and weight (the backward recomputes from
    them), and the bias's dtype."""
    *saved, bias = inputs
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.bias_dtype = None if bias is None else bias.dtype


def first_derivatives(code, grad, x, args):
    """<Form>Backward.forward: (grad_x, *grad_scalars, grad_weight, grad_bias) through the
    backend, each in its input's dtype (grad_bias in the backend's: the caller casts it)."""
    *scalars, weight = args
    gx, gs, gw, gb = _run(x)[1](code, grad, x, scalars, weight)
    return (gx, *(cast(g, s.dtype) for g, s in zip(gs, scalars)), cast(gw, weight.dtype), gb)


def function_backward(second, ctx, grad):
    """<Form>Function.backward: differentiable (create_graph=True: grad mode is on) through
    the Function of the backward, ``second``; a first-order backward computes the same
    values without one."""
    run = second.apply if torch.is_grad_enabled() else second.forward
    *grads, gb = run(grad, *ctx.saved_tensors)       # grad_x, *grad_scalars, grad_weight
    need = ctx.needs_input_grad
    gb = cast(gb, ctx.bias_dtype) if ctx.bias_dtype is not None and need[-1] else None
    return (*(g if n else None for g, n in zip(grads, need)), gb)


def function_jvp(code, ctx, x_t, tangents):
    """<Form>Function.jvp: the printed forward-mode product (plus the bias's tangent)."""
    *scalars_t, weight_t, bias_t = tangents
    x, *scalars, weight = ctx.saved_tensors
    ct = compute_dtype(x.dtype)
    args = [t.to(ct) for t in (*scalars, weight)]
    tangents = [or_zero(t, ct, x.device) for t in (x_t, *scalars_t, weight_t)]
    y_t = code.jvp(clamped(x, ct), *args, *tangents)
    if bias_t is not None:
        y_t = y_t + bias_t.to(ct)
    return y_t.expand(x.shape).to(x.dtype)


def save_all(ctx, inputs, output):
    """<Form>Backward's context: every input, and the dtype the backend gave grad_bias."""
    ctx.save_for_backward(*inputs)
    ctx.save_for_forward(*inputs)
    ctx.bias_grad_dtype = output[-1].dtype


def second_derivatives(code, grad, x, weight, scalars, v_x, v_w, v_s):
    """(h_x, h_weight, [h_scalars]) element by element: grad * the second derivatives
    along (v_x, v_s, v_w), in the compute dtype.

    The second derivatives of the saturating forms multiply x^2 (or x and another large
    factor) by a factor that has underflowed to 0 (sech(u)^2, exp(-u^2)): for huge x an
    intermediate product overflows and inf * 0 gives NaN where the true value is 0. Those
    elements (and only those: a NaN input stays NaN either way) are evaluated again at x
    clamped to sqrt(finfo.max)/256, where every such term is already 0."""
    ct = compute_dtype(x.dtype)
    args = [grad.to(ct), None, *(t.to(ct) for t in (*scalars, weight)),
            *(or_zero(t, ct, x.device) for t in (v_x, *v_s, v_w))]
    args[1] = clamped(x, ct)
    plain = code.hvp(*args)
    args[1] = tamed(x, ct)
    again = code.hvp(*args)
    h_x, *h_s, h_w = (torch.where(torch.isnan(p), t, p) for p, t in zip(plain, again))
    return h_x, h_w, h_s


def double_backward(code, ctx, c_x, cotangents):
    """<Form>Backward.backward: the printed second derivatives along the cotangents, and
    d(outputs . c)/d grad, the first derivatives along c (the forward-mode product)."""
    *c_s, c_w, c_b = cotangents
    grad, x, *scalars, weight = ctx.saved_tensors
    ct = compute_dtype(x.dtype)
    h_x, h_w, h_s = second_derivatives(code, grad, x, weight, scalars, c_x, c_w, c_s)
    args = [t.to(ct) for t in (*scalars, weight)]
    d_grad = code.jvp(clamped(x, ct), *args,
                      *(or_zero(t, ct, x.device) for t in (c_x, *c_s, c_w)))
    if c_b is not None:
        d_grad = d_grad + c_b.to(ct)
    return (d_grad.expand(x.shape).to(grad.dtype), h_x.expand(x.shape).to(x.dtype),
            *(sum_like(h, x, s) for h, s in zip(h_s, scalars)), sum_like(h_w, x, weight))


def backward_jvp(code, ctx, grad_t, x_t, tangents):
    """<Form>Backward.jvp: the first derivatives along grad_t plus the second along the
    other tangents."""
    *scalars_t, weight_t = tangents
    grad, x, *scalars, weight = ctx.saved_tensors
    ct = compute_dtype(x.dtype)
    h_x, h_w, h_s = second_derivatives(code, grad, x, weight, scalars, x_t, weight_t,
                                       scalars_t)
    g_t = or_zero(grad_t, ct, x.device).expand(x.shape)
    args = [t.to(ct) for t in (*scalars, weight)]
    f_x, *f_s, f_w = code.backward(g_t, clamped(x, ct), *args)
    return ((f_x + h_x).expand(x.shape).to(x.dtype),
            *(sum_like(f + h, x, s) for f, h, s in zip(f_s, h_s, scalars)),
            sum_like(f_w + h_w, x, weight),
            cast(sum_like(g_t, x, weight.detach().to(ct)), ctx.bias_grad_dtype))


def save_traced(ctx, inputs, output):
    """<Form>Traced's context: x, the scalars and weight, and the bias's dtype."""
    *saved, bias = inputs
    ctx.save_for_backward(*saved)
    ctx.bias_dtype = None if bias is None else bias.dtype


def traced_backward(code, ctx, grad):
    """<Form>Traced.backward: the first derivatives through the backend, first order."""
    x, *args = ctx.saved_tensors
    *grads, gb = first_derivatives(code, grad, x, args)
    return (*grads, None if ctx.bias_dtype is None else cast(gb, ctx.bias_dtype))
'''

FORM = string.Template('''\
class ${Camel}Function(torch.autograd.Function):
    """${title}: y = ${formula}.

    apply(x, *scalars, weight, bias): x (..., C); each scalar 0-dim, in the order
    ${scalars}; weight (C,); bias (C,) or None. Returns x's shape and dtype."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, *args):
        *scalars, weight, bias = args
        return _run(x)[0](CODE["${name}"], x, scalars, weight, bias)

    setup_context = staticmethod(save_inputs)

    @staticmethod
    def backward(ctx, grad):
        return function_backward(${Camel}Backward, ctx, grad)

    @staticmethod
    def jvp(ctx, x_t, *tangents):
        return function_jvp(CODE["${name}"], ctx, x_t, tangents)


class ${Camel}Backward(torch.autograd.Function):
    """The backward of ${Camel}Function as a Function of its own: its forward is the first
    derivatives (through the backend), its backward and jvp the second (op by op).

    apply(grad, x, *scalars, weight) -> (grad_x, *grad_scalars, grad_weight, grad_bias)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, x, *args):
        return first_derivatives(CODE["${name}"], grad, x, args)

    setup_context = staticmethod(save_all)

    @staticmethod
    def backward(ctx, c_x, *cotangents):
        return double_backward(CODE["${name}"], ctx, c_x, cotangents)

    @staticmethod
    def jvp(ctx, grad_t, x_t, *tangents):
        return backward_jvp(CODE["${name}"], ctx, grad_t, x_t, tangents)


class ${Camel}Traced(torch.autograd.Function):
    """What torch.compile traces in place of ${Camel}Function: the same forward and first
    derivatives through the same backend, first order. apply(x, *scalars, weight, bias)."""

    @staticmethod
    def forward(x, *args):
        *scalars, weight, bias = args
        return _run(x)[0](CODE["${name}"], x, scalars, weight, bias)

    setup_context = staticmethod(save_traced)

    @staticmethod
    def backward(ctx, grad):
        return traced_backward(CODE["${name}"], ctx, grad)
''')

#: The names numeric/generated/shell.py exports (POLICY's).
POLICY_NAMES = ("warm_up_math", "compute_dtype", "cast", "BIG", "clamped", "tamed", "or_zero",
                "sum_like", "in_compute", "BLOCK_ELEMENTS", "torch_forward", "torch_backward")


def functions(name: str, camel: str, title: str, formula: str, scalars) -> str:
    """The three Functions of the form ``name`` (class names from ``camel``)."""
    order = ", ".join(scalars) if scalars else "(none)"
    return FORM.substitute(name=name, Camel=camel, title=title, formula=formula,
                           scalars=order)
