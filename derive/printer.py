"""TorchPrinter: SymPy expressions to PyTorch source, built on SymPy's PythonCodePrinter.

One ``_print_X`` per node; known functions are a table; an unsupported node raises an
error naming it. Powers print as multiplications, square roots as torch.sqrt/torch.rsqrt
(never ``pow(x, 2)``), ``bias + weight * f`` as one ``torch.addcmul``.
"""
from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from .rewrites import CopySign, Hypot, Sigmoid


PREC_MUL = PRECEDENCE["Mul"]
PREC_POW = PRECEDENCE["Pow"]


class UnsupportedNode(NotImplementedError):
    """The printer met a node it has no torch spelling for."""


#: SymPy function -> torch function.
KNOWN_FUNCTIONS = {
    sp.tanh: "torch.tanh",
    sp.erf: "torch.erf",
    sp.cosh: "torch.cosh",
    sp.exp: "torch.exp",
    sp.Abs: "torch.abs",
    sp.sign: "torch.sign",
    Hypot: "torch.hypot",
    expm1: "torch.expm1",
    Sigmoid: "torch.sigmoid",
    CopySign: "torch.copysign",
}


#: Relational class -> Python operator (elementwise on tensors).
RELATIONS = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
             sp.GreaterThan: ">=", sp.Equality: "==", sp.Unequality: "!="}


class Branches:
    """Piecewise, Max/Min and comparisons as elementwise calls, for a printer whose
    ``WHERE`` and ``MINMAX`` name them (``MINMAX_EXTRA``: arguments appended to each)."""

    WHERE: str
    MINMAX: dict
    MINMAX_EXTRA = ""

    def _print_MinMaxBase(self, expr):
        first, *rest = [self._print(a) for a in expr.args]
        for other in rest:
            first = f"{self.MINMAX[expr.func]}({first}, {other}{self.MINMAX_EXTRA})"
        return first

    _print_Max = _print_Min = _print_MinMaxBase

    def _print_Piecewise(self, expr):
        """(v1, c1), ..., (vn, True) -> where(c1, v1, where(..., vn))."""
        *pieces, (last, cond) = expr.args
        if cond != sp.true:
            return self._print_not_supported(expr)
        out = self._print(last)
        for value, c in reversed(pieces):
            out = f"{self.WHERE}({self._print(c)}, {self._print(value)}, {out})"
        return out

    def _print_Relational(self, expr):
        op = RELATIONS.get(type(expr))
        if op is None:
            return self._print_not_supported(expr)
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"


