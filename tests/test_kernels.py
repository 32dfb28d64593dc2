"""The Triton kernels (numeric.triton_backend): the catalog's formulas, deterministic, compilable.

Without CUDA the kernels run on CPU tensors through Triton's interpreter: conftest.py sets
TRITON_INTERPRET=1 before anything imports triton. With CUDA they run compiled on the GPU
(the ``gpu`` parameters), and the CPU parameters skip (no interpreter there): a test of the
kernels never passes by running another backend.

Outputs and gradients are checked with the shared property-test machinery
(tests/strategies.py, tests/checks.py: the mpmath references, the one tolerance table),
with numeric.functional on the Triton backend.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mpmath
import pytest
import torch
from hypothesis import given, settings

import numeric.triton_backend as K
from numeric import functional as F
from tests import checks
from tests import reference as R
from tests import strategies as S

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "numeric" / "generated" / "triton_kernels.py"
FORMS = S.FORMS
#: The kernels compute in float32: float64 always takes the PyTorch path (tested apart).
DTYPE_PAIRS = [p for p in S.DTYPE_PAIRS if p[0] != torch.float64]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731
#: At most the ci profile's count of examples (the interpreter makes a larger one slow).
FEW = settings(max_examples=min(settings().max_examples, 40))
#: The interpreter computes with numpy, which warns where IEEE arithmetic overflows to inf
#: (u*u in the unselected branch of a tl.where, alpha times a clamped inf): expected.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@pytest.fixture
def kernels(device):
    """The Triton backend for this device's tensors; where Triton cannot run them, the test
    skips with the reason (never runs another backend instead)."""
    checks.skip_unless_runs("triton", device)
    with checks.backend("triton"):
        yield


# -- the formulas --------------------------------------------------------------------------

@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype,pdtype", DTYPE_PAIRS, ids=IDS)
@pytest.mark.parametrize("name", FORMS)
def test_outputs_and_gradients_match_the_catalog(name, dtype, pdtype, device, kernels):
    @FEW
    @given(S.cases(name, dtype, pdtype, device))
    def check(case):
        checks.check_first(name, *case)

    check()


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", FORMS)
def test_special_values(name, dtype, device, kernels):
    """+-inf saturate with zero gradient, NaN stays in its element (on the kernels)."""
    checks.special_values(name, dtype, device)


def _u(values, device, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, device=device)


@pytest.mark.parametrize("device", S.DEVICES)
def test_tanh_exp_is_accurate_near_zero(device, kernels):
    """u = 1e-4: (1 - e)/(1 + e), e = exp(-2u), is ~270 ulp off in float32 (1 - e cancels);
    the kernel's polynomial branch (|u| < 1/4: multiplications and additions only) is within
    1 ulp. The exp branch is as accurate as the device's exp, which is not the same
    everywhere (numpy's under the interpreter: 1.07 ulp at u = 2 on one CPU, within 1 on
    another; the GPU's fast exp2): within 4 ulp, still far from the cancellation's 270."""
    u = _u([1e-4, -3e-3, 0.2499, 0.25, 0.2501, 2.0, -20.0], device)
    literal = (1 - torch.exp(-2 * u[0])) / (1 + torch.exp(-2 * u[0]))
    with mpmath.workdps(50):
        want = torch.tensor([float(mpmath.tanh(mpmath.mpf(float(v)))) for v in u.cpu()],
                            dtype=torch.float64)
    eps = torch.finfo(torch.float32).eps
    assert abs(literal.item() / want[0].item() - 1) > 100 * eps
    got = F.dyt(u, torch.tensor(1.0, device=device), torch.ones(7, device=device))
    ulps = torch.where(u.cpu().abs() < 0.25, 1.0, 4.0).double()
    assert ((got.cpu().double() - want).abs() <= ulps * eps * want.abs()).all(), (got, want)


@pytest.mark.parametrize("device", S.DEVICES)
def test_hypot_minmax_keeps_huge_inputs(device, kernels):
    """x = 1e30 in float32: x^2 overflows; max/min hypot gives y = weight exactly."""
    x = _u([1e30, -1e30, 3e38], device).requires_grad_(True)
    y = F.dyisru(x, torch.tensor(4.0, device=device), torch.ones(3, device=device))
    y.sum().backward()
    assert y.tolist() == [1.0, -1.0, 1.0] and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", S.DEVICES)
def test_sech2_exp_past_cosh_overflow(device, kernels):
    """|u| = 46: cosh(u)^2 is inf in float32 (the literal 1/cosh^2 gives 0); the kernel's
    4e/(1 + e)^2 gives sech^2 (subnormal, 4.5e-40) where subnormals are kept."""
    x = _u([46.0], device).requires_grad_(True)
    assert (1 / torch.cosh(x.detach()) ** 2).item() == 0.0
    F.dyt(x, torch.tensor(1.0, device=device), torch.ones(1, device=device)).sum().backward()
    with mpmath.workdps(50):
        want = float(mpmath.sech(46) ** 2)
    got = x.grad.item()
    if device == "cuda" and got == 0.0:
        pytest.skip("this GPU's exp flushes subnormal results to zero")
    assert got == pytest.approx(want, rel=1e-3)


# -- determinism, shapes, the switch ---------------------------------------------------------

def _all(name, x, scalars, w, b, g):
    """[y, grad x, grad scalars..., grad weight, grad bias] on the current backend."""
    leaves = [t.clone().requires_grad_(True) for t in (x, *scalars, w, b)]
    y = getattr(F, name)(*leaves)
    y.backward(g)
    return [y.detach(), *(t.grad for t in leaves)]


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", FORMS)
def test_bitwise_deterministic(name, device, kernels, monkeypatch):
    """Two runs, every output and gradient equal bit for bit; several row programs, each
    looping over several tiles, two channel blocks, and the scalars' second-stage sum over
    two blocks of partials (the second one part masked)."""
    monkeypatch.setattr(K, "ROW_PROGRAMS", 3)
    monkeypatch.setattr(K, "SUMS_BLOCK", 4)        # 3 programs x 2 channel blocks = 6 cells
    g = torch.Generator().manual_seed(1)
    N, C = 70, 130                     # BLOCK_C 128 -> 2 channel blocks, BLOCK_R 16
    grid = K.backward_grid(N, C)
    assert grid["programs"] == 3 and grid["rows_per_program"] == 2 * grid["BLOCK_R"]
    x = (torch.randn(N, C, generator=g) * 4).to(torch.bfloat16).to(device)
    scalars = [torch.tensor(v, device=device) for v in (0.7, -0.2)[:len(R.params(name))]]
    w, b = (torch.randn(C, generator=g).to(device) for _ in range(2))
    grad = torch.randn(N, C, generator=g).to(torch.bfloat16).to(device)
    first, second = _all(name, x, scalars, w, b, grad), _all(name, x, scalars, w, b, grad)
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    with checks.backend("torch"):
        ref = _all(name, x, scalars, w, b, grad)
    for got, want in zip(first, ref):  # and agree with PyTorch's sums, to rounding
        assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", S.DEVICES)
def test_empty_and_batched_shapes(device, kernels):
    x = torch.zeros(0, 5, device=device, requires_grad=True)
    w = torch.ones(5, device=device, requires_grad=True)
    y = F.dyisru(x, torch.tensor(2.0, device=device), w)
    y.sum().backward()
    assert y.shape == (0, 5) and w.grad.abs().sum() == 0
    x = torch.randn(2, 3, 4, device=device).transpose(0, 1)    # not contiguous
    y = F.dyt(x, 0.5, torch.ones(4, device=device))
    with checks.backend("torch"):
        want = F.dyt(x, 0.5, torch.ones(4, device=device))
    assert torch.allclose(y, want, rtol=1e-5, atol=1e-6)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with checks.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        F.dyt(torch.zeros(1, 2), 0.5, torch.ones(2))


def test_interpreter_set_too_late_is_a_clear_error():
    """TRITON_INTERPRET=1 only after triton was imported: one line that says so."""
    pytest.importorskip("triton")
    code = ("import os, torch, triton, numeric.functional as F\n"
            "os.environ['TRITON_INTERPRET'] = '1'\nF.set_backend('triton')\n"
            "try:\n    F.dyt(torch.zeros(1, 2), 0.5, torch.ones(2))\n"
            "except RuntimeError as e:\n    print(e)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout
    assert "needs TRITON_INTERPRET=1 before triton" in out


def test_import_is_light():
    """Importing numeric and numeric.triton_backend loads neither triton nor SymPy; auto on CPU
    launches nothing, so the generated kernels stay unloaded. (Calling any torch custom op
    imports torch._dynamo, which imports both where installed: torch's doing.)"""
    code = ("import sys, torch, numeric, numeric.triton_backend as K\n"
            "print('triton' in sys.modules, 'sympy' in sys.modules)\n"
            "numeric.functional.dyt(torch.randn(2, 3), 0.5, torch.ones(3))\n"
            "print('numeric.generated.triton_kernels' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DYNORM_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout.split()
    assert out == ["False", "False", "False"]


# -- torch.compile, opcheck ---------------------------------------------------------------------

@pytest.mark.parametrize("device", S.DEVICES)
def test_compiles_fullgraph(device, kernels):
    """Forward and backward under torch.compile(fullgraph=True) (no graph break: the ops
    are opaque nodes with fake kernels), equal to eager."""
    torch._dynamo.reset()

    def loss(x, alpha, shift, w, b):
        return (F.dyt_ln(x, alpha, shift, w, b) * F.dyisru(x, alpha, w)).sum()

    g = torch.Generator().manual_seed(3)
    args = [torch.randn(4, 6, generator=g), torch.tensor(0.8), torch.tensor(0.1),
            torch.randn(6, generator=g), torch.randn(6, generator=g)]
    eager = [a.to(device).requires_grad_(True) for a in args]
    comp = [a.to(device).requires_grad_(True) for a in args]
    loss(*eager).backward()
    out = torch.compile(loss, fullgraph=True)(*comp)
    out.backward()
    assert torch.allclose(out, loss(*eager).detach(), rtol=1e-5)
    for p, q in zip(comp, eager):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", S.DEVICES)
def test_eager_launches_directly_and_a_trace_shows_the_forms_ops(device, kernels,
                                                                 monkeypatch):
    """An eager call launches the kernels without the custom op's dispatch; torch.export's
    graph shows the form's own ops (dynorm::dyt_ln_forward, ...), not a name argument."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=g).to(device).requires_grad_(True)
    w = torch.randn(6, generator=g).to(device)
    want = F.dyt(x, 0.5, w)

    def refuse(*args):
        raise AssertionError("an eager call went through the custom op")

    with monkeypatch.context() as m:
        for ops in K.OPS.values():
            m.setattr(ops, "forward_op", refuse)
            m.setattr(ops, "backward_op", refuse)
        got = F.dyt(x, 0.5, w)
        got.sum().backward()
    assert torch.equal(got, want) and x.grad is not None

    class Layer(torch.nn.Module):
        def forward(self, x):
            return F.dyt_ln(x, 0.5, 0.1, w) + F.derf(x, 0.5, 0.1, w)

    code = torch.export.export(Layer(), (x.detach(),)).graph_module.code
    assert "torch.ops.dynorm.dyt_ln_forward.default" in code
    assert "torch.ops.dynorm.derf_forward.default" in code


# -- the generated file ---------------------------------------------------------------------------

def _code_lines(text: str) -> str:
    """The code without docstrings (they hold the closed forms, with ** on purpose)."""
    return re.sub(r'"""(.*?)"""', "", text, flags=re.S)


def test_kernels_file_spellings():
    text = KERNELS.read_text()
    code = _code_lines(text)
    assert text.startswith("# generated by `python -m derive generate`, do not edit.")
    assert code.count("@triton.jit") == 2 * len(FORMS) + 2   # each form's two; sums, _rounded
    assert "tl.exp(" in code and "tl.sqrt(" in code and "tl.where(" in code
    assert "propagate_nan=tl.PropagateNan.ALL" in code          # NaN stays NaN
    for banned in ("libdevice", "tl.extra", "tanh(", "cosh(", "hypot(", "**", "pow(",
                   "math.", "atomic"):
        assert banned not in code, banned
    assert "Operations after CSE:" in text and "Kernel rules: tanh_exp, sech2_exp." in text


def test_triton_printer_refuses_libdevice_and_multiplies_powers():
    import sympy as sp

    from derive.printers import UnsupportedNode
    from derive.rules import Hypot
    from derive.printers import triton_code

    x, y = sp.symbols("x y", real=True)
    for node, name in ((sp.tanh(x), "tanh"), (sp.cosh(x), "cosh"), (Hypot(x, y), "Hypot"),
                       (sp.sinh(x), "sinh"), (x ** sp.Rational(1, 3), "Pow")):
        with pytest.raises(UnsupportedNode, match=name):
            triton_code(node)
    assert triton_code(x**2 / (x + y) ** 2) == "(x * x)/((x + y) * (x + y))"
    assert triton_code(sp.Piecewise((x, x < 0), (y, True))) == "tl.where((x < 0), x, y)"


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", FORMS)
def test_opcheck(name, device, kernels):
    """torch.library.opcheck of the form's two ops: schema, fake tensors, AOT dispatch."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=g).to(device)
    scalars = [torch.tensor(v, device=device) for v in (0.9, 0.2)[:len(R.params(name))]]
    w, b = torch.randn(4, generator=g).to(device), torch.randn(4, generator=g).to(device)
    ops = K.OPS[name]
    torch.library.opcheck(ops.forward_op, (x, *scalars, w, b))
    torch.library.opcheck(ops.forward_op, (x, *scalars, w, None))
    torch.library.opcheck(ops.backward_op, (torch.randn(3, 4, generator=g).to(device), x,
                                            *scalars, w))
