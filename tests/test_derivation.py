"""The derivation: every result is derived, every obligation holds, and failures stop it."""
from __future__ import annotations

import random

import mpmath
import pytest
import sympy as sp

from derive import NAMES, DerivationError, catalog, normalizations, result
from derive.procedure import Counterparts
from derive.steps import Step, check, equal
from derive.symbols import C, Q, S, beta, epsilon, gamma, sigma, x, y

DESIGN_NAMES = ("rmsnorm", "rmsnorm_jacobian_diag", "rmsnorm_jacobian_offdiag", "dyt", "dyisru",
                "layernorm", "layernorm_jacobian_diag", "layernorm_jacobian_offdiag",
                "dyt_ln", "dyisru_ln")


def test_catalog_has_the_design_names():
    assert set(DESIGN_NAMES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_obligation_of_every_step_holds(name):
    r = result(name)
    assert r.steps
    for st in r.steps:   # each step ran check(), which raises on a failed obligation
        assert st.obligations, f"{st.name} claims nothing"
        assert len(st.checks) == len(st.obligations), f"{st.name}: an obligation went unchecked"


def test_closed_forms_are_the_papers():
    cat = catalog()
    assert sp.simplify(cat["dyt"].expr.subs(cat["dyt"].params)
                       - sp.sqrt(C) * sp.tanh(x / (sp.sqrt(C) * sigma))) == 0
    assert sp.simplify(cat["dyisru"].expr - sp.sqrt(C) * x / sp.sqrt(beta + x**2)) == 0
    assert cat["dyisru"].params == {beta: S + C * epsilon}
    assert sp.simplify(cat["dyisru_ln"].params[beta] - C * (Q + C * epsilon) / (C - 1)) == 0


# -- independent witnesses: mpmath, not SymPy, on vectors larger than the proofs used ------

def _vector(n, seed):
    rng = random.Random(seed)
    return [mpmath.mpf(rng.uniform(-3, 3)) for _ in range(n)]


def _rms_norm(v, eps):
    r = mpmath.sqrt(mpmath.fsum(t * t for t in v) / len(v) + eps)
    return [t / r for t in v]


def _layer_norm(v, eps):
    mean = mpmath.fsum(v) / len(v)
    sd = mpmath.sqrt(mpmath.fsum((t - mean) ** 2 for t in v) / len(v) + eps)
    return [(t - mean) / sd for t in v]


def _numeric(name, **values):
    e = result(name).expr
    sym = {str(k): k for k in e.free_symbols}
    return sp.lambdify([sym[k] for k in values], e, "mpmath")(*values.values())


def _rms_scale(v, eps):
    return mpmath.sqrt(mpmath.fsum(t * t for t in v) / len(v) + eps)


def _ln_scale(v, eps):
    mean = mpmath.fsum(v) / len(v)
    return mpmath.sqrt(mpmath.fsum((t - mean) ** 2 for t in v) / len(v) + eps)


@pytest.mark.parametrize("norm,scale,scale_name,prefix", [
    (_rms_norm, _rms_scale, "sigma", "rmsnorm"),
    (_layer_norm, _ln_scale, "s", "layernorm"),
])
def test_jacobian_matches_mpmath_numerical_derivative(norm, scale, scale_name, prefix):
    """General-C entries at C = 9 (beyond the sizes SymPy checked) against mpmath.diff."""
    with mpmath.workdps(40):
        n, eps = 9, mpmath.mpf("0.01")
        v = _vector(n, 7)
        out, sc = norm(v, eps), scale(v, eps)
        for i, j in [(0, 0), (3, 3), (0, 5), (8, 2)]:
            numerical = mpmath.diff(lambda t: norm(v[:j] + [t] + v[j + 1:], eps)[i], v[j])
            if i == j:
                got = _numeric(f"{prefix}_jacobian_diag", y=out[i], C=mpmath.mpf(n),
                               **{scale_name: sc})
            else:
                got = _numeric(f"{prefix}_jacobian_offdiag", y=out[i], y_k=out[j],
                               C=mpmath.mpf(n), **{scale_name: sc})
            assert abs(got - numerical) < mpmath.mpf(10) ** -30, (i, j, got, numerical)


def test_dyisru_with_per_token_beta_is_rmsnorm_in_mpmath():
    with mpmath.workdps(40):
        n, eps = 11, mpmath.mpf("1e-3")
        v = _vector(n, 3)
        out = _rms_norm(v, eps)
        for i in range(n):
            S_i = mpmath.fsum(t * t for j, t in enumerate(v) if j != i)
            got = _numeric("dyisru", C=mpmath.mpf(n), x=v[i], beta=S_i + n * eps)
            assert abs(got - out[i]) < mpmath.mpf(10) ** -35


def test_dyisru_ln_with_per_token_beta_and_shift_is_layernorm_in_mpmath():
    with mpmath.workdps(40):
        n, eps = 7, mpmath.mpf("1e-2")
        v = _vector(n, 5)
        out = _layer_norm(v, eps)
        for i in range(n):
            rest = [t for j, t in enumerate(v) if j != i]
            m_i = mpmath.fsum(rest) / (n - 1)
            Q_i = mpmath.fsum((t - m_i) ** 2 for t in rest)
            beta_i = n * (Q_i + n * eps) / (n - 1)
            got = _numeric("dyisru_ln", C=mpmath.mpf(n), x=v[i], m=m_i, beta=beta_i)
            assert abs(got - out[i]) < mpmath.mpf(10) ** -35


# -- a broken step stops the derivation, naming the step ------------------------------------

def test_a_false_obligation_raises_naming_the_step():
    bad = Step("wrong_slope", x, "a deliberately false claim",
               (equal("tanh has slope 2 at 0", sp.diff(sp.tanh(x), x).subs(x, 0), 2),))
    with pytest.raises(DerivationError, match="wrong_slope.*tanh has slope 2"):
        check(bad)


def test_breaking_a_real_step_stops_the_derivation(monkeypatch):
    """Reading DyT's gamma off as C instead of sqrt(C) must fail, naming the step."""
    cp = Counterparts(normalizations.definition("rmsnorm"))   # a fresh one: nothing cached is touched
    form, params = cp._read_off
    monkeypatch.setitem(cp.__dict__, "_read_off", (form, {**params, gamma: C}))
    with pytest.raises(DerivationError, match="identify_parameters"):
        cp.identify  # noqa: B018


def test_breaking_the_jacobian_fails_the_explicit_check():
    """A wrong diagonal entry (1 - y^2) / sigma (C dropped) fails against Matrix.jacobian."""
    cp = Counterparts(normalizations.definition("rmsnorm"))
    wrong = cp._jacobian_explicit((1 - y**2) / sigma, True, 3)
    assert not wrong.exact() and not wrong.numeric()
    assert cp._jacobian_explicit(result("rmsnorm_jacobian_diag").expr, True, 3).exact()


def test_numeric_witness_catches_what_it_should():
    """A claim true only at x = 0 passes neither witness."""
    from derive.steps import Obligation
    o = Obligation("sin(x) = x", sp.sin(x), x)
    assert not o.exact() and not o.numeric()
