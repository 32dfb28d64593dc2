"""Obligations that tie a general-C result to Matrix.jacobian of explicit vectors."""
from __future__ import annotations

import sympy as sp

from . import norms
from .steps import Obligation, equal

#: Stands for the norm's scale sqrt(...) of an explicit vector (see jacobian_obligations).
_r = sp.Symbol("r", positive=True)


def jacobian_obligations(vector, scale, entry, diagonal: bool, sizes) -> list[Obligation]:
    """For each C in ``sizes``: the general entries equal Matrix.jacobian, exactly.

    ``vector(xs)`` is the explicit norm, ``scale(xs)`` its sigma (or s) = sqrt(base), and
    ``entry(xs, i, j, scale)`` the general-C formula for dy_i/dx_j. Both sides are compared
    with sqrt(base) replaced by a free positive r: a stronger claim (it holds for every r,
    so also for r = sqrt(base)) that leaves a polynomial identity SymPy expands at once.
    """
    out = []
    for n in sizes:
        xs = norms.channels(n)
        base = scale(xs) ** 2
        jac = vector(xs).jacobian(xs).subs(base, _r**2)
        idx = [(i, j) for i in range(n) for j in range(n) if (i == j) == diagonal]
        out.append(equal(
            f"C = {n}: the {'diagonal' if diagonal else 'off-diagonal'} entries equal "
            "Matrix.jacobian of the explicit vector",
            sp.Matrix([jac[i, j] for i, j in idx]),
            sp.Matrix([entry(xs, i, j, _r) for i, j in idx])))
    return out