class TorchPrinter(Branches, PythonCodePrinter):
    printmethod = "_torchcode"
    WHERE = "torch.where"
    #: Max/Min -> torch's elementwise (NaN-propagating) maximum/minimum.
    MINMAX = {sp.Max: "torch.maximum", sp.Min: "torch.minimum"}

    def __init__(self, settings=None):
        super().__init__({"strict": True, **(settings or {})})

    def _print_not_supported(self, expr):
        raise UnsupportedNode(f"TorchPrinter cannot print {type(expr).__name__}: {expr}")

    def _print_Function(self, expr):
        name = KNOWN_FUNCTIONS.get(expr.func)
        if name is None:
            return self._print_not_supported(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    _print_tanh = _print_cosh = _print_exp = _print_Abs = _print_erf = _print_Function
    _print_sign = _print_Function   # PythonCodePrinter's is scalar code (math.copysign)

    def _print_Hypot(self, expr):
        return self._print_Function(expr)

    _print_expm1 = _print_Sigmoid = _print_Hypot

    def _print_CopySign(self, expr):
        """copysign(-m, s) = copysign(m, s): copysign takes only the magnitude of its first
        argument, so a negation there is dropped (one op fewer)."""
        m, s = expr.args
        if m.could_extract_minus_sign():
            m = -m
        return f"torch.copysign({self._print(m)}, {self._print(s)})"

    def _print_ChannelSum(self, expr):
        return f"torch.sum({self._print(expr.args[0])}, dim=-1, keepdim=True)"

    def _square(self, base) -> str:
        if base.is_Atom:
            b = self._print(base)
            return f"{b} * {b}"
        return f"torch.square({self._print(base)})"

    def _product(self, base, n: int) -> str:
        b = self._print(base) if base.is_Atom else f"({self._print(base)})"
        return " * ".join([b] * n)

    def _print_Pow(self, expr, rational=False):
        """Square roots as sqrt/rsqrt, integer powers up to 4 as products (never pow)."""
        base, e = expr.args
        if expr.is_number:        # a constant such as 1/sqrt(pi): its float64 value
            return repr(float(expr))
        table = {
            sp.Rational(1, 2): lambda: f"torch.sqrt({self._print(base)})",
            sp.Rational(-1, 2): lambda: f"torch.rsqrt({self._print(base)})",
            sp.Integer(2): lambda: f"({self._square(base)})",
            sp.Integer(-1): lambda: f"(1 / {self.parenthesize(base, PREC_POW)})",
            sp.Integer(-2): lambda: f"(1 / ({self._square(base)}))",
            **{sp.Integer(n): (lambda n=n: f"({self._product(base, n)})") for n in (3, 4)},
            **{sp.Integer(-n): (lambda n=n: f"(1 / ({self._product(base, n)}))") for n in (3, 4)},
        }
        if e not in table:
            return self._print_not_supported(expr)
        return table[e]()

    def _print_Mul(self, expr):
        """Factors joined by *, negative integer powers as one division (rsqrt stays a factor).

        v^2 times the rest prints as v*(v*rest): where v*v overflows, the rest has underflowed
        to 0 (x^2 sech(x)^2 at |x| > 1.3e154 in float64, say), and v*(v*0) is the true 0 where
        (v*v)*0 is inf*0 = NaN."""
        coeff, factors = expr.as_coeff_mul()
        num = [f for f in factors if not (f.is_Pow and f.exp.is_Integer and f.exp < 0)]
        squared = [f.base for f in num if f.is_Pow and f.exp == 2 and f.base.is_Atom]
        if squared and (len(num) > 1 or coeff != 1):
            v = self._print(squared[0])
            rest = self.parenthesize(expr / squared[0] ** 2, PREC_MUL)
            return f"{v}*({v}*{rest})"
        den = [f.base ** -f.exp for f in factors if f not in num]
        sign = "-" if coeff < 0 else ""
        coeff = abs(coeff)
        parts = ([] if coeff == 1 else [self._print(coeff)])
        parts += [self.parenthesize(f, PREC_MUL) for f in num]
        text = "*".join(parts) or "1"
        if den:
            d = "*".join(self.parenthesize(f, PREC_MUL) for f in den)
            text += f"/{d}" if len(den) == 1 and not den[0].is_Mul else f"/({d})"
        return sign + text

    def _print_Add(self, expr, order=None):
        bias = sp.Symbol("bias", real=True)
        terms = expr.args
        if len(terms) == 2 and bias in terms:
            other = terms[0] if terms[1] == bias else terms[1]
            weight = sp.Symbol("weight", real=True)
            if other.is_Mul and weight in other.args:
                rest = other / weight
                return f"torch.addcmul(bias, weight, {self._print(rest)})"
        return super()._print_Add(expr, order)

    def _print_Rational(self, expr):
        return repr(float(expr)) if expr.q != 1 else str(expr.p)

    def _print_NumberSymbol(self, expr):
        return repr(float(expr))

    _print_Pi = _print_NumberSymbol

    _print_Half = _print_Rational


def route_math_module(cls) -> None:
    """PythonCodePrinter prints the math module's functions and constants (math.sinh,
    math.pi): none of them runs on tensors, so each goes through ``cls``'s table and raises
    unless ``cls`` (or a mixin of its own, not PythonCodePrinter) prints it."""
    own = [k for k in cls.__mro__ if not issubclass(PythonCodePrinter, k)]

    def printed(name: str) -> bool:
        return any(f"_print_{name}" in k.__dict__ for k in own)

    for name in PythonCodePrinter._kf:
        if not printed(name):
            setattr(cls, f"_print_{name}", cls._print_Function)
    for name in PythonCodePrinter._kc:
        if not printed(name):
            setattr(cls, f"_print_{name}", cls._print_not_supported)


route_math_module(TorchPrinter)


def torch_code(expr) -> str:
    return TorchPrinter().doprint(expr)
