"""Printers: SymPy expressions to PyTorch and to Triton source, on one base.

``ElementwisePrinter`` (on SymPy's PythonCodePrinter) prints what both targets share: one
``_print_X`` per node, known functions from a table, an unsupported node raising an error
that names it; powers as multiplications and square roots (never ``pow(x, 2)`` or ``**``),
products with negative powers as one division, v^2 times a rest as v*(v*rest), Piecewise,
Max/Min and comparisons as elementwise calls, numbers as float64 literals. A target names
its module's functions (``FUNCTIONS``, ``SQRT``, ``RSQRT``, ``WHERE``, ``MINMAX``) and adds
what only it has:

- ``TorchPrinter``: tanh, cosh, hypot, the channel sum, squares as
  ``v * v`` or torch.square, ``bias + weight * f`` as one torch.addcmul.
- ``TritonPrinter``: core ``tl`` math only (exp, abs, erf, sqrt, rsqrt, where, maximum,
  minimum): Triton's interpreter cannot run libdevice, so tanh, cosh and hypot must be
  rewritten by the kernel rules (``derive.rules``) first, and here they raise; maximum and
  minimum propagate NaN (Triton's default picks the number).
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from .rules import Hypot
from .symbols import bias, weight

PREC_MUL = PRECEDENCE["Mul"]
PREC_POW = PRECEDENCE["Pow"]

#: Relational class -> Python operator (elementwise on tensors).
RELATIONS = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
             sp.GreaterThan: ">=", sp.Equality: "==", sp.Unequality: "!="}
#: Integer powers printed as products of the base (and their reciprocals as one division).
PRODUCT_POWERS = (2, 3, 4)


class UnsupportedNode(NotImplementedError):
    """The printer met a node it has no spelling for."""


class ElementwisePrinter(PythonCodePrinter):
    """What the torch and Triton printers share; a target fills in the class attributes."""

    NAME: str                 # for error messages
    FUNCTIONS: dict           # SymPy function -> the target's function
    POW: str | None = None    # the target's power with an integer exponent, if it has one
    SQRT: str
    RSQRT: str
    WHERE: str
    MINMAX: dict              # sp.Max/sp.Min -> the target's elementwise function
    MINMAX_EXTRA = ""         # arguments appended to each maximum/minimum call

    def __init__(self, settings=None):
        super().__init__({"strict": True, **(settings or {})})

    def _print_not_supported(self, expr):
        raise UnsupportedNode(f"{self.NAME} cannot print {type(expr).__name__}: {expr}")

    def _print_Function(self, expr):
        name = self.FUNCTIONS.get(expr.func)
        if name is None:
            return self._print_not_supported(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    # -- branches --

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

    # -- powers and products --

    def _product(self, base, n: int) -> str:
        b = self._print(base) if base.is_Atom else f"({self._print(base)})"
        return " * ".join([b] * n)

    def _power(self, base, n: int) -> str:
        """base^n, n > 0, parenthesised: a product for n in PRODUCT_POWERS, else the
        target's POW with the integer n (x^5 in an hvp of x^7)."""
        if n in PRODUCT_POWERS:
            return f"({self._product(base, n)})"
        if self.POW is None:
            return self._print_not_supported(base**n)
        return f"{self.POW}({self._print(base)}, {n})"

    def _print_Pow(self, expr, rational=False):
        """Square roots as sqrt/rsqrt, integer powers up to 4 as products (beyond, the
        target's POW) and half-integer ones as such a power times sqrt or rsqrt."""
        base, e = expr.args
        if expr.is_number:        # a constant such as 1/sqrt(pi): its float64 value
            return repr(float(expr))
        if e == sp.Rational(1, 2):
            return f"{self.SQRT}({self._print(base)})"
        if e == sp.Rational(-1, 2):
            return f"{self.RSQRT}({self._print(base)})"
        if e == -1:
            return f"(1 / {self.parenthesize(base, PREC_POW)})"
        if e.is_Integer and e > 1:
            return self._power(base, int(e))
        if e.is_Integer and e < -1:
            return f"(1 / {self._power(base, -int(e))})"
        if e.is_Rational and e.q == 2:
            # b^(k + 1/2) = b^k sqrt(b), b^-(k + 1/2) = rsqrt(b) / b^k (x/sqrt(1 + x^2)'s
            # derivative is (1 + x^2)^(-3/2))
            k = int(abs(e) - sp.S.Half)
            rest = self._power(base, k) if k > 1 else self.parenthesize(base, PREC_POW)
            if e > 0:
                return f"({rest}*{self.SQRT}({self._print(base)}))"
            return f"({self.RSQRT}({self._print(base)})/{rest})"
        if e.is_Rational and e.q & (e.q - 1) == 0:
            return self._root(base, e)
        return self._print_not_supported(expr)

    def _root(self, base, e) -> str:
        """b^(p/2^k), k >= 2 (sqrt(sqrt(x)) is x^(1/4)): the square root taken k times,
        then its power p."""
        root = self._print(base)
        for _ in range(e.q.bit_length() - 1):
            root = f"{self.SQRT}({root})"
        n = abs(e.p)
        if n == 1:
            text = root
        elif n in PRODUCT_POWERS:
            text = "(" + " * ".join([root] * n) + ")"
        elif self.POW is not None:
            text = f"{self.POW}({root}, {n})"
        else:
            return self._print_not_supported(base**e)
        return text if e > 0 else f"(1 / {text})"

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

    # -- numbers --

    def _print_Rational(self, expr):
        return repr(float(expr)) if expr.q != 1 else str(expr.p)

    _print_Half = _print_Rational

    def _print_Integer(self, expr):
        """Beyond 2^53 as a float (exact for the powers of two the rules use): torch takes no
        Python int beyond int64 (2^64 in torch.where raises)."""
        return str(expr.p) if abs(expr.p) <= 2**53 else repr(float(expr))

    def _print_NumberSymbol(self, expr):
        return repr(float(expr))

    _print_Pi = _print_Exp1 = _print_NumberSymbol


