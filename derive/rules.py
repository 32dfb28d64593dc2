"""The rules: named rewrites, each with an obligation SymPy proves, in named rule sets.

``RULES`` holds every rule; the sets say which apply where (as sympy.codegen.rewriting's
``optims_c99``): the safety rules (sech2, isru_hypot) on every path, each form's own chosen
by the form (derive.forms), a user's wherever their pattern occurs; then ``TORCH_RULES`` op
by op, ``KERNEL_RULES`` in the Triton kernels, ``FUSED_RULES`` in the fused CPU variants
(these, template rules, are applied by ``template_rewrite``). Each
rule is proven once (``proven``), and every application is checked too.

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

A user's formula gets both wherever their pattern occurs (``safety_rewrite``): sech2 at every
k - k tanh(u)^2 among the terms of a sum, isru_hypot at every power (not a positive integer)
of a base b (a + (x - c)^2), b > 0, a not negative (``isru_sites``), each coefficient of the
other symbols factored over h, q, p on its own, so that a derivative is printed in a form
that does not cancel (the derivative of x/sqrt(1 + x^2) is p^2/h, not 1/h - x^2/h^3). Where
a scalar a is negative the formula is not real near x = c, and the printed code would be NaN
for every x (sqrt(a)): the module of ``dynorm generate --form`` checks each such a at the call
(derive/formgen.py, ROOTED).

Kernel rules: Triton's interpreter runs core tl math only (exp, sqrt, abs, where, maximum,
minimum), not libdevice (tanh, cosh, hypot). Each replaces one function by a template in
core math, proven once; an application is checked to put exactly that template there.

- ``tanh_exp``: tanh(u) = sign(u) (1 - e)/(1 + e), e = exp(-2|u|) (no overflow: e <= 1),
  for |u| >= 1/4; below, 1 - e cancels (relative error up to 2^-25/|u| in float32, 1.5e-4
  at u = 1e-4), so tanh's odd Taylor polynomial through u^9 is used, its error < 2^-24 |u|.
- ``sech2_exp``: 1/cosh(u)^2 = 4e/(1 + e)^2, e = exp(-2|u|): cosh(u)^2 overflows for
  |u| > 45 in float32; this form needs neither cosh nor a cancellation, and 1 + e <= 2.
- ``hypot_minmax``: hypot(a, b) = m sqrt(1 + (n/m)^2), m = max(|a|, |b|), n = min(|a|, |b|)
  (and 0 where m = 0): nothing is squared but n/m in [0, 1].

Fused rule (the CPU's fused variants, where a division costs as much as a square root):

- ``hypot_scaled``: hypot(a, b) = 1/(k rh), rh = ((a k)^2 + (b k)^2)^(-1/2), with the power of
  two k = 2^-66 where m = max(|a|, |b|) > 2^62, 2^100 where m < 2^-62, else 1: for every
  float32 m from 2^-149 to 2^128 the larger square of a k and b k is a normal float32 and
  their sum stays below 2^125 (multiplying by a power of two is exact). hypot's temporary is
  inlined, so q = z/h prints as z k rh: one rsqrt and no division (hypot_minmax has three).

- ``hypot_wide``: hypot(a, b) = sqrt(a^2 + b^2) where it is computed in float64 from
  float32 values (the fused backward's scalar terms): a^2 + b^2 < 2^257 cannot overflow.

The PyTorch code op by op prints tanh and 1/cosh(u)^2 as torch.tanh and torch.cosh: on a CPU
they are within 1 ulp in float32 and 7 to 10 times faster than the expm1 and sigmoid forms
once printed here (torch 2.13, (512, 1024) float32, one thread: tanh 0.17 ms, its expm1 form
1.7 ms; AVX512, AVX2 and the default kernels alike).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import sympy as sp

from . import symbols
from .steps import Obligation, Step, check, equal, positive, series


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
    proof: Callable[[], list[Obligation]]
    #: A safety rule's rewrite of a form's expression; None for a template rule, which
    #: ``template_rewrite`` applies (``TEMPLATES[name]``).
    apply: Callable[..., Rewritten] | None = None


# -- sech2 --------------------------------------------------------------------------------

def _tanh2_term(e):
    """The tanh(u)^2 in e = 1 - tanh(u)^2 or e = tanh(u)^2 - 1 (with its sign), else None."""
    if not (e.is_Add and len(e.args) == 2 and ({sp.S.One, sp.S.NegativeOne} & set(e.args))):
        return None
    t = next(a for a in e.args if a not in (sp.S.One, sp.S.NegativeOne))
    sign, square = (-1, t.args[1]) if t.is_Mul and t.args[0] == -1 and len(t.args) == 2 else (1, t)
    if not (square.is_Pow and square.exp == 2 and square.base.func == sp.tanh):
        return None
    one = next(a for a in e.args if a is not t)
    return (square.base.args[0], -sign) if one == -sign else None


def apply_sech2(expr: sp.Expr) -> Rewritten:
    """1 - tanh(u)^2 -> 1/cosh(u)^2, and tanh(u)^2 - 1 -> -1/cosh(u)^2 (as SymPy writes
    the second derivatives)."""
    def repl(e):
        u, sign = _tanh2_term(e)
        return sign * sp.cosh(u) ** -2
    return Rewritten(expr.replace(lambda e: _tanh2_term(e) is not None, repl))


def _sech2_pair(terms: list):
    """(k, -k tanh(u)^2, u) for two of the terms of a sum, or None."""
    for t in terms:
        for f in sp.Mul.make_args(t):
            if f.is_Pow and f.exp == 2 and f.base.func == sp.tanh:
                k = -t / f
                if k != t and k in terms:
                    return k, t, f.base.args[0]
    return None


def _sech2_in_sum(e: sp.Expr) -> sp.Expr:
    """Every pair k - k tanh(u)^2 among the terms of the sum e -> k/cosh(u)^2."""
    terms = list(e.args)
    while (pair := _sech2_pair(terms)) is not None:
        k, t, u = pair
        terms.remove(k)
        terms.remove(t)
        terms.append(k * sp.cosh(u) ** -2)
    return sp.Add(*terms)


def apply_sech2_anywhere(expr: sp.Expr) -> Rewritten:
    """sech2 wherever its pattern occurs: also among the terms of a longer sum (the
    derivative of tanh(x) + x/sqrt(1 + x^2) is 1 - tanh(x)^2 + ..., and w - w tanh(u)^2
    once the weight is multiplied in)."""
    e = apply_sech2(expr).expr
    return Rewritten(e.replace(lambda t: t.is_Add and _sech2_pair(list(t.args)) is not None,
                               _sech2_in_sum))


def _proof_sech2():
    u = sp.Symbol("u", real=True)
    return [equal("1 - tanh(u)^2 = 1/cosh(u)^2", 1 - sp.tanh(u) ** 2, sp.cosh(u) ** -2),
            equal("the rule rewrites d/du tanh(u)", apply_sech2(sp.diff(sp.tanh(u), u)).expr,
                  sp.cosh(u) ** -2),
            equal("the rule rewrites tanh(u)^2 - 1 (d2/du2 tanh(u) = 2 tanh(u) (tanh(u)^2 - 1))",
                  apply_sech2(sp.diff(sp.tanh(u), u, 2)).expr,
                  -2 * sp.tanh(u) * sp.cosh(u) ** -2)]


# -- isru_hypot ---------------------------------------------------------------------------

H = sp.Symbol("h", positive=True)
Q = sp.Symbol("q", real=True)
P = sp.Symbol("p", positive=True)


def apply_isru_hypot(expr: sp.Expr, z: sp.Expr, var: sp.Symbol, a: sp.Symbol) -> Rewritten:
    """Write expr(var) in h = hypot(sqrt(a), z), q = z/h, p = sqrt(a)/h (z linear in var)."""
    e = expr.subs(a + z**2, H**2)
    e = e.subs(var, sp.solve(sp.Eq(z, Q * H), var)[0]).subs(a, P**2 * H**2)
    e = sp.expand(sp.powsimp(sp.expand(e)))
    # q^2 = 1 - p^2 in every power of q (q^3 = q (1 - p^2) in the second derivatives)
    e = sp.factor(sp.expand(e.replace(
        lambda t: t.is_Pow and t.base == Q and t.exp.is_Integer and t.exp >= 2,
        lambda t: Q ** (t.exp % 2) * (1 - P**2) ** (t.exp // 2))))
    defs = {H: Hypot(sp.sqrt(a), z), Q: z / H, P: sp.sqrt(a) / H}
    return Rewritten(e, {s: v for s, v in defs.items() if s == H or e.has(s)})


# -- isru_hypot wherever its pattern occurs (a user's formula) ------------------------------

@dataclass(frozen=True)
class Site:
    """One place for isru_hypot: a power base^k (k not a positive integer) whose base is
    b (a + z^2), z = var - c, b > 0 and a not negative (z is not scaled: 2x would
    overflow where x does not)."""

    base: sp.Expr
    z: sp.Expr
    a: sp.Expr
    b: sp.Expr = sp.S.One


def _site(base: sp.Expr, var: sp.Symbol) -> Site | None:
    """base as b (a + z^2), z = var - c (a Site), or None."""
    if not (base.is_Add and base.has(var)):
        return None
    try:
        poly = sp.Poly(base, var)
    except sp.PolynomialError:
        return None
    if poly.degree() != 2 or any(cf.has(var) for cf in poly.all_coeffs()):
        return None
    b, b1, b0 = poly.all_coeffs()
    if b.is_positive is not True:
        return None
    c = sp.simplify(-b1 / (2 * b))
    a = sp.simplify(b0 / b - b1**2 / (4 * b**2))
    if a.is_zero or a.is_negative:
        return None
    if a.is_number and not sp.sqrt(a).is_Rational:   # b a (1 + ((x - c)/sqrt(a))^2): the
        return Site(base, (var - c) / sp.sqrt(a), sp.S.One, b * a)   # hypot of 1, not of a float
    return Site(base, var - c, a, b)


def isru_sites(expr: sp.Expr, var: sp.Symbol) -> tuple[Site, ...]:
    """Every distinct base b (a + z^2) that expr raises to a power other than a positive
    integer (where a literal square overflows or a derivative cancels), in a fixed order."""
    found = {}
    for e in sp.preorder_traversal(expr):
        if e.is_Pow and not (e.exp.is_Integer and e.exp > 0) and e.exp.is_Rational:
            s = _site(e.base, var)
            if s is not None:
                found.setdefault(s.base, s)
    return tuple(found[b] for b in sorted(found, key=sp.default_sort_key))


def _masked(expr: sp.Expr, var: sp.Symbol):
    """expr with each function of var (tanh(x), cosh(x)^-2's cosh, |x|) replaced by a
    symbol, and the map back: the rule rewrites the algebra around them, not their
    arguments."""
    calls = {f for f in expr.atoms(sp.Function) if f.has(var)}
    outer = sorted((f for f in calls if not any(g != f and g.has(f) for g in calls)),
                   key=sp.default_sort_key)
    names = {f: sp.Dummy("f") for f in outer}
    return expr.xreplace(names), {v: k for k, v in names.items()}


def _same_base(b: sp.Expr, site: Site) -> bool:
    """Whether b is the site's base, however SymPy wrote it ((x - c)^2 or (c - x)^2)."""
    return b.is_Add and sp.expand(b - site.base) == 0


def holds(expr: sp.Expr, site: Site) -> bool:
    """Whether expr raises the site's base to some power."""
    return any(_same_base(t.base, site) for t in expr.atoms(sp.Pow))


def site_names(k: int) -> tuple[sp.Symbol, sp.Symbol, sp.Symbol]:
    """The temporaries (h, q, p) of a form's k-th site: h, q, p for the first, h_k, h_kq,
    h_kp after it (names a user's scalar cannot take: derive/formgen.py, RESERVED)."""
    if k == 1:
        return H, Q, P
    return (sp.Symbol(f"h_{k}", positive=True), sp.Symbol(f"h_{k}q", real=True),
            sp.Symbol(f"h_{k}p", positive=True))


def apply_isru_hypot_at(expr: sp.Expr, var: sp.Symbol, site: Site,
                        names: tuple = (H, Q, P)) -> Rewritten:
    """isru_hypot at one site of any expression: expr in h = hypot(sqrt(a), z), q = z/h,
    p = sqrt(a)/h, its powers of q^2 written 1 - p^2, and each coefficient of the other
    symbols (weight, grad, the other scalars, a function of x) factored over them: no
    1/h - x^2/h^3 (the derivative of x/sqrt(1 + x^2) is p^2/h), and nothing joined into one
    fraction with a term that overflows on its own (1/cosh(x)^2). A function of var is kept
    as it is, its argument rewritten where it holds the site."""
    H, Q, P = names
    masked, back = _masked(expr, var)
    e = masked.replace(lambda t: t.is_Pow and _same_base(t.base, site),
                       lambda t: site.b**t.exp * (H**2) ** t.exp)
    e = e.subs(var, sp.solve(sp.Eq(site.z, Q * H), var)[0])
    if site.a.is_Symbol:
        e = e.subs(site.a, P**2 * H**2)
    e = sp.expand(sp.powsimp(sp.expand(e)))
    # q^2 = 1 - p^2 in every power of q (q^3 = q (1 - p^2) in the second derivatives)
    e = sp.expand(e.replace(lambda t: t.is_Pow and t.base == Q and t.exp.is_Integer and t.exp >= 2,
                            lambda t: Q ** (t.exp % 2) * (1 - P**2) ** (t.exp // 2)))
    others = sorted(e.free_symbols - {H, Q, P} - site.a.free_symbols - site.z.free_symbols
                    - site.b.free_symbols, key=sp.default_sort_key)
    groups = sp.collect(e, others, evaluate=False) if others else {sp.S.One: e}
    e = sp.Add(*(m * sp.factor(c) for m, c in groups.items()))
    inner = {d: f.func(*(apply_isru_hypot_at(arg, var, site, names).expr if holds(arg, site)
                         else arg for arg in f.args)) for d, f in back.items()}
    out = e.xreplace(inner)
    defs = {H: Hypot(sp.sqrt(site.a), site.z), Q: site.z / H, P: sp.sqrt(site.a) / H}
    return Rewritten(out, {s: v for s, v in defs.items() if s == H or out.has(s)})


def _proof_isru_hypot():
    z = symbols.z
    a = sp.Symbol("a", positive=True)
    f = z / sp.sqrt(a + z**2)
    out = []
    for what, e in (("z/sqrt(a + z^2)", f), ("its z-derivative", sp.diff(f, z)),
                    ("its a-derivative", sp.diff(f, a))):
        r = apply_isru_hypot(e, z, z, a)
        out.append(equal(f"{what} = its form in h, q, p", r.unfolded(), e))
    return out


# -- kernel rules: templates in core math only ---------------------------------------------

U = sp.Symbol("u", real=True)                 # the argument of tanh and 1/cosh^2, once
E = sp.Symbol("e", positive=True)             # exp(-2|u|), in (0, 1]
HMAX = sp.Symbol("hmax", nonnegative=True)    # max(|a|, |b|)
HMIN = sp.Symbol("hmin", nonnegative=True)    # min(|a|, |b|)
HRATIO = sp.Symbol("hratio", nonnegative=True)  # hmin/hmax, in [0, 1]
HK = sp.Symbol("hk", positive=True)           # a power of two: 2^-66, 1 or 2^100
HA = sp.Symbol("ha", real=True)               # a hk
HB = sp.Symbol("hb", real=True)               # b hk
HR = sp.Symbol("rh", positive=True)           # (ha^2 + hb^2)^(-1/2)
#: hypot_scaled: above HIGH scale by 2^-66, below LOW by 2^100 (powers of two: exact).
HYPOT_HIGH, HYPOT_LOW = sp.Integer(2) ** 62, sp.Integer(2) ** -62
HYPOT_DOWN, HYPOT_UP = sp.Integer(2) ** -66, sp.Integer(2) ** 100

#: Below this |u| tanh is its Taylor polynomial (1/4 is exact in every float format).
TANH_SMALL = sp.Rational(1, 4)
#: The polynomial is tanh's Taylor polynomial up to u^9 (u^10's coefficient is 0):
#: the error is O(u^11).
TANH_ORDER = 11
#: Target of the polynomial's error, relative to |u|: float32's unit roundoff.
TANH_ERROR = sp.Rational(1, 2**24)


def substituted(r: Rewritten) -> sp.Expr:
    """r's expression with its temporaries substituted back (in any order), nothing else."""
    e = r.expr
    for _ in range(len(r.defs) + 1):
        if not e.free_symbols & set(r.defs):
            break
        e = e.xreplace(r.defs)
    return e


@dataclass(frozen=True)
class Template:
    """What a kernel rule replaces (``matches``, ``args``) and what it puts there."""

    matches: Callable[[sp.Basic], bool]
    args: Callable[[sp.Basic], tuple]
    build: Callable[..., Rewritten]
    #: A temporary whose whole value is an instance is replaced by the template's value
    #: wherever it is used (a product of temporaries: q = z/h becomes z hk rh).
    inline: bool = False

    def instances(self, expr: sp.Expr) -> list:
        """Every distinct matching subexpression, in a fixed order."""
        found = {e for e in sp.preorder_traversal(expr) if self.matches(e)}
        return sorted(found, key=sp.default_sort_key)

    def apply(self, expr: sp.Expr) -> Rewritten:
        defs, repl = {}, {}
        for inst in self.instances(expr):
            r = self.build(*self.args(inst))
            repl[inst] = r.expr
            _merge(defs, r.defs)
        return Rewritten(expr.xreplace(repl), defs)


def _merge(defs: dict, new: dict) -> None:
    for sym, value in new.items():
        if defs.setdefault(sym, value) != value:
            raise ValueError(f"temporary {sym} would stand for both {defs[sym]} and {value}")


def _argument(a: sp.Expr):
    """(the name the template uses for a, its definition): a symbol stands for itself."""
    return (a, {}) if a.is_Symbol else (U, {U: a})


@cache
def tanh_polynomial() -> sp.Expr:
    """tanh's Taylor polynomial in u up to u^9, in Horner form (odd: u times a poly in u^2)."""
    return sp.horner(sp.series(sp.tanh(U), U, 0, TANH_ORDER).removeO(), wrt=U)


def _tanh_template(a) -> Rewritten:
    u, defs = _argument(a)
    t = (1 - E) / (1 + E)
    poly = tanh_polynomial().subs(U, u)
    expr = sp.Piecewise((poly, sp.Abs(u) < TANH_SMALL), (-t, u < 0), (t, True))
    return Rewritten(expr, {**defs, E: sp.exp(-2 * sp.Abs(u))})


def _sech2_template(a) -> Rewritten:
    u, defs = _argument(a)
    return Rewritten(4 * E / (1 + E) ** 2, {**defs, E: sp.exp(-2 * sp.Abs(u))})


def _hypot_template(a, b) -> Rewritten:
    defs = {HMAX: sp.Max(sp.Abs(a), sp.Abs(b)), HMIN: sp.Min(sp.Abs(a), sp.Abs(b)),
            HRATIO: HMIN / HMAX}
    expr = sp.Piecewise((0, sp.Eq(HMAX, 0)), (HMAX * sp.sqrt(1 + HRATIO**2), True))
    return Rewritten(expr, defs)


def _hypot_scaled_template(a, b) -> Rewritten:
    m = sp.Max(sp.Abs(a), sp.Abs(b))
    k = sp.Piecewise((HYPOT_DOWN, m > HYPOT_HIGH), (HYPOT_UP, m < HYPOT_LOW), (1, True))
    return Rewritten(1 / (HK * HR), {HK: k, HA: a * HK, HB: b * HK,
                                     HR: (HA**2 + HB**2) ** sp.Rational(-1, 2)})


def _hypot_wide_template(a, b) -> Rewritten:
    return Rewritten(sp.sqrt(a**2 + b**2))


#: Below this |u| the fused variants' erf is its Taylor polynomial (through u^9).
ERF_SMALL = sp.Rational(1, 4)
ERF_ORDER = 11


@cache
def erf_polynomial() -> sp.Expr:
    """erf's Taylor polynomial in u up to u^9 (odd), in Horner form."""
    return sp.horner(sp.series(sp.erf(U), U, 0, ERF_ORDER).removeO(), wrt=U)


def _erf_template(a) -> Rewritten:
    u, defs = _argument(a)
    return Rewritten(sp.Piecewise((erf_polynomial().subs(U, u), sp.Abs(u) < ERF_SMALL),
                                  (sp.erf(u), True)), defs)


def _is_sech2(e) -> bool:
    return e.is_Pow and e.exp == -2 and e.base.func == sp.cosh


TEMPLATES: dict[str, Template] = {
    "tanh_exp": Template(lambda e: e.func == sp.tanh, lambda e: e.args, _tanh_template),
    "sech2_exp": Template(_is_sech2, lambda e: e.base.args, _sech2_template),
    "hypot_minmax": Template(lambda e: e.func == Hypot, lambda e: e.args, _hypot_template),
    "hypot_wide": Template(lambda e: e.func == Hypot, lambda e: e.args, _hypot_wide_template),
    "erf_taylor": Template(lambda e: e.func == sp.erf, lambda e: e.args, _erf_template),
    "hypot_scaled": Template(lambda e: e.func == Hypot, lambda e: e.args, _hypot_scaled_template,
                             inline=True),
}


def apply_kernel_rule(rule: str, r: Rewritten) -> Rewritten:
    """A kernel rule applied to r's expression and to the values of its temporaries."""
    template = TEMPLATES[rule]
    out = template.apply(r.expr)
    defs = {}
    for sym, value in r.defs.items():
        v = template.apply(value)
        _merge(defs, {sym: v.expr})
        _merge(defs, v.defs)
    _merge(defs, out.defs)
    expr = out.expr
    if template.inline:
        whole = {s: defs.pop(s) for s, value in r.defs.items() if template.matches(value)}
        expr = expr.xreplace(whole)
        defs = {s: v.xreplace(whole) for s, v in defs.items()}
    return Rewritten(expr, defs)


def template_obligation(rule: str, before: Rewritten, after: Rewritten) -> Obligation:
    """The check of one application: unfolded, ``after`` is ``before`` unfolded with each
    instance replaced by the rule's template (whose value ``RULES[rule].proof()`` proves)."""
    template, b = TEMPLATES[rule], substituted(before)
    want = b.xreplace({i: substituted(template.build(*template.args(i)))
                       for i in template.instances(b)})
    return equal(f"{rule} puts its proven template in place of each instance",
                 substituted(after), want)


def _proof_tanh_exp():
    up = sp.Symbol("u", positive=True)
    r = TEMPLATES["tanh_exp"].apply(sp.tanh(U))
    (poly, _), (neg, _), (pos, _) = r.expr.args
    unfold = lambda piece, u: substituted(Rewritten(piece, r.defs)).subs(U, u)  # noqa: E731
    # Lagrange: tanh(u) - poly(u) = tanh^(11)(xi) u^11 / 11!, 0 <= xi <= u <= 1/4, and
    # tanh^(11) = Q(tanh) with 0 <= tanh(xi) <= xi <= 1/4: |Q| <= sum |q_k| 4^-k = bound.
    t = sp.Symbol("t", nonnegative=True)
    q = sp.Poly(sp.expand(sp.diff(sp.tanh(U), U, TANH_ORDER)).subs(sp.tanh(U), t), t)
    bound = sum(abs(c) * TANH_SMALL**k for (k,), c in q.terms())
    return [
        equal("u > 0: tanh(u) = (1 - e)/(1 + e), e = exp(-2|u|)", unfold(pos, up), sp.tanh(up)),
        equal("u < 0: tanh(u) = -(1 - e)/(1 + e), e = exp(-2|u|)", unfold(neg, -up),
              sp.tanh(-up)),
        series("|u| < 1/4: the polynomial is tanh's Taylor polynomial, error O(u^11)",
               sp.tanh(U), U, TANH_ORDER, poly),
        positive("|u| <= 1/4: |tanh(u) - poly(u)| <= bound |u|^11/11! < 2^-24 |u|",
                 TANH_ERROR - bound * TANH_SMALL ** (TANH_ORDER - 1)
                 / sp.factorial(TANH_ORDER)),
    ]


def _proof_sech2_exp():
    up = sp.Symbol("u", positive=True)
    form = substituted(TEMPLATES["sech2_exp"].apply(sp.cosh(U) ** -2))
    chained = TEMPLATES["sech2_exp"].apply(apply_sech2(sp.diff(sp.tanh(U), U)).expr)
    return [
        equal("u > 0: 1/cosh(u)^2 = 4e/(1 + e)^2, e = exp(-2|u|)", form.subs(U, up),
              sp.cosh(up) ** -2),
        equal("u < 0: 1/cosh(u)^2 = 4e/(1 + e)^2, e = exp(-2|u|)", form.subs(U, -up),
              sp.cosh(-up) ** -2),
        equal("after sech2, d/du tanh(u) is the template", chained.expr, 4 * E / (1 + E) ** 2),
    ]


def _proof_hypot_minmax():
    a, b = sp.symbols("a b", real=True)
    n, d = sp.symbols("n d", positive=True)
    form = substituted(TEMPLATES["hypot_minmax"].apply(Hypot(a, b)))
    cases = [("|a| > |b| > 0", n + d, n), ("|b| > |a| > 0", n, n + d),
             ("a < 0, |a| > |b|", -(n + d), n), ("b < 0, |b| > |a|", n, -(n + d)),
             ("a, b < 0", -n, -(n + d)), ("|a| = |b|", n, -n), ("a = 0", 0, n),
             ("a = b = 0 (the guard)", 0, 0)]
    return [equal(f"{what}: hypot(a, b) = m sqrt(1 + (n/m)^2)",
                  form.subs({a: p, b: q}, simultaneous=True), Hypot(p, q).rewrite(sp.sqrt))
            for what, p, q in cases]


def _proof_hypot_scaled():
    a, b = sp.symbols("a b", real=True)
    r = TEMPLATES["hypot_scaled"].apply(Hypot(a, b))
    form = substituted(Rewritten(r.expr, {s: v for s, v in r.defs.items() if s != HK}))
    two = sp.Integer(2)
    out = [equal(f"k = 2^{sp.log(k, 2)}: 1/(k ((a k)^2 + (b k)^2)^(-1/2)) = hypot(a, b)",
                 form.subs(HK, k), sp.sqrt(a**2 + b**2)) for k, _ in r.defs[HK].args]
    # Floating point, float32 (normal from 2^-126, largest below 2^128, subnormal from 2^-149):
    # the larger of |a k|, |b k| is m k, with m in the range of its branch.
    for k, low, high in ((HYPOT_DOWN, HYPOT_HIGH, two**128), (1, HYPOT_LOW, HYPOT_HIGH),
                         (HYPOT_UP, two**-149, HYPOT_LOW)):
        k_, low_, high_ = (f"2^{sp.log(v, 2)}" for v in (k, low, high))
        out.append(positive(f"k = {k_}: (m k)^2 is a normal float32 for m >= {low_}",
                            (low * k) ** 2 - two**-126))
        out.append(positive(f"k = {k_}: 2 (m k)^2 < 2^126 (below float32's largest) for "
                            f"m <= {high_}", two**126 - 2 * (high * k) ** 2))
    return out


def _proof_hypot_wide():
    a, b = sp.symbols("a b", real=True)
    two = sp.Integer(2)
    return [equal("hypot(a, b) = sqrt(a^2 + b^2)",
                  TEMPLATES["hypot_wide"].apply(Hypot(a, b)).expr, sp.sqrt(a**2 + b**2)),
            positive("|a|, |b| < 2^128 (float32's range): a^2 + b^2 < 2^257, far below "
                     "float64's largest (2^1024 - 2^971)", two**1024 - two**971 - 2 * two**256)]


def _proof_erf_taylor():
    r = TEMPLATES["erf_taylor"].apply(sp.erf(U))
    (poly, _), (rest, _) = r.expr.args
    # The series 2/sqrt(pi) sum (-1)^k u^(2k+1)/(k! (2k+1)) alternates with terms that
    # decrease for |u| < 1: the error is below the first term left out, u^11/(5! 11).
    first_left_out = 2 / sp.sqrt(sp.pi) * ERF_SMALL ** (ERF_ORDER - 1) / (120 * ERF_ORDER)
    return [
        series("|u| < 1/4: the polynomial is erf's Taylor polynomial, error O(u^11)",
               sp.erf(U), U, ERF_ORDER, poly),
        equal("|u| >= 1/4: erf itself", rest, sp.erf(U)),
        positive("|u| <= 1/4: |erf(u) - poly(u)| <= 2/sqrt(pi) |u|^11/(5! 11) < 2^-24 |u|",
                 TANH_ERROR - first_left_out),
    ]


#: The rules a Triton kernel needs on top of the safety rules, in the order applied.
KERNEL_RULES = ("tanh_exp", "sech2_exp", "hypot_minmax")
#: The fused variants' rules: the kernels' (hypot by scaling, not by division), and erf near 0
#: (inductor's vectorised CPU erf is off by about 2e-7 absolute there: 14% relative at
#: u = 1.3e-6).
FUSED_RULES = ("tanh_exp", "sech2_exp", "hypot_scaled", "erf_taylor")
#: The fused backward's scalar terms, computed in float64 from float32 values
#: (derive/codegen.py, WIDE): nothing of float32's range overflows there, so hypot is
#: sqrt(a^2 + b^2) (one rsqrt in q and p), the rest as FUSED_RULES.
FUSED_WIDE_RULES = ("tanh_exp", "sech2_exp", "hypot_wide", "erf_taylor")
#: The PyTorch code's rules on top of the safety rules: none (see the module docstring; its
#: hypot is the generated module's own ``hypot``: derive/codegen.py, HYPOT).
TORCH_RULES: tuple[str, ...] = ()

RULES: dict[str, Rule] = {
    "sech2": Rule("sech2", "1 - tanh(u)^2 cancels to 0 in float32 for |u| > 9", _proof_sech2,
                  apply_sech2),
    "isru_hypot": Rule("isru_hypot", "z^2 overflows for |z| > 1.8e19 in float32",
                       _proof_isru_hypot, apply_isru_hypot),
    "tanh_exp": Rule("tanh_exp", "tanh is libdevice (not in the interpreter); 1 - exp(-2|u|) "
                     "cancels for small |u| (up to 1.5e-4 relative at u = 1e-4 in float32)",
                     _proof_tanh_exp),
    "sech2_exp": Rule("sech2_exp", "cosh is libdevice; cosh(u)^2 overflows for |u| > 45 "
                      "in float32", _proof_sech2_exp),
    "hypot_minmax": Rule("hypot_minmax", "hypot is libdevice; sqrt(a^2 + b^2) overflows "
                         "for |a| > 1.8e19 in float32", _proof_hypot_minmax),
    "hypot_scaled": Rule("hypot_scaled", "three divisions in hypot_minmax's q and p cost a CPU "
                         "as much as the rest; sqrt(a^2 + b^2) overflows for |a| > 1.8e19",
                         _proof_hypot_scaled),
    "hypot_wide": Rule("hypot_wide", "hypot_scaled's powers of two are not needed in float64 "
                       "for float32 values, whose squares cannot overflow there",
                       _proof_hypot_wide),
    "erf_taylor": Rule("erf_taylor", "inductor's vectorised CPU erf is off by about 2e-7 "
                       "absolute near 0 (14% relative at u = 1.3e-6)", _proof_erf_taylor),
}


def application_obligation(rule: str, before: sp.Expr, after: Rewritten) -> Obligation:
    """The check of one application: unfolded, the rewritten expression is the original."""
    return equal(f"{rule} preserves the expression", after.unfolded(), before)


# -- the safety rules wherever their pattern occurs, each application checked --------------

def _terms(e: sp.Expr) -> list:
    """The terms of e with its products of sums multiplied out (w (A + B) + b: w A, w B,
    b), the arguments of its functions as they are."""
    if e.is_Add:
        return [t for a in e.args for t in _terms(a)]
    if e.is_Mul and any(f.is_Add for f in e.args):
        return _terms(sp.expand_mul(e, deep=False))
    return [e]


def safety_rewrite(expr: sp.Expr, var: sp.Symbol, where: str,
                   sites: tuple[Site, ...] | None = None) -> Rewritten:
    """Every safety rule whose pattern occurs in expr, applied and checked: sech2 at each
    k - k tanh(u)^2, isru_hypot at each of ``sites`` (the form's, so that every function of
    one form gives a site the same temporaries; default: expr's own): the terms of expr
    that hold one site are rewritten together, in that site's h, q, p; a term holding none
    is left as written (x exp(-x^2) stays a product of x, x and the exp), and so is a term
    holding two (a product of two bases)."""
    r, out = Rewritten(expr), apply_sech2_anywhere(expr)
    if out.expr != expr:
        check(Step(f"{where}:sech2", out.expr, RULES["sech2"].fixes,
                   (application_obligation("sech2", expr, out),)))
        r = out
    sites = isru_sites(expr, var) if sites is None else sites
    held = [s for s in sites if holds(r.expr, s)]
    if not held:
        return r
    groups, rest = {s: [] for s in held}, []
    for term in _terms(r.expr):
        mine = [s for s in held if holds(term, s)]
        (groups[mine[0]] if len(mine) == 1 else rest).append(term)
    terms, defs = list(rest), dict(r.defs)
    for s, ts in groups.items():
        if ts:
            part = apply_isru_hypot_at(sp.Add(*ts), var, s, site_names(sites.index(s) + 1))
            terms.append(part.expr)
            defs.update(part.defs)
    out = Rewritten(sp.Add(*terms), defs)
    check(Step(f"{where}:isru_hypot", out.expr, RULES["isru_hypot"].fixes,
               (application_obligation("isru_hypot", r.expr, out),)))
    return out


# -- applying the template rules, each application checked ----------------------------------

def applies(rule: str, r: Rewritten) -> bool:
    """Whether the template rule has something to replace in r."""
    return any(TEMPLATES[rule].instances(e) for e in (r.expr, *r.defs.values()))


@cache
def proven(rule: str) -> Step:
    """The rule's own proof (its template equals, or approximates within its bound, the
    function it replaces), checked once before the rule is applied anywhere."""
    return check(Step(rule, 0, RULES[rule].fixes, tuple(RULES[rule].proof())))


def template_rewrite(rules, where: str, r: Rewritten) -> Rewritten:
    """Apply each template rule that has something to replace; check each application."""
    for rule in rules:
        if applies(rule, r):
            proven(rule)
            out = apply_kernel_rule(rule, r)
            check(Step(f"{where}:{rule}", out.expr, RULES[rule].fixes,
                       (template_obligation(rule, r, out),)))
            r = out
    return r
