"""Each torch op the generated op-by-op code calls, and the generated modules' own hypot,
at its compute dtypes' extremes, on every device present, against mpmath.

The op-by-op code (numeric/generated/torch_forms.py and norm_vjps.py) computes in float32 or float64
with torch's own ops, so it is exact over the whole range only where each op is on that
device. torch.hypot in float64 on CUDA gave DyISRU's output 0 for x = -1.8e308 (hypot next to
the largest double); the generated code's ``hypot`` runs torch.hypot on a CPU only and
``hypot_minmax`` elsewhere. This test checks every op, and both, on every device, so a
device's op that is wrong at the extremes fails here rather than in a model.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import mpmath
import pytest
import torch

from derive.testing import assert_close
from numeric.generated import torch_forms as G
from tests import strategies as S

GENERATED = Path(__file__).resolve().parent.parent / "numeric" / "generated"

#: op -> (arity, its value in mpmath). Every op the op-by-op code calls is here or in EXACT.
REFERENCE = {
    "abs": (1, abs),
    "sqrt": (1, lambda a: mpmath.sqrt(a) if a >= 0 else mpmath.nan),
    "exp": (1, mpmath.exp),
    "expm1": (1, mpmath.expm1),
    "erf": (1, mpmath.erf),
    "tanh": (1, mpmath.tanh),
    "cosh": (1, mpmath.cosh),
    "square": (1, lambda a: a * a),
    "sigmoid": (1, lambda a: 1 / (1 + mpmath.exp(-a))),
    "copysign": (2, lambda a, b: abs(a) if mpmath.sign(b) >= 0 and not _negzero(b) else -abs(a)),
    "maximum": (2, max),
    "minimum": (2, min),
    "hypot": (2, mpmath.hypot),
    "addcmul": (3, lambda a, b, c: a + b * c),
}
#: The generated modules' own functions, checked the same way (name -> the torch op's row).
GENERATED_OPS = {"hypot": G.hypot, "hypot_minmax": G.hypot_minmax}
#: op -> the size of the terms it adds, where it adds (the result of a cancelling sum is
#: judged by the precision of its terms, as everywhere in derive.testing); else the result.
SCALE = {"addcmul": lambda a, b, c: abs(a) + abs(b * c)}
#: op -> which points are in its domain as the generated code calls it: addcmul(bias, weight,
#: f) with |f| <= 1 (every form's f is bounded by 1), so weight * f never overflows (torch's
#: addcmul without FMA, on CPUs without AVX2, gives -inf for 1.7e38 + 3 * -1.7e38).
DOMAIN = {"addcmul": lambda a, b, c: abs(c) <= 1}
#: Ops that select, reduce or build rather than compute a value here: what they return is
#: one of their inputs (where, nan_to_num, amax), a sum checked with the norms against
#: torch's own (tests/test_norms_reference.py), or no arithmetic at all.
EXACT = {"where", "nan_to_num", "amax", "sum", "as_tensor", "finfo"}


def _negzero(b) -> bool:
    return b == 0 and mpmath.sign(b) == 0 and str(b).startswith("-")


def _ops() -> set[str]:
    """The torch ops the op-by-op functions call (the fused variants are compiled code)."""
    ops = set()
    for path in ("torch_forms.py", "norm_vjps.py"):
        for fn in re.split(r"\ndef ", (GENERATED / path).read_text())[1:]:
            if "_fused_" not in fn.split("(")[0]:
                ops |= set(re.findall(r"torch\.(\w+)\(", fn))
    return ops


def test_every_op_of_the_generated_code_is_checked():
    assert _ops() <= set(REFERENCE) | EXACT, sorted(_ops() - set(REFERENCE) - EXACT)


def _extremes(dtype) -> list[float]:
    f = torch.finfo(dtype)
    tiny_sub = float(torch.nextafter(torch.tensor(0.0, dtype=dtype),
                                     torch.tensor(1.0, dtype=dtype)))
    pos = [0.0, tiny_sub, f.tiny, f.eps, 0.5, 1.0, 3.0, 40.0, f.max ** 0.5, f.max / 2, f.max]
    return pos + [-v for v in pos[1:]]


CALLS = {**{op: getattr(torch, op) for op in REFERENCE},
         **{f"generated {name}": fn for name, fn in GENERATED_OPS.items()}}


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=S.ids)
@pytest.mark.parametrize("op", sorted(CALLS))
def test_op_at_the_extremes(op, dtype, device):
    arity, ref = REFERENCE[op.split()[-1].replace("hypot_minmax", "hypot")]
    inside = DOMAIN.get(op, lambda *p: True)
    points = [p for p in itertools.product(_extremes(dtype), repeat=arity) if inside(*p)]
    args = [torch.tensor(col, dtype=dtype, device=device) for col in zip(*points)]
    got = CALLS[op](*args)
    scale = SCALE.get(op, lambda *p: abs(ref(*p)))
    with mpmath.workdps(60):
        exact = [[mpmath.mpf(v) for v in p] for p in points]
        want = [float(ref(*p)) for p in exact]
        size = [float(scale(*p)) for p in exact]
    assert_close(got, torch.tensor(want, dtype=torch.float64), dtype=dtype,
                 scale=torch.tensor(size, dtype=torch.float64),
                 inputs={f"arg{i}": a for i, a in enumerate(args)},
                 what=f"{op} ({dtype}, {device})")
