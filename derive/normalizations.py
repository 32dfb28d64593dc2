"""The normalizations the catalog derives from, as the procedure reads them.

Each is channel x's output, its statistics written with ``mean(...)`` / ``sum(...)`` over
the channels (inside them, x stands for every channel in turn); epsilon as in torch, no
affine parameters. ``explicit`` helpers give the whole vector for a concrete C.
"""
from __future__ import annotations

from functools import cache

import sympy as sp

from .statistics import Norm
from .symbols import p, parse

#: name -> the norm as text: what `dynorm derive` reads, and the catalog's inputs.
NORMS: dict[str, str] = {
    "rmsnorm": "x / sqrt(mean(x**2) + epsilon)",
    "layernorm": "(x - mean(x)) / sqrt(mean((x - mean(x))**2) + epsilon)",
    "pnorm": "x / (mean(abs(x)**p) + epsilon)**(1/p)",
    "scalenorm": "g * x / sqrt(sum(x**2))",
}

#: name -> (norm, values of its symbols): the members of a family the catalog derives.
INSTANCES: dict[str, tuple[str, dict]] = {
    "pnorm1": ("pnorm", {p: 1}),
    "pnorm4": ("pnorm", {p: 4}),
}


@cache
def definition(name: str) -> sp.Expr:
    """The norm called ``name`` (a key of NORMS or INSTANCES) as a SymPy expression."""
    if name in INSTANCES:
        base, values = INSTANCES[name]
        return definition(base).subs(values)
    return parse(NORMS[name])


# -- explicit vectors (concrete C) --------------------------------------------------------

def channels(n: int) -> list[sp.Symbol]:
    """Real symbols x0 .. x{n-1} for an explicit vector of n channels."""
    return list(sp.symbols(f"x0:{n}", real=True))


def _explicit(name: str, xs) -> sp.Matrix:
    return Norm(definition(name)).explicit(xs)


def mean(xs) -> sp.Expr:
    return sum(xs) / len(xs)


def rmsnorm_vector(xs) -> sp.Matrix:
    """RMSNorm of an explicit vector: x / sqrt(mean(x^2) + eps)."""
    return _explicit("rmsnorm", xs)


def rms(xs) -> sp.Expr:
    """sqrt(mean(x^2) + eps) of an explicit vector: x_0 / RMSNorm(x)_0."""
    return xs[0] / rmsnorm_vector(xs)[0]


def layernorm_vector(xs) -> sp.Matrix:
    """LayerNorm of an explicit vector: (x - mean) / sqrt(var + eps), population variance."""
    return _explicit("layernorm", xs)


def std(xs) -> sp.Expr:
    """sqrt(population variance + eps), as torch.nn.LayerNorm: (x_0 - mean) / LayerNorm(x)_0."""
    return (xs[0] - mean(xs)) / layernorm_vector(xs)[0]
