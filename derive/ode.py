"""The Riccati ODE of the derivative-space route, y' = (a^2 - y^2) / k with y(x0) = 0.

RMSNorm gives a^2 = C, k = C sigma, x0 = 0; LayerNorm a^2 = C - 1, k = C s, x0 = mu.
dsolve returns the coth branch and cannot take y(0) = 0 (MATH.md section 3), so the
equation is separated and integrated by the substitution y = a tanh(v), which covers
exactly the branch |y| < a where the initial condition lies; every step is checked.
"""
from __future__ import annotations

import sympy as sp

from .steps import Step, check, equal
from .symbols import v, x, y

Y = sp.Function("y")  # y as a function of x, in the ODE steps


def ode(rhs: sp.Expr) -> sp.Eq:
    """dy/dx = rhs, with the symbol y in rhs read as y(x)."""
    return sp.Eq(Y(x).diff(x), rhs.subs(y, Y(x)))


def rhs_of(eq: sp.Eq) -> sp.Expr:
    """The right-hand side of an ODE step, back in the symbol y."""
    return eq.rhs.subs(Y(x), y)


def separate(name: str, a2: sp.Expr, k: sp.Expr) -> Step:
    a = sp.sqrt(a2)
    integrand = (k / (a2 - y**2)).subs(y, a * sp.tanh(v)) * sp.diff(a * sp.tanh(v), v)
    return check(Step(
        name, sp.Eq(sp.Integral(k / (a2 - y**2), y), sp.Integral(1, x)),
        f"Separate variables; on the branch |y| < {a} that holds y = 0, the substitution "
        f"y = {a} tanh(v) turns the left integrand into the constant {k / a}.",
        (equal(f"dy {k}/({a2} - y^2) = {k / a} dv under y = {a} tanh(v)", integrand, k / a),),
    ))


def integrate(name: str, a2: sp.Expr, k: sp.Expr, x0: sp.Expr, frozen: sp.Eq) -> Step:
    a, c = sp.sqrt(a2), sp.Symbol("c", real=True)
    left, right = sp.integrate(k / a, v), x + c
    c0 = sp.solve(sp.Eq(left.subs(v, 0), right.subs(x, x0)), c)[0]   # y(x0) = 0 <=> v = 0
    sol = a * sp.tanh(sp.solve(sp.Eq(left, right.subs(c, c0)), v)[0])
    return check(Step(
        name, sp.Eq(Y(x), sol),
        f"Integrate both sides; y({x0}) = 0 fixes the constant; map back through "
        f"y = {a} tanh(v).",
        (equal("the solution satisfies the frozen ODE",
               sp.diff(sol, x), rhs_of(frozen).subs(y, sol)),
         equal(f"the solution satisfies y({x0}) = 0", sol.subs(x, x0), 0),
         equal("checkodesol confirms it", sp.checkodesol(frozen, sp.Eq(Y(x), sol))[1], 0)),
    ))
