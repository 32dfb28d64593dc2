"""The canonical symbols of MATH.md section 1, each created once with its assumptions.

``ASSUMPTIONS`` is the single source: the export writes it, ``symbol(name)`` reads it,
and ``parse`` turns an exported string back into the same expression.
"""
from __future__ import annotations

import sympy as sp

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
}

_TABLE = {name: sp.Symbol(name, **a) for name, a in ASSUMPTIONS.items()}


def symbol(name: str) -> sp.Symbol:
    """The canonical symbol called ``name`` (KeyError for a name MATH.md does not fix)."""
    return _TABLE[name]


def parse(text: str) -> sp.Expr:
    """Parse an exported expression string back with the canonical symbols."""
    return sp.sympify(text, locals=dict(_TABLE))


x, x_k, y, y_k, C, epsilon, sigma, S, beta, alpha, gamma, mu, s, m, Q, shift = (
    _TABLE[n] for n in ASSUMPTIONS
)

# Helpers of the general-C Jacobian derivations: the channels other than i and k.
R = sp.Symbol("R", nonnegative=True)  # RMSNorm: sum of their squares
T = sp.Symbol("T", real=True)         # LayerNorm: their sum
U = sp.Symbol("U", nonnegative=True)  # LayerNorm: sum of their squares
# C >= 2 (LayerNorm's forms need C - 1 > 0): C = n + 1 with n a positive integer.
n = sp.Symbol("n", integer=True, positive=True)
C_AT_LEAST_2 = {C: n + 1}
# Integration variables of the ODE steps.
u = sp.Symbol("u", real=True)
v = sp.Symbol("v", real=True)
K = sp.Symbol("K", positive=True)     # the integration constant of the DyISRU family
