"""The procedure on any norm, the whitelist parser, and `dynorm derive`.

Independent witnesses: each norm written again here in mpmath (its Jacobian by mpmath.diff,
its frozen ODE solved by mpmath.odefun), and the stated results of the p-norm and ScaleNorm counterparts written out here.
"""
from __future__ import annotations

import json
import random

import mpmath
import pytest
import sympy as sp

from derive import NAMES, counterparts, normalizations, result
from derive.cli import main
from derive.symbols import (C, R, S, alpha, beta, epsilon, g, gamma, mu, p, parse, s, sigma, x,
                            y, y_k)

# -- the parser: a whitelist, never Python ---------------------------------------------------


def test_parse_never_runs_python(tmp_path):
    marker = tmp_path / "ran"
    attacks = [f"__import__('os').system('touch {marker}') or x",
               f"x + __import__('os').system('touch {marker}')",
               f"(lambda: __import__('os').system('touch {marker}'))()",
               "x.__class__", "[x][0]", "'x'", "x if x else x", "sqrt(x, *[1])",
               "sqrt(x=1)", "(x := 1)", "9**9**9", "1e999"]
    for text in attacks:
        with pytest.raises(ValueError):
            parse(text)
    assert not marker.exists()


@pytest.mark.parametrize("text,needle", [
    ("x / sqrt(mean(x**2) + eps)", "unknown name 'eps'"),
    ("foo(x)", "'foo' is an unknown function"),
    ("x(2)", "'x' is a symbol, not a function"),
    ("sqrt + x", "'sqrt' is a function"),
    ("x +", "not an expression"),
])
def test_parse_errors_name_the_culprit(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse(text)


def test_parse_reads_the_usual_spellings():
    assert parse("0.5*x^2 + abs(x)") == x**2 / 2 + sp.Abs(x)
    assert parse("Eq(y, tanh(alpha*x))") == sp.Eq(y, sp.tanh(alpha * x))


@pytest.mark.parametrize("name", NAMES)
def test_every_result_round_trips_through_the_parser(name):
    r = result(name)
    assert parse(str(r.expr)) == r.expr
    assert all(parse(str(e)) == e for e in r.params.values())


# -- the norms again, in mpmath ----------------------------------------------------------------

EPS, GAIN, P3 = sp.Rational(1, 100), sp.Rational(17, 10), 3


def _mp_norm(name, v):
    """The norm of the vector v, written from its definition (at the working precision)."""
    n, eps, gain = len(v), mpmath.mpf(EPS.p) / EPS.q, mpmath.mpf(GAIN.p) / GAIN.q
    if name == "layernorm":
        m = mpmath.fsum(v) / n
        sd = mpmath.sqrt(mpmath.fsum((t - m) ** 2 for t in v) / n + eps)
        return [(t - m) / sd for t in v]
    if name == "scalenorm":
        return [gain * t / mpmath.sqrt(mpmath.fsum(u * u for u in v)) for t in v]
    q = {"rmsnorm": 2, "pnorm": P3, "pnorm1": 1, "pnorm4": 4}[name]
    r = (mpmath.fsum(abs(t) ** q for t in v) / n + eps) ** (mpmath.mpf(1) / q)
    return [t / r for t in v]


CASES = ("rmsnorm", "layernorm", "pnorm", "pnorm1", "pnorm4", "scalenorm")
CONSTANTS = {epsilon: EPS, g: GAIN, p: P3}


def _vector(n, seed):
    rng = random.Random(seed)
    return [mpmath.mpf(rng.uniform(-3, 3)) for _ in range(n)]


def _frozen(cp, v, out, i):
    """The frozen names' values for this vector: mu the mean, the scale (x_i - mu) / y_i."""
    shift = mpmath.fsum(v) / len(v) if cp.shift == mu else 0
    at = {cp.scale: (v[i] - shift) / out[i]}
    if cp.shift == mu:
        at[mu] = shift
    return at


def _value(e, at):
    e = e.subs(CONSTANTS)
    syms = sorted(e.free_symbols, key=str)
    return sp.lambdify(syms, e, "mpmath")(*(at[q] for q in syms))


@pytest.mark.parametrize("name", CASES)
def test_general_c_jacobian_matches_mpmath_diff(name):
    """The general-C entries at C = 7 (beyond the sizes SymPy checked) against mpmath.diff."""
    cp = counterparts(normalizations.definition(name))
    with mpmath.workdps(30):
        v = _vector(7, 11)
        out = _mp_norm(name, v)
        for i, j in [(0, 0), (4, 4), (0, 5), (6, 2)]:
            numerical = mpmath.diff(lambda t: _mp_norm(name, v[:j] + [t] + v[j + 1:])[i], v[j])
            at = {**_frozen(cp, v, out, i), C: mpmath.mpf(7), y: out[i], y_k: out[j]}
            entry = cp.jacobian_diag if i == j else cp.jacobian_offdiag
            assert abs(_value(entry, at) - numerical) < mpmath.mpf(10) ** -20, (i, j)


@pytest.mark.parametrize("name", CASES)
def test_function_space_with_exact_params_is_the_norm(name):
    cp = counterparts(normalizations.definition(name))
    with mpmath.workdps(30):
        v = [sp.Rational(k * 37 % 23 - 11, 7) for k in range(6)]
        out = _mp_norm(name, [mpmath.mpf(t) for t in v])
        consts = {"epsilon": sp.Rational(1, 100), "g": sp.Rational(17, 10), "p": P3}
        for i in range(6):
            at = cp.exact_params(v, i, **consts)
            got = cp.function_space.subs(at).subs(x, v[i]).subs(CONSTANTS)
            assert abs(sp.N(got, 30) - out[i]) < mpmath.mpf(10) ** -25, (i, at)


@pytest.mark.parametrize("name", ("rmsnorm", "layernorm", "pnorm1", "pnorm4", "scalenorm"))
def test_derivative_space_solves_the_frozen_ode_numerically(name):
    """mpmath.odefun integrates dy/dx = F(y) from y(shift) = 0; the closed form (or the
    implicit relation) must agree on both sides of the shift."""
    cp = counterparts(normalizations.definition(name))
    frozen = {sigma: mpmath.mpf("0.8"), s: mpmath.mpf("0.8"), mu: mpmath.mpf("0.3"), C: 6}
    x0 = float(cp.shift.subs(frozen))
    F = sp.lambdify(y, cp.jacobian_diag.subs(CONSTANTS).subs(frozen), "mpmath")
    with mpmath.workdps(20):
        right = mpmath.odefun(lambda t, z: F(z), x0, 0)
        left = mpmath.odefun(lambda t, z: -F(z), -x0, 0)   # y(-t), t >= -x0
        for d in (0.4, 1.7):
            for xv, yv in ((x0 + d, right(x0 + d)), (x0 - d, left(-(x0 - d)))):
                if cp.derivative_space is not None:
                    got = cp.derivative_space.subs(CONSTANTS).subs(frozen).subs(x, xv)
                    assert abs(sp.N(got, 20) - yv) < 1e-12, (xv, got, yv)
                else:  # G(y) = x - x0 at the numerical solution
                    rel = cp.derivative_space_implicit.subs(frozen)
                    gap = (rel.lhs - rel.rhs).subs({y: yv, x: xv})
                    assert abs(sp.N(gap, 20)) < 1e-12, (xv, gap)


# -- the p-norm and ScaleNorm results, written out here -----------------------------------------------

def _same(a, b) -> bool:
    return sp.simplify(a - b) == 0


def test_the_p_norm_family_is_what_math_md_states():
    general = counterparts(normalizations.definition("pnorm"))
    assert _same(general.jacobian_diag, (1 - sp.Abs(y) ** p / C) / sigma)
    assert _same(general.function_space, C ** (1 / p) * x / (beta + sp.Abs(x) ** p) ** (1 / p))
    assert general.function_space_params == {beta: R + C * epsilon}
    assert general.derivative_space is None      # general p: function space only

    one = counterparts(normalizations.definition("pnorm1"))
    want = C * sp.sign(x) * (1 - sp.exp(-sp.Abs(x) / (C * sigma)))
    for xv in (sp.Rational(-7, 3), sp.Rational(5, 2)):   # sign and |x| on each side
        assert _same(one.derivative_space.subs(x, xv), want.subs(x, xv))
    assert one.derivative_space_params == {alpha: 1 / (C * sigma), gamma: C}

    four = counterparts(normalizations.definition("pnorm4"))
    assert four.derivative_space is None
    a = C ** sp.Rational(1, 4)
    rel = four.derivative_space_implicit
    assert rel.rhs == x and _same(rel.lhs / sigma, a / 2 * (sp.atanh(y / a) + sp.atan(y / a)))


def test_scalenorm_is_what_math_md_states():
    cp = counterparts(normalizations.definition("scalenorm"))
    assert _same(cp.function_space, g * x / sp.sqrt(beta + x**2))
    assert cp.function_space_params == {beta: S}        # S: the other channels' squares
    assert _same(cp.derivative_space, g * sp.tanh(x / (g * sigma)))


# -- what the procedure cannot do, it says --------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("epsilon + 1", "does not use the channel x"),
    ("sqrt(mean(x**2))", "does not use the channel x outside its statistics"),
    ("x / 2", "has no statistic"),
    ("tanh(x) / sqrt(mean(x**2))", "not affine in x"),
    ("x / mean(abs(x - mean(x)))", "does not separate"),
])
def test_a_norm_it_cannot_handle_is_one_clear_error(text, needle):
    with pytest.raises(ValueError, match=needle):
        counterparts(text).jacobian_diag  # noqa: B018


