"""RMSNorm and LayerNorm, with epsilon and without affine parameters, in two forms.

- explicit: the whole vector for a concrete C, as a SymPy Matrix (for Matrix.jacobian);
- representative channel: channel i's output for general C, the other channels folded
  into symbols (MATH.md sections 1, 2, 4, 5).
"""
from __future__ import annotations

import sympy as sp

from .symbols import C, Q, R, S, T, U, epsilon, m, x, x_k


def channels(n: int) -> list[sp.Symbol]:
    """Real symbols x0 .. x{n-1} for an explicit vector of n channels."""
    return list(sp.symbols(f"x0:{n}", real=True))


def rms(xs) -> sp.Expr:
    """sqrt(mean(x^2) + eps) of an explicit vector."""
    return sp.sqrt(sum(xi**2 for xi in xs) / len(xs) + epsilon)


def rmsnorm_vector(xs) -> sp.Matrix:
    """RMSNorm of an explicit vector: x / sqrt(mean(x^2) + eps)."""
    r = rms(xs)
    return sp.Matrix([xi / r for xi in xs])


def mean(xs) -> sp.Expr:
    return sum(xs) / len(xs)


def std(xs) -> sp.Expr:
    """sqrt(population variance + eps), as torch.nn.LayerNorm."""
    mu = mean(xs)
    return sp.sqrt(sum((xi - mu) ** 2 for xi in xs) / len(xs) + epsilon)


def layernorm_vector(xs) -> sp.Matrix:
    """LayerNorm of an explicit vector: (x - mean) / sqrt(var + eps)."""
    mu, sd = mean(xs), std(xs)
    return sp.Matrix([(xi - mu) / sd for xi in xs])


# -- representative channel, general C ------------------------------------------------

def rms_split() -> sp.Expr:
    """RMS with channels i and k explicit and R the sum of squares of the other C - 2."""
    return sp.sqrt((x**2 + x_k**2 + R) / C + epsilon)


def rmsnorm_channel() -> sp.Expr:
    """RMSNorm(x)_i with S = sum_{j != i} x_j^2."""
    return x / sp.sqrt((x**2 + S) / C + epsilon)


def layernorm_split() -> tuple[sp.Expr, sp.Expr]:
    """(mu, s) with channels i and k explicit; T and U: sum and sum of squares of the rest."""
    mu = (x + x_k + T) / C
    var = (x**2 + x_k**2 + U) / C - mu**2
    return mu, sp.sqrt(var + epsilon)


def layernorm_channel_parts() -> tuple[sp.Expr, sp.Expr]:
    """(mu, s) with m the mean and Q the squared deviations of the other channels.

    mu = (x + (C-1) m) / C and sum_{j != i} (x_j - mu)^2 = Q + (C-1) (m - mu)^2.
    """
    mu = (x + (C - 1) * m) / C
    var = ((x - mu) ** 2 + Q + (C - 1) * (m - mu) ** 2) / C
    return mu, sp.sqrt(var + epsilon)


def layernorm_channel() -> sp.Expr:
    """LayerNorm(x)_i in x, m, Q, C, epsilon: (x - mu)/s with the parts above expanded,
    x - mu = (C-1)(x-m)/C and C var = (C-1)(x-m)^2/C + Q (checked in layernorm.py)."""
    return (C - 1) * (x - m) / (C * sp.sqrt(((C - 1) * (x - m) ** 2 / C + Q) / C + epsilon))
