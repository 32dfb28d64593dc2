"""Hypothesis strategies shared by the property tests: the dtype grid, values up to each
dtype's finite maximum, and whole cases (x, scalars, weight, bias, upstream gradient), as
derive.testing draws them; the devices as pytest parameters."""
from __future__ import annotations

import pytest

from derive import testing as T
from derive.testing import DTYPE_PAIRS, SCALAR_RANGES, values  # noqa: F401
from tests import reference as R

FORMS = tuple(R.FORMS)
DTYPES = list(T.DTYPES)
#: The devices every test of values and gradients runs on, the one list: cuda carries the
#: gpu marker (conftest.py skips it where there is no CUDA device).
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def ids(d) -> str:
    return str(d).replace("torch.", "")


def cases(name, dtype, pdtype, device="cpu", shape=None, elements=None):
    """(x, scalars, weight, bias or None, upstream gradient) for the form ``name``; a random
    small shape unless ``shape`` is given (the fused path compiles one variant per shape's
    rank and dtype)."""
    return T.cases(name, dtype, pdtype, device, shape, elements)