class TorchPrinter(ElementwisePrinter):
    printmethod = "_torchcode"
    NAME = "TorchPrinter"
    FUNCTIONS = {sp.tanh: "torch.tanh", sp.erf: "torch.erf", sp.cosh: "torch.cosh",
                 sp.exp: "torch.exp", sp.Abs: "torch.abs", sp.sign: "torch.sign",
                 Hypot: "hypot", sp.sinh: "torch.sinh", sp.log: "torch.log",
                 sp.atan: "torch.atan", sp.atanh: "torch.atanh", sp.asinh: "torch.asinh",
                 sp.sin: "torch.sin", sp.cos: "torch.cos", sp.tan: "torch.tan"}
    SQRT, RSQRT, WHERE, POW = "torch.sqrt", "torch.rsqrt", "torch.where", "torch.pow"
    #: Max/Min -> torch's elementwise (NaN-propagating) maximum/minimum.
    MINMAX = {sp.Max: "torch.maximum", sp.Min: "torch.minimum"}

    _print_tanh = _print_cosh = _print_exp = _print_Abs = _print_erf = \
        ElementwisePrinter._print_Function
    _print_sign = ElementwisePrinter._print_Function  # PythonCodePrinter's is scalar code

    def _print_Hypot(self, expr):
        """hypot(a, b), a number argument as a tensor like the other (hypot(1, x) of a
        user's sqrt(1 + x^2): the module's hypot takes tensors)."""
        a, b = expr.args
        return "hypot({}, {})".format(*(
            f"torch.full_like({self._print(other)}, {self._print(v)})" if v.is_number
            else self._print(v) for v, other in ((a, b), (b, a))))

    def _print_ChannelSum(self, expr):
        return f"torch.sum({self._print(expr.args[0])}, dim=-1, keepdim=True)"

    def _power(self, base, n: int) -> str:
        """A square as b * b (an atom) or torch.square (one op on an expression)."""
        if n == 2 and not base.is_Atom:
            return f"(torch.square({self._print(base)}))"
        return super()._power(base, n)

    def _print_Add(self, expr, order=None):
        terms = expr.args
        if len(terms) == 2 and bias in terms:
            other = terms[0] if terms[1] == bias else terms[1]
            if other.is_Mul and weight in other.args:
                return f"torch.addcmul(bias, weight, {self._print(other / weight)})"
        return super()._print_Add(expr, order)


class TritonPrinter(ElementwisePrinter):
    printmethod = "_tritoncode"
    NAME = "TritonPrinter"
    FUNCTIONS = {sp.exp: "tl.exp", sp.Abs: "tl.abs", sp.erf: "tl.erf"}
    SQRT, RSQRT, WHERE = "tl.sqrt", "tl.rsqrt", "tl.where"
    #: SymPy Min/Max -> tl function; NaN propagates as in torch.minimum/maximum.
    MINMAX = {sp.Max: "tl.maximum", sp.Min: "tl.minimum"}
    MINMAX_EXTRA = ", propagate_nan=tl.PropagateNan.ALL"


def route_math_module(cls) -> None:
    """PythonCodePrinter prints the math module's functions and constants (math.sinh,
    math.pi): none of them runs on tensors, so each goes through ``cls``'s table and raises
    unless ``cls`` (or a class of its own, not PythonCodePrinter) prints it."""
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
route_math_module(TritonPrinter)


def torch_code(expr) -> str:
    return TorchPrinter().doprint(expr)


def triton_code(expr) -> str:
    return TritonPrinter().doprint(expr)
