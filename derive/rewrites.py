"""Numerical-safety rewrites: named rules, each with an obligation SymPy proves.

A rule maps an expression to an equal one that stays accurate in floating point where the
literal form fails. Each rule proves itself (``rule.proof()`` returns obligations that
``check`` runs) and every application is checked too: the rewritten expression, with its
temporaries substituted back, must reduce to the original exactly.

- ``sech2``: d/du tanh(u) = 1 - tanh(u)^2 cancels to 0 in float32 once tanh(u) rounds to
  1 (|u| > 9), while the true value 1/cosh(u)^2 is still about 1e-8; print 1/cosh(u)^2.
- ``isru_hypot``: z / sqrt(a + z^2) overflows (z^2 = inf, then z/inf or inf/inf) for
  |z| > 1.8e19 in float32, i.e. for large bfloat16 inputs. Write everything in
  h = hypot(sqrt(a), z), q = z/h in [-1, 1], p = sqrt(a)/h in (0, 1]; hypot does not
  overflow, q and p are bounded, and 1 - q^2 is written p^2 (no cancellation near |q| = 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .steps import Obligation, equal


class Hypot(sp.Function):
    """hypot(a, b) = sqrt(a^2 + b^2), computed without overflow (torch.hypot)."""

    nargs = 2

    def _eval_rewrite_as_sqrt(self, a, b, **kwargs):
        return sp.sqrt(a**2 + b**2)

    def fdiff(self, argindex=1):
        return self.args[argindex - 1] / self


class ChannelSum(sp.Function):
    """Sum over the channel (last) dimension, keeping it: torch.sum(e, -1, keepdim=True)."""

    nargs = 1


@dataclass(frozen=True)
class Rewritten:
    """An expression after a rule, with the temporaries it introduced (printed first)."""

    expr: sp.Expr
    defs: dict[sp.Symbol, sp.Expr] = field(default_factory=dict)

    def unfolded(self) -> sp.Expr:
        """The expression with the temporaries substituted back (for the obligation)."""
        e = self.expr
        for sym, value in reversed(list(self.defs.items())):
            e = e.subs(sym, value)
        return e.rewrite(sp.sqrt) if e.has(Hypot) else e


@dataclass(frozen=True)
class Rule:
    name: str
    fixes: str
    apply: Callable[..., Rewritten]
    proof: Callable[[], list[Obligation]]


# -- sech2 --------------------------------------------------------------------------------

def _is_one_minus_tanh2(e) -> bool:
    return (e.is_Add and len(e.args) == 2 and sp.S.One in e.args
            and any(t.is_Mul and t.args[0] == -1 and t.args[1].is_Pow
                    and t.args[1].exp == 2 and t.args[1].base.func == sp.tanh
                    for t in e.args))


def _tanh_arg(e):
    t = next(a for a in e.args if a != sp.S.One)
    return t.args[1].base.args[0]


def apply_sech2(expr: sp.Expr) -> Rewritten:
    return Rewritten(expr.replace(_is_one_minus_tanh2, lambda e: sp.cosh(_tanh_arg(e)) ** -2))


def _proof_sech2():
    u = sp.Symbol("u", real=True)
    return [equal("1 - tanh(u)^2 = 1/cosh(u)^2", 1 - sp.tanh(u) ** 2, sp.cosh(u) ** -2),
            equal("the rule rewrites d/du tanh(u)", apply_sech2(sp.diff(sp.tanh(u), u)).expr,
                  sp.cosh(u) ** -2)]


# -- isru_hypot ---------------------------------------------------------------------------

H = sp.Symbol("h", positive=True)
Q = sp.Symbol("q", real=True)
P = sp.Symbol("p", positive=True)


def apply_isru_hypot(expr: sp.Expr, z: sp.Expr, var: sp.Symbol, a: sp.Symbol) -> Rewritten:
    """Write expr(var) in h = hypot(sqrt(a), z), q = z/h, p = sqrt(a)/h (z linear in var)."""
    e = expr.subs(a + z**2, H**2)
    e = e.subs(var, sp.solve(sp.Eq(z, Q * H), var)[0]).subs(a, P**2 * H**2)
    e = sp.expand(sp.powsimp(sp.expand(e)))
    e = sp.factor(sp.expand(e.subs(Q**2, 1 - P**2)))
    defs = {H: Hypot(sp.sqrt(a), z), Q: z / H, P: sp.sqrt(a) / H}
    return Rewritten(e, {s: v for s, v in defs.items() if s == H or e.has(s)})


def _proof_isru_hypot():
    z = sp.Symbol("z", real=True)
    a = sp.Symbol("a", positive=True)
    f = z / sp.sqrt(a + z**2)
    out = []
    for what, e in (("z/sqrt(a + z^2)", f), ("its z-derivative", sp.diff(f, z)),
                    ("its a-derivative", sp.diff(f, a))):
        r = apply_isru_hypot(e, z, z, a)
        out.append(equal(f"{what} = its form in h, q, p", r.unfolded(), e))
    return out


RULES: dict[str, Rule] = {
    "sech2": Rule("sech2", "1 - tanh(u)^2 cancels to 0 in float32 for |u| > 9",
                  apply_sech2, _proof_sech2),
    "isru_hypot": Rule("isru_hypot", "z^2 overflows for |z| > 1.8e19 in float32",
                       apply_isru_hypot, _proof_isru_hypot),
}


def application_obligation(rule: str, before: sp.Expr, after: Rewritten) -> Obligation:
    """The check of one application: unfolded, the rewritten expression is the original."""
    return equal(f"{rule} preserves the expression", after.unfolded(), before)
