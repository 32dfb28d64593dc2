"""The layer forms: which functions of x and the parameters the generated code computes.

A catalog form becomes a layer y = weight * f + bias: f is the catalog's closed form over its
bound (``layer_step``, a checked step), its shift (the LayerNorm forms' mean) a learnable
scalar. ``layer_functions`` lists, per form, the functions every backend prints: forward,
forward without bias, backward (first derivatives), jvp (the forward-mode product) and hvp
(second derivatives along a direction), each the symbolic derivative of the layer (never
autograd through the forward) with the form's safety rule applied and checked. A user's
formula becomes a form the same way (``Form.of``). The emitters (``codegen``, ``kernelgen``,
``formgen``) print these functions; they decide nothing about the math.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp

from .catalog import result
from .rules import RULES, Rewritten, application_obligation, isru_sites, safety_rewrite
from .steps import Step, check, equal, limit
from .symbols import alpha, beta, bias, grad, m, mu, shift, weight, x, z

#: How a shifted form computes z. x - shift overflows where both are near the dtype's largest
#: value (x = 3e38, shift = -1e38 in float32): z = inf, then z / hypot(sqrt(beta), z) is
#: inf/inf = NaN and z * sech(alpha z)^2 is inf * 0 = NaN. nan_to_num saturates z to the
#: largest finite value of its dtype, where the forms have reached their bounds (and their
#: derivatives 0) as at the true z; a NaN stays NaN.
SHIFT = "z = torch.nan_to_num(x - shift, nan=torch.nan)"


@dataclass(frozen=True)
class Form:
    """How an expression becomes a layer y = weight * f + bias: its scalar parameters, its
    safety rule and its shift. A catalog form's f is the catalog's closed form over its bound
    (``layer_step``); a user's form carries its own f (``Form.of``)."""

    name: str
    scalars: tuple[sp.Symbol, ...]
    rule: str | None                    # the safety rule its derivatives need, if any
    shift_of: sp.Symbol | None = None   # the catalog symbol that becomes ``shift``
    formula: sp.Expr | None = None      # f(x; scalars) of a form not in the catalog
    label: str | None = None            # its classes' stem (DyT: DyTFunction), else camel(name)

    @classmethod
    def of(cls, name: str, f: sp.Expr) -> "Form":
        """The form y = weight * f + bias of a formula f of x: its other free symbols are
        the scalars (sorted by name); every safety rule applies wherever its pattern occurs
        in it and its derivatives (``rules.safety_rewrite``, from ``_rewrite``)."""
        scalars = tuple(sorted(f.free_symbols - {x}, key=lambda s: s.name))
        return cls(name, scalars, "sech2" if f.has(sp.tanh) else None, formula=f)

    @property
    def layer(self) -> sp.Expr:
        """weight * f + bias: the formula's, or the catalog's (a checked step)."""
        if self.formula is None:
            return layer_step(self.name).expr
        return weight * self.formula + bias

    @property
    def origin(self) -> str:
        """Where the layer came from, for the docstrings."""
        if self.formula is None:
            return (f"From the catalog's {self.name} = {sp.sstr(result(self.name).expr)}: "
                    "the bound promoted to weight, plus bias.")
        return (f"From the formula {self.name} = {sp.sstr(self.formula)}: weight times it, "
                "plus bias.")

    @property
    def camel(self) -> str:
        """The stem of its classes' names: DyT (DyTFunction, DyTBackward, DyTTraced)."""
        return self.label or camel(self.name)

    @property
    def shifted(self) -> bool:
        return self.shift_of is not None

    @property
    def var(self) -> sp.Symbol:
        """The variable the printed code works in: z = x - shift, or x itself."""
        return z if self.shifted else x

    def in_var(self, e: sp.Expr) -> sp.Expr:
        """e(x, shift) written in z = x - shift (a shifted form), unchanged otherwise."""
        return e.subs(x, z + shift) if self.shifted else e

    @property
    def params(self) -> tuple[sp.Symbol, ...]:
        return self.scalars + ((shift,) if self.shift_of is not None else ())


def camel(name: str) -> str:
    """A class name's stem from a form's name: tanh_a -> TanhA."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


FORMS: dict[str, Form] = {
    "dyt": Form("dyt", (alpha,), "sech2", label="DyT"),
    "dyisru": Form("dyisru", (beta,), "isru_hypot", label="DyISRU"),
    "dyt_ln": Form("dyt_ln", (alpha,), "sech2", mu, label="DyTLN"),
    "dyisru_ln": Form("dyisru_ln", (beta,), "isru_hypot", m, label="DyISRULN"),
    "derf": Form("derf", (alpha, shift), None, label="Derf"),
}


@cache
def layer_step(name: str) -> Step:
    """weight * f + bias, f = the catalog's form divided by its bound (checked)."""
    form, r = FORMS[name], result(name)
    bound = sp.limit(r.expr, x, sp.oo)
    f = sp.simplify(r.expr / bound)
    if form.shift_of is not None:
        f = f.subs(form.shift_of, shift)
    layer = weight * f + bias
    back = layer.subs({weight: bound, bias: 0})
    if form.shift_of is not None:
        back = back.subs(shift, form.shift_of)
    return check(Step(
        f"{name}_layer", layer,
        f"Promote the bound {bound} to a per-channel weight and add a bias"
        + ("; the shift becomes a learnable scalar." if form.shift_of is not None else "."),
        (equal("with weight = bound, bias = 0 it is the catalog's form", back, r.expr),
         limit("the shape function tends to 1", f.subs(shift, 0), x, sp.oo, 1)),
    ))


#: rule -> the arguments it takes besides the expression, read off the form.
_RULE_ARGS = {"sech2": lambda form: (),
              "isru_hypot": lambda form: (form.var, form.var, form.scalars[0])}


