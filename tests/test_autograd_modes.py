"""Every mode of autograd on every form and both reference norms: gradcheck and
gradgradcheck (float64, in x and every parameter, forward mode too), torch.func's grad of
grad, jvp, jacfwd, hessian and vmap against the catalog's derivatives in mpmath, and the
double backward of a Module op by op and fused. Each on every device (tests/strategies.py's
DEVICES), where its backend runs that device's tensors."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jvp, vmap

from derive.testing import assert_close
import numeric
from numeric import functional as F
from tests import checks
from tests import reference as R
from tests import strategies as S

f64 = torch.float64


def _case(name, shape=(3, 4), seed=0, device="cpu"):
    """x, scalars, w, b in float64 on device, the same values on every device."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(shape, generator=g, dtype=f64)
    scalars = [torch.tensor(1.7 if p.name == "beta" else 0.6 if p.name == "alpha" else 0.3,
                            dtype=f64) for p in R.params(name)]
    w = torch.randn(shape[-1], generator=g, dtype=f64)
    b = torch.randn(shape[-1], generator=g, dtype=f64)
    return x.to(device), [s.to(device) for s in scalars], w.to(device), b.to(device)


def _ref(name, what, x, scalars, w, b=None):
    """The catalog's ``what`` in mpmath, on x's device."""
    return R.evaluate(name, what, x, scalars, w, b).to(x.device)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", S.FORMS)
def test_gradcheck_and_gradgradcheck(name, device):
    x, scalars, w, b = _case(name, device=device)
    ins = [t.requires_grad_(True) for t in (x, *scalars, w, b)]
    fn = lambda x, *rest: checks.FUNCS[name](x, *rest)  # noqa: E731
    assert gradcheck(fn, ins, check_forward_ad=True)
    assert gradgradcheck(fn, ins, check_fwd_over_rev=True)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", ["rms_norm", "layer_norm"])
def test_norms_gradcheck_and_gradgradcheck(name, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=g, dtype=f64).to(device).requires_grad_(True)
    w = torch.randn(5, generator=g, dtype=f64).to(device).requires_grad_(True)
    fn = lambda x, w: getattr(F, name)(x, w)  # noqa: E731
    assert gradcheck(fn, (x, w), check_forward_ad=True)
    assert gradgradcheck(fn, (x, w), check_fwd_over_rev=True)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", ["rms_norm", "layer_norm"])
