"""Hypothesis strategies shared by the property tests: the dtype grid, values up to each
dtype's finite maximum, and whole cases (x, scalars, weight, bias, upstream gradient)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

from tests import reference as R

FORMS = tuple(R.FORMS)
#: (input dtype, parameter dtype): same dtype, and float32 parameters under mixed precision.
DTYPE_PAIRS = [(torch.float64, torch.float64), (torch.float32, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
               (torch.float16, torch.float16), (torch.float16, torch.float32)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
SCALAR_RANGES = {"alpha": (1e-3, 10.0), "beta": (1e-3, 1e4), "shift": (-10.0, 10.0)}


def ids(d) -> str:
    return str(d).replace("torch.", "")


def values(dtype, bend: float = 8.0):
    """Inputs: where the S-curve bends, anywhere in the finite range, and the ends."""
    big = torch.finfo(dtype).max
    return st.one_of(st.floats(-bend, bend), st.floats(-big, big),
                     st.sampled_from([0.0, big, -big, 1e4, -1e4]))


def _tensor(draw, elements, shape, dtype, device):
    n = math.prod(shape)
    data = draw(st.lists(elements, min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float64).reshape(shape).to(dtype).to(device)


@st.composite
def cases(draw, name, dtype, pdtype, device="cpu", shape=None, elements=None):
    """(x, scalars, weight, bias or None, upstream gradient); a random small shape unless
    ``shape`` is given (the fused path compiles one variant per shape's rank and dtype)."""
    if shape is None:
        shape = (*draw(st.lists(st.integers(1, 3), max_size=2)), draw(st.integers(1, 6)))
    C = shape[-1]
    x = _tensor(draw, elements or values(dtype), shape, dtype, device)
    scalars = [torch.tensor(draw(st.floats(*SCALAR_RANGES[p.name])), dtype=pdtype, device=device)
               for p in R.params(name)]
    w = _tensor(draw, st.floats(-3, 3), (C,), pdtype, device)
    b = _tensor(draw, st.floats(-3, 3), (C,), pdtype, device) if draw(st.booleans()) else None
    g = _tensor(draw, st.floats(-2, 2), shape, dtype, device)
    return x, scalars, w, b, g