@cache
def sites(form: Form) -> tuple:
    """Where isru_hypot applies in a user's formula (one h, q, p for all its functions)."""
    return isru_sites(form.in_var(form.layer), form.var)


def _rewrite(form: Form, e: sp.Expr) -> Rewritten:
    """Apply the form's safety rule to e and check the application; a user's formula gets
    every safety rule wherever its pattern occurs (rules.safety_rewrite)."""
    e = form.in_var(e)
    if form.formula is not None:
        return safety_rewrite(e, form.var, form.name, sites(form))
    if form.rule is None:
        return Rewritten(e)
    rule = RULES[form.rule]
    out = rule.apply(e, *_RULE_ARGS[form.rule](form))
    check(Step(f"{form.name}:{form.rule}", out.expr, rule.fixes,
               (application_obligation(form.rule, e, out),)))
    return out


@dataclass(frozen=True)
class Function:
    name: str
    args: tuple[sp.Symbol, ...]
    outputs: tuple[tuple[str, Rewritten], ...]
    doc: str
    prologue: tuple[str, ...] = ()
    #: output name -> how it is returned ("{}" stands for the output), e.g. a cast or a sum.
    finish: tuple[tuple[str, str], ...] = ()
    #: outputs that are values of their own, never a temporary another output is computed
    #: from (the fused backward's per-element outputs: inductor sums in the same loop only
    #: what reads no buffer that loop writes; see derive/codegen.py, SUM_ALL).
    own: tuple[str, ...] = ()


@cache
def _derivative(form: Form, *wrt: sp.Symbol) -> Rewritten:
    """d^k y / d wrt... of the form's layer, with its safety rule applied (and checked)."""
    return _rewrite(form, sp.diff(form.layer, *wrt))


def _combination(coeffs: dict, terms: dict) -> Rewritten:
    """sum of coeffs[a] * terms[a]: the rewritten terms with their temporaries merged."""
    defs = {}
    for r in terms.values():
        defs.update(r.defs)
    return Rewritten(sum(coeffs[a] * r.expr for a, r in terms.items()), defs)


def tangent(v: sp.Symbol, kind: str) -> sp.Symbol:
    """The direction that goes with v: ``v_t`` (a tangent) or ``v_v`` (a cotangent's)."""
    return sp.Symbol(f"{v.name}_{kind}", real=True)


@cache
def layer_functions(form: Form) -> tuple[Function, ...]:
    """forward, forward_nobias, backward, jvp, hvp: every derivative printed from the layer.

    backward: grad * dy/da for a in (x, scalars, weight); jvp: y_t = sum_a a_t dy/da (the
    caller adds bias_t); hvp: h_a = grad * sum_b b_v d2y/(da db), the double backward's
    terms. All element by element: the caller sums over the broadcast dimensions."""
    name, layer = form.name, form.layer
    wrt = (x, *form.params, weight)
    pretty = sp.sstr(form.in_var(layer)) + (", z = x - shift" if form.shifted else "")
    prologue = (SHIFT,) if form.shifted else ()
    src = form.origin
    show = lambda *v: sp.sstr(form.in_var(sp.diff(layer, *v)))  # noqa: E731
    first = {a: _derivative(form, a) for a in wrt}
    # d2y/dw2 = 0 (y is linear in weight): the one pair left out.
    pairs = [(a, b) for i, a in enumerate(wrt) for b in wrt[i:] if (a, b) != (weight, weight)]
    second = {(a, b): _derivative(form, a, b) for a, b in pairs}
    at = lambda a, b: second.get((a, b)) or second.get((b, a))  # noqa: E731
    hvp = [(f"h_{a.name}", _combination(
        {b: grad * tangent(b, "v") for b in wrt if at(a, b)}, {b: at(a, b) for b in wrt if at(a, b)}))
        for a in wrt]
    back_doc = "\n".join(f"    grad_{a.name} = grad * {show(a)}" for a in wrt)
    second_doc = "\n".join(f"    d2y/d{a.name}d{b.name} = {show(a, b)}" for a, b in pairs)
    return (
        Function(f"{name}_forward", (x, *form.params, weight, bias),
                 (("y", _rewrite(form, layer)),), f"{name}: y = {pretty}\n\n{src}", prologue),
        Function(f"{name}_forward_nobias", (x, *form.params, weight),
                 (("y", _rewrite(form, layer.subs(bias, 0))),),
                 f"{name} without bias: y = {sp.sstr(form.in_var(layer.subs(bias, 0)))}", prologue),
        Function(f"{name}_backward", (grad, x, *form.params, weight),
                 tuple((f"grad_{a.name}", Rewritten(grad * r.expr, r.defs)) for a, r in first.items()),
                 f"{name}: the derivatives of y = {pretty}, times grad, element by element "
                 f"(the caller sums over the broadcast dimensions):\n\n{back_doc}", prologue),
        Function(f"{name}_jvp", (x, *form.params, weight, *(tangent(a, "t") for a in wrt)),
                 (("y_t", _combination({a: tangent(a, "t") for a in wrt}, first)),),
                 f"{name}: the forward-mode product of y = {pretty}, y_t = sum over a of "
                 "a_t dy/da (the caller adds bias_t).", prologue),
        Function(f"{name}_hvp", (grad, x, *form.params, weight, *(tangent(a, "v") for a in wrt)),
                 tuple(hvp),
                 f"{name}: the second derivatives of y = {pretty} along (x_v, the scalars', "
                 "weight_v): h_a = grad * sum over b of b_v d2y/(da db), element by element "
                 f"(the caller sums over the broadcast dimensions). Every nonzero one:\n\n"
                 f"{second_doc}", prologue),
    )