def test_sympy_input_is_the_text_and_rmsnorm_gives_the_catalog():
    mean = sp.Function("mean")
    cp = counterparts(x / sp.sqrt(mean(x**2) + epsilon))
    assert cp is counterparts("x / sqrt(mean(x^2) + epsilon)")
    assert cp.derivative_space_form == result("dyt").expr
    assert cp.function_space == result("dyisru").expr
    with pytest.raises(TypeError, match="norm must be a str or a SymPy expression"):
        counterparts(5)


def test_exact_params_names_what_it_lacks():
    cp = counterparts(normalizations.definition("rmsnorm"))
    with pytest.raises(ValueError, match="i must index values"):
        cp.exact_params([1, 2, 3], 3)
    with pytest.raises(ValueError, match="needs a value for epsilon"):
        cp.exact_params([1, 2, 3], 0)
    assert cp.exact_params([1, 2, 3], 0, epsilon=0) == {beta: 13, C: 3}


# -- dynorm derive ---------------------------------------------------------------------------------

def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_derive_prints_the_derivation_and_writes_the_export(tmp_path, capsys):
    path = tmp_path / "mine.json"
    rc, out, err = run(capsys, "derive", "x / (mean(abs(x)) + epsilon)", "--json", str(path),
                       "--format", "text")
    assert rc == 0 and not err
    for needle in ("jacobian_diag", "freeze_sigma", "integrate_with_y0", "promote_beta",
                   "[ok exact, ok numeric]", "gamma*(1 - exp(-alpha*Abs(x)))*sign(x)"):
        assert needle in out, needle
    data = json.loads(path.read_text())["results"]
    assert set(data) == {"per_channel", "jacobian_diag", "jacobian_offdiag",
                         "derivative_space", "function_space"}
    for entry in data.values():
        assert set(entry) == {"expr", "latex", "symbols", "params", "steps"}
        local = {q: sp.Symbol(q, **a) for q, a in entry["symbols"].items()}
        assert sp.sympify(entry["expr"], locals=local).free_symbols <= set(local.values())
    assert data["function_space"]["params"] == {"beta": "C*epsilon + R"}