def test_norms_under_torch_func_match_torch(name, device):
    """Our norms' hessian, jvp and vmap equal those of torch's own norms."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, generator=g, dtype=f64).to(device)
    ours = lambda x: getattr(F, name)(x, eps=1e-5)  # noqa: E731
    theirs = {"rms_norm": lambda x: torch.nn.functional.rms_norm(x, (5,), eps=1e-5),
              "layer_norm": lambda x: torch.nn.functional.layer_norm(x, (5,), eps=1e-5)}[name]
    v = torch.randn(2, 5, generator=g, dtype=f64).to(device)
    for transform in (lambda f: jvp(f, (x,), (v,))[1],
                      lambda f: hessian(lambda x: (f(x) ** 3).sum())(x),
                      lambda f: vmap(f)(x.unsqueeze(1))):
        torch.testing.assert_close(transform(ours), transform(theirs))


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", S.FORMS)
def test_torch_func_matches_the_catalog(name, device):
    """grad of grad, jvp, jacfwd, hessian and vmap, each against mpmath's derivatives."""
    x, scalars, w, b = _case(name, (2, 3), seed=3, device=device)
    fn = checks.FUNCS[name]
    names = [a.name for a in R.wrt(name)]
    # jvp along (x_t, scalars_t, w_t): sum_a a_t dy/da
    tangents = _case(name, (2, 3), seed=4, device=device)
    t_x, t_s, t_w, t_b = tangents
    _, y_t = jvp(lambda x, w, b, *s: fn(x, *s, w, b), (x, w, b, *scalars), (t_x, t_w, t_b, *t_s))
    want = t_b + sum(_ref(name, f"d_{a}", x, scalars, w, b) * t
                     for a, t in zip(names, (t_x, *t_s, t_w)))
    assert_close(y_t, want, dtype=f64, what=f"{name} jvp")
    # jacfwd in x: diagonal, dy_ij/dx_ij
    jac = jacfwd(lambda x: fn(x, *scalars, w, b))(x).reshape(6, 6)
    assert_close(jac, torch.diag(_ref(name, "d_x", x, scalars, w, b).reshape(6)), dtype=f64,
                 what=f"{name} jacfwd")
    # hessian of sum(y) in x: diagonal, d2y/dx2
    hes = hessian(lambda x: fn(x, *scalars, w, b).sum())(x).reshape(6, 6)
    assert_close(hes, torch.diag(_ref(name, "d2_x_x", x, scalars, w, b).reshape(6)), dtype=f64,
                 what=f"{name} hessian")
    # grad of grad: d/dscalar0 of sum(dy/dx) = sum d2y/(dx dscalar0)
    s0 = scalars[0]
    gg = grad(lambda s: grad(lambda x: fn(x, s, *scalars[1:], w, b).sum())(x).sum())(s0)
    assert_close(gg, _ref(name, f"d2_x_{names[1]}", x, scalars, w, b).sum(), dtype=f64,
                 what=f"{name} grad of grad")
    # vmap over a leading dimension: each slice as alone
    batched = vmap(lambda x: fn(x, *scalars, w, b))(x.unsqueeze(1))
    assert_close(batched.squeeze(1), _ref(name, "y", x, scalars, w, b), dtype=f64,
                 what=f"{name} vmap")


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_module_double_backward_on_every_path(backend, device):
    """numeric.DyT: the gradient penalty (g^2).sum() reaches alpha and weight, with the
    eager formula's values, at a small size and at one that fuses."""
    checks.skip_unless_runs(backend, device)
    for shape in ((4, 8), (128, 1024)):
        torch.manual_seed(0)
        m = numeric.DyT(shape[-1], device=device)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
        x = torch.randn(shape, device=device, requires_grad=True)
        with checks.backend(backend):
            g, = torch.autograd.grad(m(x).sum(), x, create_graph=True)
            (g ** 2).sum().backward()
        a = m.alpha.detach().double().requires_grad_(True)
        w = m.weight.detach().double().requires_grad_(True)
        xd = x.detach().double().requires_grad_(True)
        gd, = torch.autograd.grad((w * torch.tanh(a * xd) + m.bias.double()).sum(), xd,
                                  create_graph=True)
        (gd ** 2).sum().backward()
        assert m.alpha.grad is not None and m.weight.grad is not None
        torch.testing.assert_close(m.alpha.grad.double(), a.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", S.DEVICES)
def test_third_order_differentiates_the_printed_second_derivatives(device):
    """d3y/dx3 through autograd of the printed second derivatives, against mpmath's."""
    x, scalars, w, b = _case("dyt", (2, 3), seed=5, device=device)
    x.requires_grad_(True)
    y = F.dyt(x, *scalars, w, b)
    g1, = torch.autograd.grad(y.sum(), x, create_graph=True)
    g2, = torch.autograd.grad(g1.sum(), x, create_graph=True)
    g3, = torch.autograd.grad(g2.sum(), x)
    a, ww = scalars[0], w
    t = torch.tanh(a * x.detach())
    want = ww * a ** 3 * (-2) * (1 - t ** 2) * (1 - 3 * t ** 2)   # d3/dx3 of w tanh(a x)
    torch.testing.assert_close(g3, want)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", S.FORMS)
def test_forward_mode_of_a_dual_input_that_does_not_require_grad(name, device, monkeypatch):
    """torch.autograd.forward_ad on an input that requires no grad: the tangent is the
    printed forward-mode product (the Function's jvp), the catalog's derivative along it,
    not autograd through the forward's ops."""
    import torch.autograd.forward_ad as fwAD
    from numeric.generated.torch_forms import CODE

    code, calls = CODE[name], []
    monkeypatch.setitem(CODE, name, code._replace(
        jvp=lambda *a: calls.append(1) or code.jvp(*a)))
    x, scalars, w, b = _case(name, device=device)
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=f64).to(device)
    with fwAD.dual_level():
        y = checks.FUNCS[name](fwAD.make_dual(x, t), *scalars, w, b)
        tangent = fwAD.unpack_dual(y).tangent
    assert tangent is not None and calls, "not the printed forward-mode product"
    assert_close(tangent, _ref(name, "d_x", x, scalars, w, b) * t, dtype=f64,
                 what=f"{name} forward-mode tangent")


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "nothing_requires_grad"])
def test_calls_autograd_does_not_record_are_plain_values(mode, device):
    """Without autograd, a call runs the backend directly: no graph, the same values."""
    x, scalars, w, b = _case("dyt", device=device)
    want = _ref("dyt", "y", x, scalars, w, b)
    leaves = [t.clone().requires_grad_(mode != "nothing_requires_grad") for t in (x, *scalars)]
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "nothing_requires_grad": torch.enable_grad}[mode]
    with context():
        y = F.dyt(leaves[0], *leaves[1:], w, b)
    assert y.grad_fn is None and not y.requires_grad
    assert_close(y, want, dtype=f64, what=f"dyt under {mode}")
