"""An autonomous ODE dy/dx = F(y) with y(x0) = 0, solved by separation of variables.

int_0^y dv / F(v) = x - x0. SymPy's dsolve picks the coth branch of the Riccati equation
and cannot take y(0) = 0 (the constant that selects tanh is complex), so the integral is
taken here, on the branch that holds y = 0:

- F even (the norms' diagonal depends on |y| or y^2): the solution is odd about x0, so
  integrate on 0 <= y < a, a the positive root of F, and extend by oddness;
- with v = a u the integrand is a constant times a rational function of u alone, which
  SymPy integrates in logarithms and arctangents; a log's argument negative on (0, 1) is
  negated (same derivative), and log(1 + u) - log(1 - u) is read as 2 atanh(u);
- where the relation G(y) = x - x0 solves for y, the closed form is checked by
  substitution into the ODE on both sides of x0; otherwise the implicit relation is
  kept, checked by differentiation. An integrand SymPy cannot integrate stays an Integral.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .steps import Step, check, equal
from .symbols import t, u, v, w, x, y

Y = sp.Function("y")  # y as a function of x, in the ODE steps
_HALF = sp.Rational(1, 2)


def ode(rhs: sp.Expr) -> sp.Eq:
    """dy/dx = rhs, with the symbol y in rhs read as y(x)."""
    return sp.Eq(Y(x).diff(x), rhs.subs(y, Y(x)))


def rhs_of(eq: sp.Eq) -> sp.Expr:
    """The right-hand side of an ODE step, back in the symbol y."""
    return eq.rhs.subs(Y(x), y)


@dataclass(frozen=True)
class Separated:
    """int_0^y dv / F(v) = G(y) on the branch 0 <= y < bound (all y if not ``even``)."""

    F: sp.Expr
    G: sp.Expr
    bound: sp.Expr | None
    even: bool
    k: sp.Expr = sp.S.One        # G(y) = k H(y / bound) where H is known
    H: sp.Expr | None = None     # in u, numeric coefficients, H(0) = 0

    @property
    def on_branch(self) -> sp.Expr:
        """G with y positive (where |y| = y), for the claims about it."""
        return self.G.subs(y, v) if self.even else self.G


def _is_even(F: sp.Expr) -> bool:
    return sp.simplify(F.subs(y, -y) - F) == 0


def _bound(Fv: sp.Expr):
    roots = [r for r in sp.solve(Fv, v) if r.is_positive is not False and not r.has(sp.I)]
    return roots[0] if len(roots) == 1 else None


def _real_logs(H: sp.Expr) -> sp.Expr:
    """log(arg) -> log(-arg) where arg < 0 on (0, 1): the same derivative, real there."""
    def real(a):
        negative = a.subs(u, _HALF).is_negative
        if negative is None:    # SymPy cannot tell: no closed form is claimed
            return _Undecided(a)
        return sp.log(-a) if negative else sp.log(a)
    return H.replace(sp.log, real)


class _Undecided(sp.Function):
    """A log whose argument's sign on (0, 1) SymPy cannot decide (_real_logs)."""


def _atanh(H: sp.Expr) -> sp.Expr:
    """c log(1 + t) - c log(1 - t) -> 2 c atanh(t)."""
    logs, rest = {}, []
    for term in sp.Add.make_args(sp.expand(H)):
        c, f = term.as_independent(u, as_Add=False)
        if isinstance(f, sp.log):
            logs[f.args[0]] = logs.get(f.args[0], 0) + c
        else:
            rest.append(term)
    for arg in list(logs):
        t = arg - 1
        if arg in logs and 1 - t in logs and sp.simplify(logs[1 - t] + logs[arg]) == 0:
            rest.append(2 * logs.pop(arg) * sp.atanh(t))
            logs.pop(1 - t)
    return sp.Add(*rest, *(c * sp.log(a) for a, c in logs.items()))


def antiderivative(F: sp.Expr) -> Separated:
    """G(y) = int_0^y dv / F(v): closed where SymPy integrates it, else an Integral.

    With v = a u (a the bound, or 1 where F has no root: then F never vanishes on the
    branch), 1/F is a constant k times r(u); r a rational function with numeric
    coefficients is integrated, anything else stays an Integral.
    """
    even = _is_even(F)
    a = _bound(F.subs(y, v)) if even else None
    scale = sp.S.One if a is None else a
    k, r = sp.factor(scale / F.subs(y, scale * u)).as_independent(u, as_Add=False)
    if k.could_extract_minus_sign():
        k, r = -k, -r
    H = _integral(r) if r.free_symbols <= {u} and r.is_rational_function(u) else None
    if H is not None and a is not None:  # logs real on the branch 0 < u < 1
        H = _atanh(_real_logs(H))
    if H is not None and not H.has(_Undecided):
        H = H - H.subs(u, 0)
        G = sp.factor_terms(sp.expand(k * H.subs(u, y / scale)))
        return Separated(F, G, a, even, k, H)
    return Separated(F, sp.Integral(1 / F.subs(y, v), (v, 0, y)), a, even)


