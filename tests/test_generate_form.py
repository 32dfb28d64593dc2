"""A layer for a formula of one's own: the whitelist parser, `dynorm generate --form`'s
one-line errors, and one generated module end to end (the README's command): it imports
torch only, passes gradcheck and gradgradcheck, and matches the catalog in mpmath. Then the
formulas a researcher tries next: a sum of terms generates in seconds, every function of
the whitelist that torch has is printed, and each such module computes its formula (against
torch's autograd of the formula written eagerly)."""
from __future__ import annotations

import importlib.util
import inspect
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sympy as sp
import torch
from torch.autograd import gradcheck, gradgradcheck

from derive import formgen
from derive.cli import main
from derive.formula import FormulaError, parse
from derive.printers import TorchPrinter
from derive.steps import DerivationError, Step, bounded, check, equal
from derive.symbols import x
from derive.testing import assert_matches
from tests import strategies as S

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


# -- the parser ------------------------------------------------------------------------------

def test_parse_builds_the_expression_from_the_whitelist():
    alpha, shift = sp.Symbol("alpha", real=True), sp.Symbol("shift", real=True)
    assert parse("tanh(alpha*(x - shift))") == sp.tanh(alpha * (x - shift))
    assert parse("0.5*x^2 - -x") == x**2 / 2 + x            # exact 1/2; ^ is a power
    assert parse("x / (1 + abs(x))") == x / (1 + sp.Abs(x))
    assert parse("erf(pi*x) + E") == sp.erf(sp.pi * x) + sp.E


@pytest.mark.parametrize("text,match", [
    ("__import__('os').system('echo INJECTED')", "only named functions may be called"),
    ("__import__('os')", "'__import__' is an unknown function"),
    ("besselj(0, x)", "'besselj' is an unknown function"),
    ("x / mean(x)", r"mean\(\) is a statistic over the channels"),
    ("Max(x, 0)", r"Max\(\) is not printable"),
    ("Eq(x, 1)", "not a real-valued expression"),
    ("__import__('os').system('echo INJECTED') or x", "and/or not allowed"),
    ("x.real", "attribute access not allowed"),
    ("(lambda: 1)()", "only named functions"),
    ("x if x else 1", "if/else not allowed"),
    ("9**9**9", "too large"),
    ("'a'", "constant not allowed"),
    ("tanh", "is a function"),
    ("tanh(x, y=1)", "positional arguments only"),
    ("tanh(x, x)", "tanh"),
    ("x +", "not an expression"),
    ("x < 1", "a comparison not allowed"),
    ("", "empty"),
    ("x" * 6000, "too long"),
])
def test_parse_rejects_everything_else(text, match):
    with pytest.raises(FormulaError, match=match):
        parse(text)


def test_parse_never_evaluates_the_text(capfd):
    with pytest.raises(FormulaError):
        parse("__import__('os').system('echo INJECTED')")
    assert "INJECTED" not in capfd.readouterr().out


def test_scalar_names_cannot_shadow_the_generated_code_or_the_module():
    """The scalars become arguments of the printed functions and attributes of an
    nn.Module: every public attribute of torch.nn.Module is reserved (torch's own: other
    libraries add theirs at import, transformers its smart_apply)."""
    module_names = {n for n in dir(torch.nn.Module) if not n.startswith("_") and getattr(
        getattr(torch.nn.Module, n), "__module__", "torch").startswith("torch")}
    assert module_names | {"training"} <= formgen.RESERVED
    for name in ("u", "t0", "x_t", "weight", "eval", "grad_x"):
        with pytest.raises(FormulaError, match="reserved"):
            formgen.form("f", parse(f"tanh({name}*x)"))


# -- the command line's errors ---------------------------------------------------------------

