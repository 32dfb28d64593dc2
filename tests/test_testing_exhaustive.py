"""derive.testing.assert_matches misses nothing: an element-wise formula is checked at every
finite bfloat16 and float16 value and at every binade of float32 and float64 (both signs,
the subnormals, the largest finite values), the same way on every run; two standards ("ulp"
and "torch"), the report naming the one that failed; a derivative that is a distribution
somewhere is checked everywhere else, and the caller is told so.

Each implementation here is wrong in one place only; the references are mpmath's, computed
in the test where a value is named."""
from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch

from derive import cache
from derive import testing as T
from derive.testing import Mismatch, assert_matches
from tests import checks
from tests.strategies import DEVICES

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def dyt(x, weight, bias, alpha):
    """An eager DyT: the right values; autograd's tanh backward is 1 - tanh(u)^2."""
    return weight * torch.tanh(alpha * x) + bias


def dyt_exact(x, weight, bias, alpha):
    """DyT computed in float64 and rounded once, with sech(u)^2 as the derivative."""
    return weight.double() * checks.TanhSech2.apply(alpha.double() * x.double()) + bias.double()


def off_where(mask, factor=1.01):
    """DyT, right except where mask(x) holds: there factor times too large."""
    def fn(x, weight, bias, alpha):
        y = dyt_exact(x, weight, bias, alpha)
        return torch.where(mask(x.double()), factor * y, y).to(x.dtype)
    return fn


@pytest.mark.parametrize("device", DEVICES)
def test_a_decade_one_percent_off_is_caught_in_float32(device):
    """Hypothesis's draws left 10 < |x| < 100 unvisited in one run of two; the binade sweep
    visits 16, 32 and 64 on every run."""
    fn = off_where(lambda x: (x.abs() > 10) & (x.abs() < 100))
    with pytest.raises(Mismatch, match=r"dyt \(float32, .*\) y: .*inputs \{'x': -?[1-9]\d\."):
        assert_matches(fn, "dyt", dtypes=[F32], examples=1000, order=0, device=device)


def softsign_off_at(bad):
    """x / (1 + |x|), 1% off at x = bad only."""
    def fn(x, weight, bias):
        xd = x.double()
        y = weight.double() * (xd / (1 + xd.abs())) + bias.double()
        return torch.where(xd == bad, 1.01 * y, y).to(x.dtype)
    return fn


@pytest.mark.parametrize("device", DEVICES)
def test_one_wrong_value_of_bfloat16_is_caught(device):
    """One input value among 65,536, wrong in its output only: every value is checked."""
    bad = torch.tensor(-3.140625, dtype=BF16).item()
    fn = off_where(lambda x: x == bad)
    with pytest.raises(Mismatch, match=rf"y: 1 of \d+ elements off the 'ulp' standard; "
                                       rf".*'x': {bad!r}"):
        assert_matches(fn, "dyt", dtypes=[BF16], examples=1, order=0, device=device, sweep=1)


