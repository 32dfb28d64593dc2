"""The canonical symbols, each created once with its assumptions.

``ASSUMPTIONS`` is the single source: the export writes it, ``symbol(name)`` reads it,
and ``parse`` turns an exported string back into the same expression (and reads a user's
norm). ``MEANINGS`` says what each symbol stands for, helpers included: the legend of a
printed derivation.
"""
from __future__ import annotations

import sympy as sp

from . import parser as _parser

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
    "R": {"nonnegative": True},
    "p": {"positive": True},
    "g": {"positive": True},
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
    "R": "the sum over the channels j != i of a statistic's summand h(x_j) (|x_j|^p for a p-norm)",
    "T": "the sum of a statistic's summand over the channels other than i and k",
    "T_1": "the sum of the first statistic's summand over the channels other than i and k",
    "T_2": "the sum of the second statistic's summand over the channels other than i and k",
    "p": "the p-norm's exponent",
    "g": "ScaleNorm's gain",
    "n": "C - 1, a positive integer (the LayerNorm forms need C >= 2)",
    "u": "a scaled variable on the positive branch: y divided by the bound",
    "v": "the integration variable, on the branch 0 < v < y",
    "w": "|x - x0|, one side of the form's centre x0",
    "t": "(x - x0)/k, where G(y) = k H(y/bound) is inverted",
    "z": "x - x0, the input measured from the form's shift",
    "K": "the integration constant of the DyISRU family",
}

_TABLE = {name: sp.Symbol(name, **a) for name, a in ASSUMPTIONS.items()}


def symbol(name: str) -> sp.Symbol:
    """The canonical symbol called ``name`` (KeyError for a name not in ASSUMPTIONS)."""
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
# The generated layers' symbols: y = weight * f + bias, and the gradient arriving at y.
weight, bias, grad = sp.symbols("weight bias grad", real=True)