def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,match", [
    (["--form", "f=__import__('os').system('echo INJECTED')"], "only named functions"),
    (["--form", "f=x +"], "not an expression"),
    (["--form", "f=2*alpha"], "must depend on x"),
    (["--form", "f=weight*x"], "'weight' is reserved"),
    (["--form", "F=tanh(x)"], "lowercase"),
    (["--form", "class=tanh(x)"], "reserved"),
    (["--form", "f=tanh(alpha*x)", "--init", "beta=1"], "not a parameter"),
    (["--form", "f=tanh(alpha*x)", "--init", "alpha=big"], "not a number"),
    (["--form", "f=tanh(alpha*x)", "--init", "alpha=inf"], "finite"),
    (["--form", "tanh(x)"], "NAME=VALUE"),
    (["--form", "k=tanh(lambda*x)"], "'lambda' is a Python keyword"),
    (["--form", "\ufb01=tanh(x)"], "would be read by Python as 'fi'"),
    (["--form", "n=" + "tanh(" * 60 + "x" + ")" * 60], "nests functions 60 deep (at most"),
    (["--form", "n=" + "(" * 300 + "x" + ")" * 300], "nested"),
    (["--form", "f=tanh(x)", "--form", "g=erf(x)"], "one --form per command"),
])
def test_bad_forms_are_one_line_and_exit_2(capsys, tmp_path, argv, match):
    rc, out, err = _run(capsys, "generate", *argv, "--out", str(tmp_path / "f.py"))
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "INJECTED" not in out
    assert not (tmp_path / "f.py").exists()


@pytest.mark.parametrize("argv", [["--form", "f=tanh(x)"], ["--out", "f.py"],
                                  ["--init", "a=1"], ["--form", "f=tanh(x)", "--check",
                                                      "--out", "f.py"]])
def test_form_out_and_init_go_together(capsys, argv):
    rc, _, err = _run(capsys, "generate", *argv)
    assert rc == 2 and "--form" in err and len(err.strip().splitlines()) == 1


