"""Property tests: the generated layers compute the catalog's formulas, in every dtype, on
every CPU path, to the second order.

For each form (taken from the catalog at collection time), each (input dtype, parameter
dtype) pair, each device and each backend ("torch": op by op; "fused": the compiled
variants), hypothesis draws shapes, inputs up to the dtype's finite maximum, and parameters;
outputs, all gradients and all second derivatives (the double backward along a random
direction) are compared with the catalog's expressions evaluated by mpmath at 50 digits on
the values exactly as cast. The Triton path has the same tests in tests/test_kernels.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derive.testing import assert_matches
from tests import checks
from tests import strategies as S

#: float64 never fuses (numeric/backends.py): the fused path is tested on the others.
FUSED_PAIRS = [p for p in S.DTYPE_PAIRS if p[0] != torch.float64]
#: One shape on the fused path: torch.compile(dynamic=True) then compiles one variant per
#: dtype (a hit of the recompile limit fails the test rather than running uncompiled).
SHAPE = (3, 5)
#: Second order: mpmath evaluates every pair of derivatives, so fewer examples.
SECOND = settings(max_examples=min(settings().max_examples, 12))


@pytest.fixture
def fused():
    with checks.backend("fused"), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype,pdtype", S.DTYPE_PAIRS, ids=S.ids)
@pytest.mark.parametrize("name", S.FORMS)
def test_outputs_and_gradients_match_the_catalog(name, dtype, pdtype, device):
    """Hypothesis's draws (the sweeps over every value are the next test's, in float32)."""
    with checks.backend("torch"):
        assert_matches(checks.keywords(name), name, dtypes=[(dtype, pdtype)], device=device,
                       examples=settings().max_examples, bias_none=True, sweep=0)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("name", S.FORMS)
def test_every_binade_of_float32_matches_the_catalog(name, device):
    """derive.testing's sweep: every binade of float32 (both signs, the subnormals, the
    largest values) at one setting of the scalars, outputs and first derivatives."""
    with checks.backend("torch"):
        assert_matches(checks.keywords(name), name, dtypes=[(torch.float32, torch.float32)],
                       device=device, examples=1, bias_none=True, sweep=1)


@pytest.mark.filterwarnings("error:dynorm")
@pytest.mark.parametrize("dtype,pdtype", FUSED_PAIRS, ids=S.ids)
@pytest.mark.parametrize("name", S.FORMS)
def test_fused_outputs_and_gradients_match_the_catalog(name, dtype, pdtype, fused):
    @settings(max_examples=min(settings().max_examples, 20))
    @given(S.cases(name, dtype, pdtype, shape=SHAPE))
    def check(case):
        checks.check_first(name, *case)

    check()


@st.composite
def directions(draw, case):
    """A direction v (x's shape and dtype, each scalar's, weight's) for the double backward."""
    x, scalars, w, _, _ = case
    def like(t):
        n = math.prod(t.shape)
        data = draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n))
        return torch.tensor(data, dtype=torch.float64).reshape(t.shape).to(t.dtype).to(t.device)
    return [like(t) for t in (x, *scalars, w)]


@st.composite
def second_order_cases(draw, name, dtype, pdtype, device="cpu", shape=None):
    case = draw(S.cases(name, dtype, pdtype, device, shape))
    return case, draw(directions(case))


@pytest.mark.parametrize("backend", ["torch", "fused"])
@pytest.mark.parametrize("dtype,pdtype", S.DTYPE_PAIRS, ids=S.ids)
@pytest.mark.parametrize("name", S.FORMS)
def test_second_derivatives_match_the_catalog(name, dtype, pdtype, backend):
    """The first backward on ``backend``, the second op by op (printed second derivatives)."""
    if backend == "fused" and dtype == torch.float64:
        pytest.skip("float64 never fuses")

    @SECOND
    @given(second_order_cases(name, dtype, pdtype, shape=SHAPE if backend == "fused" else None))
    def check(args):
        case, v = args
        with checks.backend(backend):
            checks.check_second(name, *case, v)

    check()


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", S.DTYPES, ids=S.ids)
@pytest.mark.parametrize("name", S.FORMS)
def test_special_values(name, dtype, device):
    """+-inf saturate to the bound with zero gradient; NaN stays in its own element only."""
    with checks.backend("torch"):
        checks.special_values(name, dtype, device)