def _integral(r: sp.Expr) -> sp.Expr | None:
    """int r du in elementary functions, or None: a sum over the roots of a polynomial
    (RootSum: 1/(1 - u^7) has roots SymPy writes in no radicals) is no closed form here."""
    H = sp.integrate(r, u)
    return None if H.has(sp.RootSum, sp.Integral) else H


def separate(F: sp.Expr, x0: sp.Expr, name: str = "separate_variables") -> tuple[Step, Separated]:
    sep = antiderivative(F)
    where = (f"on the branch 0 <= y < {sep.bound} (F is even, so the solution is odd about "
             f"x = {x0})" if sep.even and sep.bound is not None else "")
    G = sep.on_branch
    yy = v if sep.even else y
    return check(Step(
        name, sp.Eq(sp.Integral(1 / F, y), sp.Integral(1, x)),
        f"Separate variables and integrate from y = 0 {where}: int_0^y dv / F(v) = "
        f"{sp.sstr(sep.G)} = {sp.sstr(x - x0)}.",
        (equal("the antiderivative's derivative is 1/F(y)",
               sp.diff(G, yy), 1 / F.subs(y, yy)),
         equal("it vanishes at y = 0", sep.G.subs(y, 0), 0)),
    )), sep


def _branch_solution(sep: Separated, x0: sp.Expr):
    """y(x) for x >= x0 from G(y) = x - x0, or None where it does not solve.

    G = k H(y / bound): solve H(u) = t for u (numeric coefficients only), then
    y = bound u((x - x0) / k).
    """
    if sep.H is None:
        return None
    try:
        sols = sp.solve(sp.Eq(sep.H, t), u, check=False)  # checked by substitution below
    except NotImplementedError:
        return None
    sols = [q for q in sols if q.subs(t, 0) == 0]
    if len(sols) != 1:
        return None
    scale = sp.S.One if sep.bound is None else sep.bound
    return sp.factor_terms(scale * sols[0].subs(t, (x - x0) / sep.k))


def _odd_extension(f: sp.Expr, x0: sp.Expr) -> sp.Expr:
    if sp.simplify(f.subs(x, x0 - w) + f.subs(x, x0 + w)) == 0:
        return f
    return sp.sign(x - x0) * f.subs(x, x0 + sp.Abs(x - x0))


def _satisfies(sep: Separated, sol: sp.Expr, x0: sp.Expr) -> list:
    """dy/dx = F(y), by substitution; for an even F on each side of x0, where y has one
    sign (|y| = y for x > x0, |y| = -y for x < x0: the branch it was solved on)."""
    if not sep.even:
        return [equal("it satisfies the frozen ODE", sp.diff(sol, x), sep.F.subs(y, sol))]
    F = sep.F.subs(y, v)  # F on 0 < y, even: F(y) = F(-y)
    return [equal(f"it satisfies the frozen ODE for x {side} {x0}, where {sign}y > 0",
                  sp.diff(sol, x).subs(x, at), F.subs(v, k * sol.subs(x, at)))
            for side, sign, at, k in ((">", "", x0 + w, 1), ("<", "-", x0 - w, -1))]


def _name(x0) -> str:
    return "integrate_with_y0" if x0 == 0 else f"integrate_with_y_{x0}"


def solve(sep: Separated, x0: sp.Expr) -> tuple[Step, sp.Expr | None]:
    """The closed form y(x) with y(x0) = 0 (checked by substitution), or the implicit
    relation G(y) = x - x0 (checked by differentiation) and None."""
    f = _branch_solution(sep, x0)
    if f is not None:
        sol = _odd_extension(f, x0) if sep.even else f
        return check(Step(
            _name(x0), sp.Eq(Y(x), sol),
            f"Solve G(y) = {sp.sstr(x - x0)} for y on the branch through y({x0}) = 0"
            + (f", extended to x < {x0} by oddness." if sep.even else "."),
            (*_satisfies(sep, sol, x0),
             equal(f"it satisfies y({x0}) = 0", sol.subs(x, x0), 0)),
        )), sol
    relation = sp.Eq(sep.G, x - x0)
    G = sep.on_branch
    yy = v if sep.even else y
    return check(Step(
        "implicit_relation", relation,
        f"G(y) = {sp.sstr(x - x0)} does not solve for y in closed form: the solution is "
        "this implicit relation.",
        (equal(f"differentiating G(y(x)) = {sp.sstr(x - x0)} in x gives the ODE: "
               "G'(y) F(y) = 1",
               sp.diff(G, yy) * sep.F.subs(y, yy), 1),
         equal(f"it holds at (x, y) = ({x0}, 0)", sep.G.subs(y, 0), 0)),
    )), None