def test_what_the_printer_cannot_spell_is_one_line(capsys, tmp_path):
    rc, _, err = _run(capsys, "generate", "--form", "s=x**(1/3)", "--out", str(tmp_path / "s.py"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot generate s: the forward (s_forward): TorchPrinter cannot print Pow" in err


def test_abs_is_printed_for_tensors_and_its_second_derivative_is_refused(capsys, tmp_path):
    """d|x|/dx = sign(x) prints as torch.sign (not Python's scalar copysign); the second
    derivative, SymPy's DiracDelta, has no torch spelling: one line."""
    assert TorchPrinter().doprint(sp.sign(x)) == "torch.sign(x)"
    rc, _, err = _run(capsys, "generate", "--form", "softsign=x/(1 + abs(x))",
                      "--out", str(tmp_path / "s.py"))
    assert rc == 2 and "the second derivatives (softsign_hvp)" in err and "DiracDelta" in err


# -- generation verifies what it prints ----------------------------------------------------

#: The verification at its lightest (hypothesis's draws only, two per dtype): for the tests
#: whose subject is something else.
QUICK_VERIFY = ("--sweeps", "0", "--examples", "2")


def test_generation_verifies_the_module_and_prints_the_worst_error(capsys, tmp_path):
    """Every dtype and order in a table of ulps (the sweeps' own tests are derive.testing's;
    tests/test_user_form_safety.py checks this module where the plain formula fails)."""
    rc, out, err = _run(capsys, "generate", "--form", "isru=x/sqrt(beta+x**2)", "--init",
                        "beta=1", "--out", str(tmp_path / "i.py"), "--sweeps", "0",
                        "--examples", "5")
    assert rc == 0, err
    assert "verified isru against its formula" in out and "standard 'ulp'" in out
    table = out.splitlines()[2:6]
    assert [line.split()[0] for line in table] == ["float64", "float32", "bfloat16", "float16"]
    assert all(len(line.split()) == 7 and "FAIL" not in line for line in table)
    assert (tmp_path / "i.py").exists()


def test_an_inexact_module_is_not_written_unless_allowed(capsys, tmp_path):
    """x exp(-x^2)'s printed derivative is inf * 0 = NaN at the largest x (the formula's is
    0): named with its worst input, exit 1, no file; --allow-inexact writes it, exit 0."""
    argv = ["generate", "--form", "g=x*exp(-x**2)", "--out", str(tmp_path / "g.py"),
            "--sweeps", "0", "--examples", "5"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 1 and not (tmp_path / "g.py").exists()
    assert "FAIL" in out and len(err.strip().splitlines()) == 1
    assert "g is not within the 'ulp' standard in float64" in err and "grad x" in err
    assert "got nan against the exact reference 0.0" in err and "'x': -1.797" in err
    rc, out, _ = _run(capsys, *argv, "--allow-inexact")
    assert rc == 0 and (tmp_path / "g.py").exists() and "FAIL" in out


def test_the_torch_standard_is_asked_for_by_name(capsys, tmp_path):
    rc, out, _ = _run(capsys, "generate", "--form", "t=tanh(alpha*x)", "--out",
                      str(tmp_path / "t.py"), "--tolerance", "torch", *QUICK_VERIFY)
    assert rc == 0 and "standard 'torch'" in out


# -- one module end to end -------------------------------------------------------------------

def _readme_command() -> list[str]:
    line = re.search(r"^dynorm generate --form .*$", README, re.M).group(0)
    return shlex.split(line)[1:]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The README's command, its file written to a temporary folder and imported."""
    argv = _readme_command()
    out = tmp_path_factory.mktemp("form") / argv[argv.index("--out") + 1]
    argv[argv.index("--out") + 1] = str(out)
    # the verification's sweeps are the tests of derive.testing's (and the next section's)
    assert main([*argv, *QUICK_VERIFY]) == 0
    spec = importlib.util.spec_from_file_location(out.stem, out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return out, module


def test_out_dash_writes_the_same_module_to_stdout(generated, capsys):
    path, _ = generated
    argv = _readme_command()
    argv[argv.index("--out") + 1] = "-"
    rc, out, err = _run(capsys, *argv, *QUICK_VERIFY)
    assert rc == 0 and out == path.read_text()           # the verification's table: stderr
    assert "verified dyt_shift against its formula" in err
    assert out.startswith("# generated by `dynorm generate --form 'dyt_shift=tanh(alpha*(x - "
                          "shift))' --init alpha=0.5 --init shift=0`, do not edit.")


def test_made_by_the_rules_of_the_built_in_forms(generated):
    """sech2 for the derivative (1/cosh^2, never 1 - tanh^2), as in numeric/generated/torch_forms.py."""
    path, _ = generated
    printed = path.read_text().split("# -- the autograd shell")[0]
    code = re.sub(r'"""(.*?)"""', "", printed, flags=re.S)
    assert "torch.cosh(" in code and "1 - torch.tanh" not in code and "**" not in code


def test_the_module_needs_torch_only(generated):
    path, _ = generated
    code = (f"import sys; sys.path.insert(0, {str(path.parent)!r}); import {path.stem}; "
            "print('sympy' in sys.modules, 'derive' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_gradcheck_and_gradgradcheck(generated):
    _, m = generated
    g = torch.Generator().manual_seed(0)
    ins = [(2 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_(),
           torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(),
           torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(),
           torch.tensor(0.7, dtype=torch.float64, requires_grad=True),
           torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)]
    fn = lambda x, w, b, alpha, shift: m.dyt_shift(x, w, b, alpha=alpha, shift=shift)  # noqa: E731
    assert gradcheck(fn, ins, check_forward_ad=True)
    assert gradgradcheck(fn, ins, check_fwd_over_rev=True)
    y = torch.func.vmap(lambda row: fn(row, *ins[1:]))(ins[0])
    torch.testing.assert_close(y, fn(*ins))


@pytest.mark.parametrize("form", ["dyt_ln", "tanh(alpha*(x - shift))"])
def test_it_matches_the_catalog_and_its_formula(generated, form):
    """weight * tanh(alpha (x - shift)) + bias is the catalog's dyt_ln layer: second order,
    every dtype, inputs up to each dtype's finite maximum (hypothesis's draws; the sweeps
    of every bfloat16 and float16 value took 144 s per call here)."""
    _, m = generated
    assert_matches(m.dyt_shift, form, examples=4, order=2, bias_none=True, sweep=0)


def test_the_module(generated):
    _, m = generated
    layer = m.DytShift(8)
    assert (layer.alpha.item(), layer.shift.item()) == (0.5, 0.0)        # the --init values
    assert repr(layer) == "DytShift(8, alpha=0.5, shift=0, bias=True)"
    assert {n for n, _ in layer.named_parameters()} == {"alpha", "shift", "weight", "bias"}
    x_in = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    assert layer(x_in).dtype == torch.bfloat16 and layer(x_in).shape == x_in.shape
    other = m.DytShift((8,), alpha=2.0, bias=False)
    assert other.alpha.item() == 2.0 and other.bias is None
    with pytest.raises(TypeError, match="unexpected keyword 'beta'"):
        m.DytShift(8, beta=1.0)
    with pytest.raises(ValueError, match="normalized_shape"):
        m.DytShift(0)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'shift'"):
        m.dyt_shift(x_in, layer.weight, None, alpha=1.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        m.dyt_shift(x_in, torch.ones(3), None, alpha=1.0, shift=0.0)


def test_the_readme_shows_the_functional_as_the_module_defines_it(generated):
    _, m = generated
    shown = re.search(r"`(dyt_shift\(x, .*?\))`", README.replace("\n", " ")).group(1)
    assert shown == f"dyt_shift{inspect.signature(m.dyt_shift)}"


# -- what a researcher tries next ------------------------------------------------------------

#: The issue's slowest sum of terms (more than 150 s before the hyperbolic reducer).
SUM = "g=a0*tanh(b0*x + c0) + a1*tanh(b1*x + c1)"
#: Every function of the whitelist that torch has, E, powers beyond 4 (x^5 in the second
#: derivative of x^7, (2 + x^2)^-4 in that of (2 + x^2)^-2), a fourth root (sqrt of sqrt),
#: two tanh terms that share a temporary, and a scalar named in Unicode.
FUNCTIONS = ("w=E*atan(λ*x) + atanh(x/(4 + x**2)) + log(1 + x**2) + cosh(x/8) + sinh(x/8)"
             " + asinh(x) + sin(x) + cos(x) + tan(x/4) + x**7/5040 + 1/(2 + x**2)**2"
             " + tanh(x) + tanh(2*x) + sqrt(sqrt(2 + tanh(x)))")


def _eager_g(x, a0, a1, b0, b1, c0, c1):
    return a0 * torch.tanh(b0 * x + c0) + a1 * torch.tanh(b1 * x + c1)


def _eager_w(x, lam):
    return (math.e * torch.atan(lam * x) + torch.atanh(x / (4 + x**2)) + torch.log(1 + x**2)
            + torch.cosh(x / 8) + torch.sinh(x / 8) + torch.asinh(x) + torch.sin(x)
            + torch.cos(x) + torch.tan(x / 4) + x**7 / 5040 + 1 / (2 + x**2) ** 2
            + torch.tanh(x) + torch.tanh(2 * x) + (2 + torch.tanh(x)) ** 0.25)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sum_of_terms(tmp_path_factory):
    """SUM through the command line in a process of its own: (seconds, the module)."""
    out = tmp_path_factory.mktemp("sum") / "g.py"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "derive", "generate", "--form", SUM,
                           "--out", str(out), "--sweeps", "0", "--examples", "1"],
                          capture_output=True, text=True, timeout=90)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    return seconds, _load(out)


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    """FUNCTIONS through formgen: (its notes, the module)."""
    out = tmp_path_factory.mktemp("functions") / "w.py"
    name, formula = FUNCTIONS.split("=", 1)
    g = formgen.generate(name, formula)
    out.write_text(g.source, encoding="utf-8")
    return g, _load(out)


def test_a_sum_of_terms_generates_in_seconds(sum_of_terms):
    seconds, m = sum_of_terms
    assert seconds < 20, f"{SUM} took {seconds:.1f} s"
    assert m.SCALARS == ("a0", "a1", "b0", "b1", "c0", "c1")


def _derivatives(f, x, params, seed=1):
    """y, the first derivatives of sum(y * cot) in x and params, and the second ones (of
    sum(grad_x * v)) in x and params: what the generated Functions print, by autograd."""
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    y = f(x, *params)
    first = torch.autograd.grad((y * cot).sum(), (x, *params), create_graph=True)
    second = torch.autograd.grad((first[0] * v).sum(), (x, *params), allow_unused=True,
                                 materialize_grads=True)
    return (y, *first, *second)


def _leaves(values, device):
    return [torch.tensor(v, dtype=torch.float64, device=device, requires_grad=True)
            for v in values]


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("case", ["sum", "functions"])
def test_the_generated_module_computes_its_formula(case, device, request):
    """Output, first and second derivatives in x, weight, bias and every scalar, float64,
    against torch's autograd of the formula written eagerly."""
    if case == "sum":
        _, m = request.getfixturevalue("sum_of_terms")
        fn, eager, values = m.g, _eager_g, (0.7, -1.3, 1.1, 0.4, 0.2, -0.5)
    else:
        _, m = request.getfixturevalue("functions")
        fn, eager, values = m.w, _eager_w, (0.6,)
    x_in = torch.linspace(-3.5, 3.5, 24, dtype=torch.float64, device=device).reshape(4, 6)
    x_in.requires_grad_()
    wb = _leaves([[1.5, -0.5, 2.0, 1.0, 0.25, -1.0], [0.1, 0.2, -0.3, 0.0, 0.5, 1.0]], device)
    scalars = _leaves(values, device)
    names = m.SCALARS

    def generated(x, w, b, *s):
        return fn(x, w, b, **dict(zip(names, s)))

    def reference(x, w, b, *s):
        return w * eager(x, *s) + b

    got = _derivatives(generated, x_in, (*wb, *scalars))
    want = _derivatives(reference, x_in, (*wb, *scalars))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_every_function_of_the_whitelist_that_torch_has_is_printed(functions):
    g, m = functions
    assert g.signature == "w(x, weight, bias=None, *, λ)" and m.SCALARS == ("λ",)
    code = inspect.getsource(m.w_hvp)
    for call in ("torch.atan(", "torch.atanh(", "torch.log(", "torch.sinh(", "torch.asinh(",
                 "torch.sin(", "torch.cos(", "torch.tan(", "torch.pow("):
        assert call in inspect.getsource(m), call
    assert "2.718281828459045" in code


def test_a_parameter_that_drops_out_is_a_warning(capsys, tmp_path):
    rc, out, err = _run(capsys, "generate", "--form", "m=tanh(alpha*x) + 0*beta",
                        "--out", str(tmp_path / "m.py"), *QUICK_VERIFY)
    assert rc == 0 and "m(x, weight, bias=None, *, alpha) and M" in out
    assert err.strip() == ("dynorm: warning: beta drops out of the formula (tanh(alpha*x)): "
                           "the layer has no parameter beta")


def test_an_exact_witness_over_its_bound_leaves_the_claim_to_the_numeric_one():
    """1 - tanh(u)^2 = 1/cosh(u)^2 at every level of tanh nested 8 deep: the exact witness
    (the product's cancel) takes from a fraction of a second to a minute, so the bound is
    0.1 ms, which the clock enforces whatever the machine's speed (a 0.3 s bound was met
    on a fast run); the numeric witness decides, the bound says so, a false claim fails."""
    u, lhs, rhs = x, sp.S.One, sp.S.One
    for _ in range(8):
        lhs, rhs, u = lhs * (1 - sp.tanh(u) ** 2), rhs * sp.cosh(u) ** -2, sp.tanh(u)
    start = time.monotonic()
    with bounded(1e-4) as bound:     # the clock stops SymPy (SIGALRM) long before it decides
        st = check(Step("nested", lhs, "sech2 at every level", (equal("sech2", lhs, rhs),)))
        with pytest.raises(DerivationError, match="numeric witness"):
            check(Step("wrong", lhs, "off by 1e-20",
                        (equal("wrong", lhs, rhs + sp.Rational(1, 10**20)),)))
    assert time.monotonic() - start < 10
    assert st.checks[0].exact is None and st.checks[0].numeric
    assert bound.numeric_only == ["nested: sech2"]


def test_generation_says_which_checks_rest_on_the_numeric_witness():
    g = formgen.generate("bounded", "tanh(c*x + 1)", seconds=0)
    assert len(g.notes) == 1 and "rest on the numeric witness alone" in g.notes[0]
