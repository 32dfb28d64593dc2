"""One procedure for any normalization: its Jacobian and its element-wise counterparts.

``counterparts(norm)`` runs one procedure on channel x's output of a per-token norm,
written with ``mean(...)`` / ``sum(...)`` over the channels:

1. the per-channel form: the other channels folded into constants (S, or m and Q, ...);
2. the general-C Jacobian: channels i and k written out, the other C - 2 folded into T,
   differentiated by the chain rule through the statistics and rewritten in y, y_k and
   the norm's scale (sigma, or s) and shift (mu); checked against Matrix.jacobian;
3. derivative space: keep the diagonal (decouple), freeze the statistics, and solve the
   autonomous ODE by separation (:mod:`derive.ode`); read off the parameters;
4. function space: the per-channel form with its constants promoted to one parameter beta.

Every step is a :class:`~derive.steps.Step` whose obligations are checked as it is made.
"""
from __future__ import annotations

from functools import cache, cached_property, wraps

import sympy as sp

from . import ode
from .statistics import Norm, ProcedureError, Split
from .steps import (Deadline, DerivationError, Step, abs_products as _abs_products, check,
                    equal)
from .symbols import (ASSUMPTIONS, C, C_AT_LEAST_2, alpha, beta, epsilon, gamma, mu, n, parse,
                      s, sigma, symbol, x, x_k, y, y_k, z)

__all__ = ["Counterparts", "ProcedureError", "counterparts"]

SIZES = (2, 3, 4)    # the concrete C checked against Matrix.jacobian and the explicit norm


def _channels(k: int) -> list[sp.Symbol]:
    return list(sp.symbols(f"x0:{k}", real=True))


def _free_bases(xs, *exprs) -> dict:
    """Bases of roots and denominators over two channels or more -> c * r, r positive.

    An identity that holds with each such base (a statistic's function: the scale)
    replaced by a free positive r holds for every r, so also at the base's value: a
    stronger claim, rational in the channels, that SymPy cancels at once instead of
    simplifying roots, and where a positive scale is positive. Bases equal up to a
    constant factor (B and 2 B) share their r; a base that factors into positive factors
    over two channels or more gets one r per factor, so that a denominator (eps + tau)^2
    next to a root of eps + tau is r^2 beside r (with a free symbol each the claim would
    be stronger than the identity, and false).
    """
    bases = set()
    for e in exprs:
        for pw in sp.Matrix(e).atoms(sp.Pow):
            if (not pw.exp.is_integer or pw.exp.is_negative) \
                    and len(pw.base.free_symbols & set(xs)) >= 2:
                bases.add(pw.base)
    split = {b: _positive_factors(b, xs) for b in bases}
    multi = lambda f: len(f.free_symbols & set(xs)) >= 2  # noqa: E731
    cores = sorted({f for _, fs in split.values() for f, _ in fs if multi(f)},
                   key=sp.default_sort_key)
    free = {core: sp.Symbol(f"r{k}", positive=True) for k, core in enumerate(cores)}
    return {b: c * sp.Mul(*((free[f] if multi(f) else f) ** k for f, k in fs))
            for b, (c, fs) in split.items()}


