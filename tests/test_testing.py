"""derive.testing.assert_matches: it passes right implementations and catches subtly wrong
ones (naming the worst input), for catalog forms and formulas alike; its arguments are
checked. numeric's own forms go through it in tests/test_layers_property.py."""
from __future__ import annotations

import json

import pytest
import sympy as sp
import torch

from derive import testing as T
from derive.testing import Mismatch, assert_matches
from tests import checks

F32, F64 = torch.float32, torch.float64


def dyt(x, weight, bias, alpha):
    """An eager DyT: the right values; autograd's tanh backward is 1 - tanh(u)^2."""
    return weight * torch.tanh(alpha * x) + bias


def dyt_off(x, weight, bias, alpha):
    """A slip of 1e-4 in alpha."""
    return weight * torch.tanh(0.9999 * alpha * x) + bias


def test_an_eager_dyt_has_the_right_values():
    assert_matches(dyt, "dyt", dtypes=[F32, F64], order=0, examples=10, sweep=1)


def test_a_slightly_wrong_alpha_is_caught_with_its_input():
    with pytest.raises(Mismatch, match=r"dyt \(float64, cpu\) y: .* worst at .*inputs \{'x': "
                                       r".*'alpha': "):
        assert_matches(dyt_off, "dyt", dtypes=[F64], order=0, examples=10, sweep=0)


def test_the_cancelling_tanh_backward_is_caught_in_float32():
    with pytest.raises(Mismatch, match=r"dyt \(float32, cpu\) grad x: .* reference"):
        assert_matches(dyt, "dyt", dtypes=[F32], examples=20)


def dyt_first_only(x, weight, bias, alpha):
    return weight * checks.TanhSech2.apply(alpha * x) + bias


def test_a_missing_second_derivative_is_caught_at_order_2():
    assert_matches(dyt_first_only, "dyt", dtypes=[F64], examples=5, sweep=0)
    with pytest.raises(Mismatch, match=r"dyt \(float64, cpu\) second derivative in x"):
        assert_matches(dyt_first_only, "dyt", dtypes=[F64], examples=5, order=2, sweep=0)


def test_a_formula_as_text_or_sympy():
    """The formula's other symbols are the scalars, passed by name."""
    def shifted(x, weight, bias, alpha, shift):
        return weight * torch.tanh(alpha * (x - shift)) + bias

    assert_matches(shifted, "tanh(alpha*(x - shift))", dtypes=[F64], order=0, examples=5,
                   sweep=0)
    a, s = sp.symbols("alpha shift", positive=True)
    assert_matches(shifted, sp.tanh(a * (sp.Symbol("x") - s)), dtypes=[F64], order=0,
                   examples=5, ranges={"shift": (1.0, 2.0)}, sweep=0)
    with pytest.raises(Mismatch):
        assert_matches(shifted, "tanh(alpha*(x + shift))", dtypes=[F64], order=0, examples=10,
                       sweep=0)


def test_a_value_beyond_the_dtypes_range_is_inf():
    """Computed in float64 and rounded to float32, weight * alpha x + bias is inf where it
    is beyond float32's range: inf is its rounding, not a mismatch."""
    def linear(x, weight, bias, alpha):
        d = torch.float64
        return (weight.to(d) * (alpha.to(d) * x.to(d)) + bias.to(d)).to(x.dtype)

    assert_matches(linear, "alpha*x", dtypes=[F32], order=0, examples=20,
                   ranges={"alpha": (2.0, 10.0)})      # the sweep reaches float32's max


def test_the_output_must_keep_x_dtype():
    with pytest.raises(Mismatch, match="x's shape and dtype"):
        assert_matches(lambda x, weight, bias, alpha: dyt(x, weight, bias, alpha).double(),
                       "dyt", dtypes=[F32], order=0, examples=2, sweep=0)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"order": 3}, ValueError, "order must be 0, 1 or 2"),
    ({"examples": 0}, ValueError, "examples"),
    ({"dtypes": [torch.int32]}, ValueError, "dtypes"),
    ({"dtypes": []}, ValueError, "dtypes"),
    ({"ranges": {"beta": (0, 1)}}, ValueError, r"ranges: \['beta'\]"),
    ({"sweep": -1}, ValueError, "sweep must be an int >= 0"),
    ({"tolerance": "exact"}, ValueError, "tolerance must be 'ulp' or 'torch'"),
])
def test_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        assert_matches(dyt, "dyt", **kwargs)


@pytest.mark.parametrize("form,error,match", [
    ("rmsnorm", ValueError, "not an element-wise layer form"),
    ("dty", ValueError, "neither a layer form"),
    ("weight * x", ValueError, "may not use"),
    (42, TypeError, "form must be"),
])
def test_forms_are_checked(form, error, match):
    with pytest.raises(error, match=match):
        assert_matches(dyt, form)


def test_the_error_log_records_failing_comparisons_too(tmp_path, monkeypatch):
    """DYNORM_ERROR_LOG held the passing comparisons only, so the worst error went missing."""
    log = tmp_path / "errors.jsonl"
    monkeypatch.setattr(T, "ERROR_LOG", str(log))
    ref = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    T.assert_close(ref.float(), ref, what="close")
    with pytest.raises(T.Mismatch):
        T.assert_close(torch.tensor([1.0, 2.5, float("nan")]), ref, what="off")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["what"], r["passed"]) for r in lines] == [("close", True), ("off", False)]
    assert lines[0]["max_err_over_allowed"] == 0.0
    assert lines[1]["max_err_over_allowed"] > 1e300 and lines[1]["max_abs_err"] == 0.5
