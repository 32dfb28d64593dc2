"""The canonical symbols of MATH.md section 1, each created once with its assumptions.

``ASSUMPTIONS`` is the single source: the export writes it, ``symbol(name)`` reads it,
and ``parse`` turns an exported string back into the same expression.
"""
from __future__ import annotations

import sympy as sp

from . import parser as _parser

#: name -> assumptions, exactly as the symbols are created (and exported).
ASSUMPTIONS: dict[str, dict[str, bool]] = {
    "x": {"real": True},          # channel i's input
    "x_k": {"real": True},        # another channel k != i
    "y": {"real": True},          # the norm's output for channel i
    "y_k": {"real": True},        # the norm's output for channel k
    "C": {"integer": True, "positive": True},   # number of channels
    "epsilon": {"nonnegative": True},           # the norm's eps
    "sigma": {"positive": True},  # RMS of the whole vector, eps included
    "S": {"nonnegative": True},   # sum of x_j^2 over j != i
    "beta": {"positive": True},   # DyISRU's parameter
    "alpha": {"positive": True},  # DyT's inner scale
    "gamma": {"positive": True},  # DyT's outer scale (the bound)
    "mu": {"real": True},         # LayerNorm's mean
    "s": {"positive": True},      # LayerNorm's standard deviation, eps included
    "m": {"real": True},          # mean of the channels other than i
    "Q": {"nonnegative": True},   # sum over j != i of (x_j - m)^2
    "shift": {"real": True},      # an input shift: Derf's inner shift, the layers' shift
    "R": {"nonnegative": True},   # sum over j != i of h(x_j), h >= 0 (a p-norm: |x_j|^p)
    "p": {"positive": True},      # the p-norm's exponent
    "g": {"positive": True},      # ScaleNorm's gain
}

_TABLE = {name: sp.Symbol(name, **a) for name, a in ASSUMPTIONS.items()}


def symbol(name: str) -> sp.Symbol:
    """The canonical symbol called ``name`` (KeyError for a name MATH.md does not fix)."""
    return _TABLE[name]


def parse(text: str) -> sp.Basic:
    """Parse text (an exported expression, a user's norm) over the canonical symbols.

    Never evaluates Python: see :mod:`derive.parser` for the whitelist. ParseError (a
    ValueError) names an unknown name or construct.
    """
    return _parser.parse(text, _TABLE)


x, x_k, y, y_k, C, epsilon, sigma, S, beta, alpha, gamma, mu, s, m, Q, shift, R, p, g = (
    _TABLE[n] for n in ASSUMPTIONS
)

# C >= 2 (LayerNorm's forms need C - 1 > 0): C = n + 1 with n a positive integer.
n = sp.Symbol("n", integer=True, positive=True)
C_AT_LEAST_2 = {C: n + 1}
# Variables of the ODE steps.
u = sp.Symbol("u", positive=True)     # a scaled variable on the positive branch: y / bound
v = sp.Symbol("v", positive=True)     # the integration variable, on the branch 0 < v < y
w = sp.Symbol("w", positive=True)     # |x - x0|, to look at one side of x0
t = sp.Symbol("t", positive=True)     # (x - x0) / k, when G(y) = k H(y / bound) is inverted
z = sp.Symbol("z", real=True)         # x - x0, the input measured from the form's shift
K = sp.Symbol("K", positive=True)     # the integration constant of the DyISRU family