def _positive_factors(b: sp.Expr, xs) -> tuple[sp.Expr, list]:
    """b = c * prod f^k: (c, [(f, k)]), every f over two channels or more positive; or
    (c, [(core, 1)]) where one is not known to be. Powers of |x_j| are factored as powers
    of one positive generator (sqrt|x_j|^2 = |x_j|)."""
    gens, back = {}, {}
    for xj in xs:
        exps = [q.exp for q in b.atoms(sp.Pow) if q.base == sp.Abs(xj)] + [sp.S.One]
        d = sp.ilcm(1, *(sp.S(e).q for e in exps if sp.S(e).is_Rational))
        if d > 1 and b.has(sp.Abs(xj)):
            g = sp.Dummy(f"g{xj}", positive=True)
            gens[xj], back[g] = (g, d), sp.Abs(xj) ** sp.Rational(1, d)
    e = b
    for xj, (g, d) in gens.items():
        e = e.replace(lambda q: q.is_Pow and q.base == sp.Abs(xj), lambda q: g ** (q.exp * d))
        e = e.xreplace({sp.Abs(xj): g**d})
    c, core = sp.factor(e).as_coeff_Mul()
    fs = [(f.base, int(f.exp)) if f.is_Pow and f.exp.is_Integer and f.exp > 0 else (f, 1)
          for f in sp.Mul.make_args(core)]
    multi = [f for f, _ in fs if len(f.free_symbols & (set(xs) | set(back))) >= 2]
    if len(fs) > 1 or fs[0][1] > 1:
        if not all(f.is_positive for f in multi):
            fs = [(core, 1)]
    else:
        fs = [(core, 1)]
    return c, [(f.xreplace(back), k) for f, k in fs]


def _with_free_bases(e, bases: dict):
    return e.replace(lambda q: q.is_Pow and q.base in bases,
                     lambda q: sp.Pow(bases[q.base], q.exp))