@pytest.mark.parametrize("device", DEVICES)
def test_one_wrong_value_of_float16_is_caught(device):
    bad = torch.tensor(-3.140625, dtype=F16).item()
    with pytest.raises(Mismatch, match=rf"y: 1 of \d+ elements off the 'ulp' standard; "
                                       rf".*'x': {bad!r}"):
        assert_matches(softsign_off_at(bad), "x/(1+abs(x))", dtypes=[F16], examples=1,
                       order=0, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_one_wrong_gradient_value_is_caught(device):
    """grad x wrong at one bfloat16 value (a subnormal), the output right."""
    tiny = torch.tensor(3e-39, dtype=BF16).item()

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(u, x):
            return torch.tanh(u)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            u, x = ctx.saved_tensors
            d = g / torch.cosh(u) ** 2
            return torch.where(x == tiny, 2 * d, d), None

    def fn(x, weight, bias, alpha):
        xd = x.double()
        y = weight.double() * Wrong.apply(alpha.double() * xd, xd) + bias.double()
        return y.to(x.dtype)

    with pytest.raises(Mismatch, match=rf"grad x: 1 of \d+ elements off the 'ulp' standard; "
                                       rf".*'x': {tiny!r}"):
        assert_matches(fn, "dyt", dtypes=[BF16], examples=1, order=1, device=device,
                       sweep=1)


@pytest.mark.parametrize("device", DEVICES)
def test_a_far_binade_of_float64_is_caught(device):
    """1e200 < |x| < 1e202 in float64: a binade sweep visits it, a few draws would not."""
    def fn(x, weight, bias, beta):
        # x * x overflows beyond 1e154: there x / sqrt(beta + x^2) is sign(x)
        y = torch.where(x.abs() > 1e150, torch.sign(x), x / torch.sqrt(beta + x * x))
        out = weight * y + bias
        return torch.where((x.abs() > 1e200) & (x.abs() < 1e202), 1.001 * out, out)
    with pytest.raises(Mismatch, match=r"y: .*'x': -?[1-9](\.\d+)?e\+20[01]"):
        assert_matches(fn, "x/sqrt(beta + x**2)", dtypes=[F64], examples=5, order=0,
                       device=device, sweep=1)


@pytest.mark.parametrize("device", DEVICES)
def test_the_same_call_gives_the_same_verdict(device):
    """No draw depends on the run: the same call fails the same way twice."""
    fn = off_where(lambda x: (x.abs() > 0.26) & (x.abs() < 0.45), factor=1.02)
    messages = []
    for _ in range(2):
        with pytest.raises(Mismatch) as e:
            assert_matches(fn, "dyt", dtypes=[F32], examples=3, order=0, device=device)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_the_bfloat16_reference_is_mpmath_and_is_cached(monkeypatch):
    """The reference over every bfloat16 value is mpmath's at those values; it is stored
    beside the derivation cache, and read back from there."""
    (alpha,) = T.sweep_scalars("dyt", 1)[0]
    table = T.exhaustive_reference("dyt", "f", (alpha,), BF16)
    xs = T.sweep_values(BF16)
    assert len(xs) == len(table) == 65536 - 256       # every finite bfloat16 value
    for i in range(0, len(xs), 997):
        with mpmath.workdps(40):
            want = float(mpmath.tanh(mpmath.mpf(alpha) * mpmath.mpf(xs[i].item())))
        assert table[i].item() == want
    assert list(cache.references().glob("*.pickle")), "nothing was stored"
    monkeypatch.setattr(T, "_TABLES", {})              # this process's copies forgotten
    monkeypatch.setattr(T, "_evaluate_table", lambda *a: pytest.fail("evaluated again"))
    assert torch.equal(T.exhaustive_reference("dyt", "f", (alpha,), BF16), table)


# -- two standards --------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_eager_float64_dyt_fails_ulp_on_grad_x_and_passes_torch(device):
    """autograd's 1 - tanh(u)^2 is 1e-12 relative off in float64: not a few ulps, but within
    torch.testing's rtol for float64."""
    with pytest.raises(Mismatch, match=r"grad x: \d+ of \d+ elements off the 'ulp' "
                                       r"standard.* ulps of float64"):
        assert_matches(dyt, "dyt", dtypes=[F64], examples=20, order=1, device=device, sweep=1)
    assert_matches(dyt, "dyt", dtypes=[F64], examples=20, order=1, device=device,
                   tolerance="torch", sweep=1)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_bfloat16_dyt_fails_ulp_on_its_output_and_passes_torch(device):
    """Rounding weight * tanh to bfloat16 before adding bias costs 2 ulps of bfloat16: more
    than the ulp standard allows, within torch.testing's bfloat16 rtol."""
    with pytest.raises(Mismatch, match=r"y: \d+ of \d+ elements off the 'ulp' "
                                       r"standard.* ulps of bfloat16"):
        assert_matches(dyt, "dyt", dtypes=[BF16], examples=20, order=0, device=device,
                       sweep=1)
    assert_matches(dyt, "dyt", dtypes=[BF16], examples=20, order=0, device=device,
                   tolerance="torch", sweep=1)


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_standard_still_catches_a_wrong_formula(device):
    with pytest.raises(Mismatch, match=r"y: \d+ of \d+ elements off the 'torch' standard"):
        assert_matches(off_where(lambda x: x.abs() > 1, 1.05), "dyt", dtypes=[BF16],
                       examples=5, order=0, device=device, tolerance="torch", sweep=1)


# -- derivatives that are distributions ------------------------------------------------------

#: x / (1 + |x|) with its derivative (1 / (1 + |x|))^2 written out (autograd's
#: 1/(1 + |x|) - |x|/(1 + |x|)^2 cancels for large |x|), itself differentiable.
_Softsign = checks.elementwise(lambda x: x / (1 + x.abs()), lambda x: (1 / (1 + x.abs())) ** 2)


def softsign(x, weight, bias):
    return weight * _Softsign.apply(x) + bias


@pytest.mark.parametrize("device", DEVICES)
def test_a_dirac_delta_is_named_and_the_rest_checked(device):
    """The second derivative of x / (1 + |x|) jumps at x = 0 (SymPy's has DiracDelta(x)):
    it is skipped there, the caller is told, and everything else is checked."""
    with pytest.warns(T.Unchecked, match=r"second derivative in x twice is not defined where "
                                         r"x = 0 \(DiracDelta\(x\): a point mass there\)"):
        assert_matches(softsign, "x/(1+abs(x))", dtypes=[F32], examples=10, order=2,
                       device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_the_rest_of_a_derivative_with_a_dirac_delta_is_still_checked(device):
    """A second derivative wrong away from x = 0 is still caught."""
    Wrong = checks.elementwise(lambda x: x / (1 + x.abs()),
                               lambda x: 1.1 / (1 + x.abs()) ** 2)  # the derivative, 10% off

    def fn(x, weight, bias):
        return weight * Wrong.apply(x) + bias

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.Unchecked)
        with pytest.raises(Mismatch, match="second derivative|grad x"):
            assert_matches(fn, "x/(1+abs(x))", dtypes=[F32], examples=10, order=2,
                           device=device)


def test_the_float64_sweep_covers_every_binade():
    xs = T.binade_sweep(F64)
    finite = xs[torch.isfinite(xs)]
    exps = {math.frexp(abs(v))[1] for v in finite.tolist() if v != 0}
    assert exps == set(range(-1073, 1025))         # subnormals to the largest binade
    assert {torch.finfo(F64).max, -torch.finfo(F64).max, 0.0} <= set(finite.tolist())
    assert (finite < 0).sum() == (finite > 0).sum()


def test_the_second_derivative_references_do_not_cancel():
    """The raw second derivative of tanh is (tanh(u) - 1)(tanh(u) + 1) tanh(u): 0 at 120
    digits where it is 1e-239. The references differentiate the simplified first derivative;
    two precisions that both give exactly 0 do not count as agreement."""
    x_t = torch.tensor([[-5056.790077945679]], dtype=F64)
    alpha = 0.053955078125
    with mpmath.workdps(600):
        u = mpmath.mpf(alpha) * mpmath.mpf(x_t.item())
        want = float(-2 * mpmath.mpf(alpha) ** 2 * mpmath.tanh(u) * mpmath.sech(u) ** 2)
    assert 1e-240 < want < 1e-238
    got = T.evaluate("dyt", "d2_x_x", x_t, [torch.tensor(alpha, dtype=F64)],
                     torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64))
    assert got.item() == pytest.approx(want, rel=1e-14, abs=0)
    table = T.exhaustive_reference("dyt", "d2_x_x", (alpha,), F64)
    at = (T.sweep_values(F64) == x_t.item()).nonzero().item()
    assert table[at].item() == pytest.approx(want, rel=1e-14, abs=0)