@pytest.mark.parametrize("text,needle", [
    ("x / sqrt(mean(x**2) + eps)", "unknown name 'eps'"),
    ("epsilon", "does not use the channel x"),
    ("tanh(x) / sqrt(mean(x**2))", "not affine in x"),
    ("x.real", "attribute access not allowed"),
])
def test_derive_errors_are_one_line_and_exit_2(capsys, text, needle):
    rc, out, err = run(capsys, "derive", text)
    assert rc == 2 and not out
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_derive_never_runs_the_text(tmp_path, capsys):
    marker = tmp_path / "ran"
    rc, _, err = run(capsys, "derive", f"__import__('os').system('touch {marker}') or x")
    assert rc == 2 and "not allowed" in err and not marker.exists()


# -- norms whose checks SymPy finds hard ---------------------------------------------------------

def test_a_correct_jacobian_is_not_reported_as_a_failed_proof():
    """y = x / (mean(|x|^(1/2)) + epsilon)^2: the denominator is the square of the root's
    base. The diagonal entry against sympy.diff of the explicit C = 2 vector at three points."""
    cp = counterparts("x/(mean(abs(x)**(1/2))+epsilon)**2")
    entry = cp.jacobian_diag                          # raised "obligation failed" before
    (frozen,) = entry.free_symbols - {y, C, epsilon}    # the scale sigma, or the mean tau
    x0, x1 = sp.symbols("x0 x1", real=True)
    r = (sp.sqrt(sp.Abs(x0)) + sp.sqrt(sp.Abs(x1))) / 2
    y0 = x0 / (r + epsilon) ** 2
    value = {"tau": r, "sigma": (r + epsilon) ** 2}[frozen.name]
    for a, b, e in [(sp.Rational(3, 7), sp.Rational(-5, 3), sp.Rational(1, 10)),
                    (sp.Rational(-11, 4), sp.Rational(2, 9), sp.Rational(1, 3)),
                    (sp.Rational(7, 5), sp.Rational(13, 6), sp.Rational(1, 100))]:
        at = {x0: a, x1: b, epsilon: e}
        want = sp.diff(y0, x0).subs(at)
        got = entry.subs({y: y0.subs(at), frozen: value.subs(at), C: 2, epsilon: e})
        assert abs(sp.N(got - want, 40)) < sp.Float(10) ** -30, at