def _split_radicand(base: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """base = c (f(z) + K): (c, f(z), K), K the z-free part (the constants and epsilon)."""
    terms = sp.Add.make_args(sp.expand(base))
    c, zfun = sp.factor(sp.Add(*(q for q in terms if q.has(z)))).as_independent(z, as_Add=False)
    return c, zfun, sp.factor(sp.Add(*(q for q in terms if not q.has(z))) / c)


def _names(symbols) -> list[str]:
    return sorted(map(str, symbols))


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _at_least_2(e: sp.Expr, simplify=sp.simplify) -> sp.Expr:
    """Simplify with C = n + 1, n >= 1 (a norm over one channel has no other channel)."""
    return simplify(e.subs(C_AT_LEAST_2)).subs(n, C - 1)


def _step(name: str):
    """A step's maker, whose own SymPy failure (a TypeError from a comparison SymPy cannot
    decide, say) becomes a ProcedureError naming the step; the steps that do not need it
    are still made."""
    def wrap(fn):
        @wraps(fn)
        def made(self):
            try:
                return fn(self)
            except Deadline as e:      # the derivation's time ran out in this step
                e.steps.append(name)
                raise
            except (ProcedureError, DerivationError):
                raise
            except Exception as e:  # noqa: BLE001  SymPy gave up inside this step
                raise ProcedureError(f"step {name!r}: SymPy failed "
                                     f"({type(e).__name__}: {e})") from e
        return made
    return wrap


class Counterparts:
    """The procedure's results for one norm; each step is made (and checked) when first used.

    Attributes: ``jacobian_diag``, ``jacobian_offdiag``,
    ``derivative_space_ode``, ``derivative_space`` (or None, with
    ``derivative_space_implicit``), ``function_space``, ``params``, ``steps`` and
    ``exact_params(values, i, **constants)``.
    """

    def __init__(self, norm: sp.Expr):
        self.norm = Norm(norm)
        self._vectors: dict[int, tuple] = {}

    def _vector(self, k: int) -> tuple[list, sp.Matrix]:
        """(x0..x{k-1}, the norm of that explicit vector), made once per k."""
        if k not in self._vectors:
            xs = _channels(k)
            self._vectors[k] = xs, self.norm.explicit(xs)
        return self._vectors[k]

    # -- names: what the frozen statistics are called -----------------------------------

    @cached_property
    def _frozen(self) -> tuple[dict, sp.Expr, sp.Expr, tuple]:
        """(tau -> its value in the frozen names, scale, shift, the frozen names).

        The scale is called sigma (s where there is a shift, as LayerNorm's), the shift mu;
        a statistic they do not determine keeps its own name.
        """
        scale, shift = self.norm.affine
        taus = set(self.norm.symbols)
        named = {}
        if shift.free_symbols & taus:
            named[mu] = shift
        if scale.free_symbols & taus:
            named[s if named else sigma] = scale
        sols = sp.solve([e - q for q, e in named.items()], list(taus), dict=True) if named else []
        if len(sols) != 1:
            return {}, scale, shift, tuple(sorted(taus, key=str))
        values = sols[0]
        left = tuple(sorted(taus - set(values), key=str))
        return values, sp.simplify(scale.xreplace(values)), \
            sp.simplify(shift.xreplace(values)), tuple(sorted(named, key=str)) + left

    @property
    def scale(self) -> sp.Expr:
        """The norm's scale at frozen statistics: sigma, s (or in the statistics)."""
        return self._frozen[1]

    @property
    def shift(self) -> sp.Expr:
        """The norm's shift at frozen statistics: 0, mu (or in the statistics)."""
        return self._frozen[2]

    @property
    def _frozen_names(self) -> tuple:
        return self._frozen[3]

    def _frozen_values(self, values: dict) -> dict:
        """The frozen names (sigma, mu, leftover tau) -> their values given the statistics'."""
        scale, shift = (e.xreplace(values) for e in self.norm.affine)
        at = {sigma: scale, s: scale, mu: shift, **values}
        return {q: at[q] for q in self._frozen_names}

    # -- 1. the per-channel form ----------------------------------------------------------

    @cached_property
    def _root(self) -> sp.Expr:
        """x0 with N(x0) = 0 in the per-channel form (the shift there): m for LayerNorm."""
        shift = self.norm.affine[1]
        if shift == 0:
            return shift
        raw = shift.xreplace(self.norm.values(self.norm.per_channel_split))
        roots = sp.solve(x - raw, x)     # N = 0 where x is the shift
        return roots[0] if len(roots) == 1 else sp.S.Zero

    def _canon(self, e: sp.Expr) -> sp.Expr:
        """e collected in z = x - x0 with factored coefficients (the form a reader expects)."""
        x0 = self._root
        return sp.collect(sp.expand(e.subs(x, x0 + z)), z, sp.factor).subs(z, x - x0)

    @cached_property
    def _per_channel_values(self) -> dict:
        """tau -> its per-channel value, each channel sum collected in x - x0."""
        return self.norm.values(self.norm.per_channel_split, self._canon)

    @cached_property
    def per_channel_form(self) -> sp.Expr:
        body = self.norm.body.xreplace(self._per_channel_values)
        return sp.Mul(*(self._canon(f) if f.is_Add and f.has(x) else f
                        for f in sp.Mul.make_args(body)))

    @cached_property
    @_step('per_channel')
    def per_channel(self) -> Step:
        form = self.per_channel_form
        notes = "; ".join(self.norm.per_channel_names[2])
        return check(Step(
            "per_channel", form,
            f"Write channel i with the other channels folded into constants ({notes}): a "
            "statistic is (its channel's term + the others' sum), divided by C for a mean.",
            tuple(self._per_channel_explicit(form, k) for k in SIZES),
        ))

    def _per_channel_explicit(self, form, k: int):
        xs, vec = self._vector(k)
        at = {**self.norm.constants_of(xs[1:]), x: xs[0], C: k}
        return equal(f"C = {k}: it is channel 0 of the norm of an explicit vector",
                     form.xreplace(at), vec[0])

    # -- 2. the Jacobian, general C ------------------------------------------------------------

    @cached_property
    def pair_form(self) -> sp.Expr:
        """N with channels i and k written out and T for the other C - 2."""
        return self.norm.body.xreplace(self.norm.values(self.norm.pair_split(x_k)))

    @cached_property
    @_step('split_channels')
    def split(self) -> Step:
        consts = ", ".join(f"{t} = sum of {g.subs(x, sp.Symbol('x_j'))}"
                           for g, t in self.norm.pair_constants.items())
        k = SIZES[0] + 1
        xs, vec = self._vector(k)
        at = {t: sum(g.subs(x, xj) for xj in xs[2:]) for g, t in self.norm.pair_constants.items()}
        return check(Step(
            "split_channels", self.pair_form,
            f"Write channel i with channels i and k explicit and {consts} over the other "
            "C - 2 channels, so that d/dx_i and d/dx_k are ordinary derivatives.",
            (equal(f"C = {k}: it is channel 0 of the norm of an explicit vector",
                   self.pair_form.xreplace({**at, x: xs[0], x_k: xs[1], C: k}), vec[0]),),
        ))

    def _chain_rule(self, wrt: sp.Symbol) -> sp.Expr:
        """dN/d(wrt) through the statistics, in x, x_k and the statistics' symbols."""
        local = self.norm.values(self.norm.pair_split(x_k), nested=False)
        d = {}
        for t in self.norm.symbols:
            d[t] = sp.diff(local[t], wrt) + sum(sp.diff(local[t], q) * d[q] for q in d)
        body = self.norm.body
        total = sp.diff(body, wrt) + sum(sp.diff(body, t) * d[t] for t in d)
        consts = list(self.norm.pair_constants.values())
        sol = sp.solve([t - local[t] for t in self.norm.symbols], consts, dict=True, check=False)
        if len(sol) != 1 or set(sol[0]) != set(consts):
            raise ProcedureError(
                f"the statistics {', '.join(str(st.call()) for st in self.norm.stats)} do not "
                f"determine the other channels' sums {', '.join(map(str, consts))}, so the "
                "Jacobian cannot be written in y and the statistics")
        return total.xreplace(sol[0])

    def _in_y(self, e: sp.Expr) -> sp.Expr:
        """An expression in x, x_k and the statistics, rewritten in y, y_k and the frozen names."""
        e = e.xreplace(self._frozen[0])
        e = e.subs({x: self.shift + self.scale * y, x_k: self.shift + self.scale * y_k})
        return sp.expand(sp.powsimp(_abs_products(e)))

    def _present(self, entry: sp.Expr, diagonal: bool) -> sp.Expr:
        """(delta + polynomial in y) / scale: expanded on the diagonal, one fraction off it."""
        scale = self.scale
        if not scale.is_Symbol:
            return entry
        d = _abs_products(sp.powsimp(sp.expand(entry * scale)))
        if d.has(scale) or d.has(self.shift):
            return entry
        return (sp.expand(d) if diagonal else sp.together(d)) / scale

    def _jacobian(self, diagonal: bool) -> Step:
        wrt = x if diagonal else x_k
        entry = self._present(self._in_y(self._chain_rule(wrt)), diagonal)
        if entry.has(x) or entry.has(x_k):
            raise ProcedureError(f"the Jacobian entry {entry} is not a function of y and the "
                                 "statistics")
        names = ["y"] + ([] if diagonal else ["y_k"]) + _names(self._frozen_names)
        consts = ", ".join(map(str, self.norm.pair_constants.values()))
        return check(Step(
            "jacobian_diag" if diagonal else "jacobian_offdiag", entry,
            f"Differentiate y_i by x_{'i' if diagonal else 'k'} through the statistics (chain "
            f"rule) and rewrite in {_and(names)}.",
            (equal(f"written back in x, x_k, {consts} it is the derivative of the split form",
                   self._back(entry), sp.diff(self.pair_form, wrt)),
             *(self._jacobian_explicit(entry, diagonal, k) for k in SIZES)),
        ))

    def _back(self, entry: sp.Expr) -> sp.Expr:
        """y, y_k, sigma, mu -> their values in the split form (x, x_k, T)."""
        vals = self.norm.values(self.norm.pair_split(x_k))
        at = self._frozen_values(vals)
        swapped = self.pair_form.subs({x: x_k, x_k: x}, simultaneous=True)
        return entry.subs({y: self.pair_form, y_k: swapped}).subs(at)

    def _jacobian_explicit(self, entry, diagonal: bool, k: int):
        xs, vec = self._vector(k)
        jac = vec.jacobian(xs)
        stats = self.norm.values(Split(tuple(xs), 0, {g: 0 for g in self.norm.basis}))
        at = {**self._frozen_values({t: e.subs(C, k) for t, e in stats.items()}), C: k}
        idx = [(i, j) for i in range(k) for j in range(k) if (i == j) == diagonal]
        got = sp.Matrix([entry.xreplace({y: vec[i], y_k: vec[j], **at}) for i, j in idx])
        want = sp.Matrix([jac[i, j] for i, j in idx])
        bases = _free_bases(xs, got, want)
        claim = (f"C = {k}: the {'diagonal' if diagonal else 'off-diagonal'} entries equal "
                 "Matrix.jacobian of the explicit vector")
        stronger = equal(claim, _with_free_bases(got, bases), _with_free_bases(want, bases))
        # the free bases make a stronger claim; where it is false (bases related in a way
        # _free_bases does not see), the claim itself is checked, not reported as failed
        return stronger if not bases or stronger.numeric() else equal(claim, got, want)

    @cached_property
    @_step('jacobian_diag')
    def jacobian_diag_step(self) -> Step:
        return self._jacobian(True)

    @cached_property
    @_step('jacobian_offdiag')
    def jacobian_offdiag_step(self) -> Step:
        return self._jacobian(False)

    @property
    def jacobian_diag(self) -> sp.Expr:
        return self.jacobian_diag_step.expr

    @property
    def jacobian_offdiag(self) -> sp.Expr:
        return self.jacobian_offdiag_step.expr

    # -- 3. derivative space --------------------------------------------------------------------

    @property
    def frozen_definitions(self) -> dict:
        """The frozen names as the norm defines them: sigma -> sqrt(epsilon + mean(x**2))."""
        calls: dict = {}
        for st in self.norm.stats:
            calls[st.symbol] = st.call().xreplace(calls)
        return {q: e.xreplace(calls) for q, e in self._frozen_values(calls).items()}

    @cached_property
    def frozen_values(self) -> dict:
        """The frozen names' values in the per-channel form: sigma (or mu, s) in x and the
        other channels' constants, as the decoupled ODE has them."""
        return self._frozen_values(self._per_channel_values)

    @cached_property
    @_step('decouple_derivative_space')
    def decouple(self) -> Step:
        diag = self.jacobian_diag
        rhs = diag.subs(self.frozen_values)
        N = self.per_channel_form
        return check(Step(
            "decouple_derivative_space", ode.ode(rhs),
            "Decoupling in derivative space: keep the diagonal of the Jacobian, so that y_i is "
            "treated as a function of x_i alone (the other channels held fixed, dx_k = 0).",
            (equal("with the other channels fixed, dy_i/dx_i of the per-channel form is the "
                   "diagonal entry", sp.diff(N, x), rhs.subs(y, N)),),
        ))

    @cached_property
    @_step('freeze')
    def freeze(self) -> Step:
        F = self.jacobian_diag
        names = _names(self._frozen_names)
        one = len(names) == 1
        meaning = "; ".join(f"{q} = {sp.sstr(e)}" for q, e in self.frozen_definitions.items())
        return check(Step(
            "freeze_" + "_".join(names), ode.ode(F),
            f"The approximation: {_and(names)} ({meaning}) depend{'s' if one else ''} on x_i, "
            f"but {'is' if one else 'are'} frozen to {'a constant' if one else 'constants'}; "
            "the ODE becomes autonomous.",
            (equal("the frozen right-hand side does not depend on x", sp.diff(F, x), 0),
             equal("it is the decoupled one at the frozen values",
                   F.subs(self.frozen_values), ode.rhs_of(self.decouple.expr))),
        ))

    @property
    def derivative_space_ode(self) -> sp.Eq:
        return self.freeze.expr

    @cached_property
    @_step('separate_variables')
    def _separated(self):
        return ode.separate(self.jacobian_diag, self.shift)

    @property
    def separate(self) -> Step:
        return self._separated[0]

    @cached_property
    @_step('integrate')
    def _solved(self):
        self.freeze  # noqa: B018  (the frozen ODE is checked before it is solved)
        return ode.solve(self._separated[1], self.shift)

    @property
    def integrate(self) -> Step:
        return self._solved[0]

    @property
    def derivative_space(self) -> sp.Expr | None:
        """The closed-form solution y(x) of the frozen ODE, or None (see the implicit one);
        written as gamma f(alpha (x - shift)) with the read-off values where they read off."""
        if self._read_off is not None:
            form, params = self._read_off
            return form.subs(params)
        return self._solved[1]

    @property
    def derivative_space_implicit(self) -> sp.Eq | None:
        return None if self._solved[1] is not None else self._solved[0].expr

    @cached_property
    @_step('identify_parameters')
    def _read_off(self):
        """gamma f(alpha (x - x0)) with gamma the bound: (form, {alpha, gamma}) or None."""
        sol, x0, bound = self._solved[1], self.shift, self._separated[1].bound
        if sol is None or bound is None:
            return None
        w = ode.w
        args = {f.args[0] for f in sol.subs(x, x0 + w).atoms(sp.Function) if f.has(w)}
        coefs = {sp.Abs(a.as_independent(w, as_Add=False)[0]) for a in args}
        if len(coefs) != 1 or not all(a.as_independent(w, as_Add=False)[1] == w for a in args):
            return None
        (B,) = coefs
        form = gamma * sp.factor_terms(sol / bound).subs(x, x0 + alpha * (x - x0) / B)
        return form, {alpha: B, gamma: bound}

    @cached_property
    def identify(self) -> Step | None:
        if self._read_off is None:
            return None
        form, params = self._read_off
        return check(Step(
            "identify_parameters", form,
            f"Read off the bound gamma = {params[gamma]} and the inner scale "
            f"alpha = {params[alpha]}.",
            (equal("with these parameters it is the ODE's solution",
                   form.subs(params), self._solved[1]),),
        ))

    @property
    def derivative_space_form(self) -> sp.Expr:
        """gamma f(alpha (x - shift)) where the parameters read off, else the solution (or
        the implicit relation)."""
        if self.identify is not None:
            return self.identify.expr
        return self.derivative_space if self.derivative_space is not None else \
            self.derivative_space_implicit

    @property
    def derivative_space_params(self) -> dict:
        return dict(self._read_off[1]) if self._read_off is not None else {}

    @property
    def derivative_space_steps(self) -> tuple[Step, ...]:
        return (self.split, self.jacobian_diag_step, self.decouple, self.freeze,
                self.separate, self.integrate) + ((self.identify,) if self.identify else ())

    # -- 4. function space -----------------------------------------------------------------------

    @cached_property
    @_step('promote_beta')
    def _promoted(self):
        """(form, {beta: ...}): the x-free part of the one radicand promoted to beta."""
        x0 = self._root
        factors = sp.Mul.make_args(self.per_channel_form.subs(x, x0 + z))
        consts = set(self.norm.per_channel_names[1]) | {epsilon}
        radicals = [f for f in factors
                    if f.is_Pow and f.base.has(z) and f.base.free_symbols & consts]
        if len(radicals) != 1:
            return self.per_channel_form, {}
        (rad,) = radicals
        c, zfun, value = _split_radicand(rad.base)
        others = [f for f in factors if f is not rad]
        prefactor = _at_least_2(sp.Mul(*(f for f in others if not f.has(z))) * c**rad.exp)
        form = prefactor * sp.Mul(*(f for f in others if f.has(z))) * (beta + zfun) ** rad.exp
        return form.subs(z, x - x0), {beta: value}

    @cached_property
    def promote(self) -> Step:
        form, params = self._promoted
        if not params:
            return check(Step(
                "promote_constants", form,
                "No single radicand holds the other channels' constants: they are the "
                "parameters themselves; the form is exact.",
                (equal("it is the per-channel form", form, self.per_channel.expr),)))
        exact = form.subs(params).subs(C_AT_LEAST_2)   # C >= 2: there are other channels
        diag = self.jacobian_diag.subs(y, self.per_channel_form).subs(self.frozen_values)
        return check(Step(
            "promote_beta", form,
            f"Decoupling in function space: promote {params[beta]} to one global parameter "
            "beta. No approximation: with that beta it is the norm exactly.",
            (equal(f"with beta = {params[beta]} it equals the per-channel form (C >= 2)",
                   exact, self.per_channel.expr.subs(C_AT_LEAST_2)),
             equal("its derivative equals the Jacobian's diagonal entry (C >= 2)",
                   sp.diff(exact, x), diag.subs(C_AT_LEAST_2))),
        ))

    @property
    def function_space(self) -> sp.Expr:
        return self.promote.expr

    @property
    def function_space_shift(self) -> sp.Expr:
        """Where the per-channel form vanishes: its input shift (m for LayerNorm)."""
        return self._root

    @property
    def function_space_params(self) -> dict:
        return dict(self._promoted[1])

    @property
    def function_space_steps(self) -> tuple[Step, ...]:
        return (self.per_channel, self.promote)

    # -- all of it ---------------------------------------------------------------------------------

    @property
    def params(self) -> dict:
        """Every parameter identification: beta (function space), alpha and gamma."""
        return {**self.function_space_params, **self.derivative_space_params}

    @property
    def steps(self) -> tuple[Step, ...]:
        out = [self.per_channel, self.split, self.jacobian_diag_step,
               self.jacobian_offdiag_step, self.decouple, self.freeze, self.separate,
               self.integrate, self.identify, self.promote]
        return tuple(st for st in out if st is not None)

    def exact_params(self, values, i: int, **constants) -> dict:
        """Parameter values for which ``function_space`` equals channel i of the norm of the
        concrete vector ``values``: every symbol of the form but x (C, beta, m, ...).
        ``constants`` gives the norm's own symbols by name, e.g. ``epsilon=1e-5``."""
        vals = [sp.sympify(v, strict=True) for v in values]
        if not 0 <= i < len(vals):
            raise ValueError(f"i must index values (0 <= i < {len(vals)}), got {i}")
        given = {symbol(k) if k in ASSUMPTIONS else sp.Symbol(k, real=True):
                 sp.sympify(v, strict=True) for k, v in constants.items()}
        consts = self.norm.constants_of(vals[:i] + vals[i + 1:], given)
        at = {**given, **consts, C: sp.Integer(len(vals))}
        out = {q: sp.sympify(e).subs(at) for q, e in self.function_space_params.items()}
        out.update({q: at[q] for q in self.function_space.free_symbols - {x} - set(out)
                    if q in at})
        missing = (self.function_space.free_symbols - {x} - set(out)).union(
            *(e.free_symbols for e in out.values()))
        if missing:
            raise ValueError(f"exact_params needs a value for "
                             f"{', '.join(sorted(map(str, missing)))}")
        return out


@cache
def _counterparts(norm: sp.Expr) -> Counterparts:
    return Counterparts(norm)


def counterparts(norm: sp.Expr | str) -> Counterparts:
    """Run the procedure on a norm: channel x's output, its statistics written with
    mean(...) / sum(...) over the channels; SymPy, or text parsed with the whitelist."""
    if isinstance(norm, str):
        norm = parse(norm)
    if not isinstance(norm, sp.Expr):
        raise TypeError(f"norm must be a str or a SymPy expression, not {type(norm).__name__}")
    return _counterparts(norm)
