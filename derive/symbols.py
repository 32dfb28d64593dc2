"""The canonical symbols of MATH.md section 1, each created once with its assumptions.

``ASSUMPTIONS`` is the single source: the export writes it, ``symbol(name)`` reads it,
and ``parse`` turns an exported string back into the same expression. ``MEANINGS`` says
what each symbol stands for, helpers included: the legend of a printed derivation.
"""
from __future__ import annotations

import sympy as sp

#: name -> assumptions, exactly as the symbols are created (and exported).
ASSUMPTIONS: dict[str, dict[str, bool]] = {
    "x": {"real": True},
    "x_k": {"real": True},
    "y": {"real": True},
    "y_k": {"real": True},
    "C": {"integer": True, "positive": True},
    "epsilon": {"nonnegative": True},
    "sigma": {"positive": True},
    "S": {"nonnegative": True},
    "beta": {"positive": True},
    "alpha": {"positive": True},
    "gamma": {"positive": True},
    "mu": {"real": True},
    "s": {"positive": True},
    "m": {"real": True},
    "Q": {"nonnegative": True},
    "shift": {"real": True},
}

#: name -> what the symbol stands for, for every symbol a derivation prints (the legend).
MEANINGS: dict[str, str] = {
    "x": "channel i's input",
    "x_k": "the input of another channel k != i",
    "y": "the norm's output for channel i",
    "y_k": "the norm's output for channel k",
    "C": "the number of channels",
    "epsilon": "the norm's eps, added under the square root",
    "sigma": "RMSNorm's root mean square of the whole vector, eps included",
    "S": "the sum of x_j^2 over the channels j != i",
    "beta": "DyISRU's parameter: beta + x^2 under the square root",
    "alpha": "DyT's inner scale: tanh(alpha x)",
    "gamma": "DyT's outer scale, the bound of its output",
    "mu": "LayerNorm's mean of the whole vector",
    "s": "LayerNorm's standard deviation of the whole vector, eps included",
    "m": "the mean of the channels j != i",
    "Q": "the sum over the channels j != i of (x_j - m)^2",
    "shift": "an input shift: Derf's inner shift, erf(alpha x + shift)",
    "R": "RMSNorm: the sum of x_j^2 over the channels other than i and k",
    "T": "LayerNorm: the sum of x_j over the channels other than i and k",
    "U": "LayerNorm: the sum of x_j^2 over the channels other than i and k",
    "n": "C - 1, a positive integer (the LayerNorm forms need C >= 2)",
    "u": "an integration variable",
    "v": "an integration variable",
    "K": "the integration constant of the DyISRU family",
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

# Helpers of the general-C Jacobian derivations and of the ODE steps (MEANINGS says what).
R = sp.Symbol("R", nonnegative=True)
T = sp.Symbol("T", real=True)
U = sp.Symbol("U", nonnegative=True)
# C >= 2 (LayerNorm's forms need C - 1 > 0): C = n + 1 with n a positive integer.
n = sp.Symbol("n", integer=True, positive=True)
C_AT_LEAST_2 = {C: n + 1}
u = sp.Symbol("u", real=True)
v = sp.Symbol("v", real=True)
K = sp.Symbol("K", positive=True)