def test_p_7_derives_every_route():
    """p = 7: 1/(1 - u^7) integrates to a RootSum, whose logs' signs SymPy cannot decide
    (it stopped with "cannot determine truth value of Relational"); p = 3, 5, 6 worked."""
    cp = counterparts("x/(mean(abs(x)**7)+epsilon)**(1/7)")
    assert [st.name for st in cp.steps][-1] == "promote_beta"
    assert all(c.ok for st in cp.steps for c in st.checks)
    relation = cp.derivative_space_form
    # the frozen ODE dy/dx = (1/sigma)(1 - |y|^7/C) at sigma = 1, C = 2, from y(0) = 0
    F = cp.freeze.expr.rhs.subs(sp.Function("y")(x), y)
    for yv in (sp.Rational(3, 5), sp.Rational(-7, 4)):
        assert F.subs({y: yv, C: 2, sigma: 1}) == 1 - abs(yv) ** 7 / 2
    with mpmath.workdps(30):
        sol = mpmath.odefun(lambda t, v: 1 - abs(v) ** 7 / 2, 0, 0)
        at = {C: 2, sigma: 1, x: sp.Rational(1, 2)}
        yv = sp.Float(sol(mpmath.mpf(1) / 2), 30)
        value = (relation.lhs - relation.rhs) if isinstance(relation, sp.Eq) else \
            relation - y
        assert abs(sp.N(value.subs(at).subs(y, yv), 25)) < 1e-15


def test_derive_p_7_prints_the_derivation(capsys):
    rc, out, err = run(capsys, "derive", "x/(mean(abs(x)**7)+epsilon)**(1/7)", "--format", "text")
    assert rc == 0 and not err and "promote_beta" in out and "integrate" in out


def test_sympy_failing_inside_a_step_names_the_step(monkeypatch, capsys):
    """A SymPy error inside one step is one line naming that step; the steps that do not
    need it are still made."""
    from derive import ode

    def fails(r):
        raise TypeError("cannot determine truth value of Relational: 1/2 - 7*_t < 0")
    monkeypatch.setattr(ode, "_integral", fails)
    text = "x/(mean(abs(x))+3*epsilon)"
    cp = counterparts(text)
    with pytest.raises(ValueError, match=r"step 'separate_variables': SymPy failed \(TypeError"):
        cp.derivative_space  # noqa: B018
    assert cp.jacobian_diag.has(sigma) and cp.function_space.has(beta)
    rc, out, err = run(capsys, "derive", text)
    assert rc == 2 and "step 'separate_variables': SymPy failed" in err
    assert len(err.strip().splitlines()) == 1


def test_bases_related_in_a_way_the_free_symbols_miss_fall_back_to_the_claim(monkeypatch):
    """With one free symbol per base (as before), (eps + tau)^2 and eps + tau are unrelated
    and the stronger claim is false: the claim itself is checked instead (tau a real
    symbol, as before it was known nonnegative: the scale is then not named sigma)."""
    from derive import procedure, statistics
    monkeypatch.setattr(statistics, "_stat_symbol", lambda name, h: sp.Symbol(name, real=True))
    monkeypatch.setattr(procedure, "_positive_factors",
                        lambda b, xs: (lambda c, core: (c, [(core, 1)]))(
                            *sp.factor(b).as_coeff_Mul()))
    cp = counterparts("x/(mean(abs(x)**(1/2))+2*epsilon)**2")
    assert all(c.ok for c in cp.jacobian_diag_step.checks)
