"""TritonPrinter: SymPy expressions to Triton (``tl``) source, built on PythonCodePrinter.

SymPy has no Triton printer; this one follows derive/printer.py: one ``_print_X`` per node,
known functions in a table, an unsupported node raises an error naming it. Only core
``tl`` math is known (exp, sqrt, rsqrt, abs, where, maximum, minimum): Triton's interpreter
cannot run libdevice, so tanh, cosh and hypot must be rewritten by the kernel rules of
``rewrites`` before printing, and here they raise. Powers print as multiplications (never
``pow(x, 2)`` or ``**``); maximum and minimum propagate NaN (the default picks the number).
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from .printer import Branches, TorchPrinter, UnsupportedNode, route_math_module

PREC_MUL = PRECEDENCE["Mul"]
PREC_POW = PRECEDENCE["Pow"]

#: SymPy function -> tl function (one argument each).
KNOWN_FUNCTIONS = {
    sp.exp: "tl.exp",
    sp.Abs: "tl.abs",
    sp.erf: "tl.erf",
}

class TritonPrinter(Branches, PythonCodePrinter):
    printmethod = "_tritoncode"
    WHERE = "tl.where"
    #: SymPy Min/Max -> tl function; NaN propagates as in torch.minimum/maximum.
    MINMAX = {sp.Max: "tl.maximum", sp.Min: "tl.minimum"}
    MINMAX_EXTRA = ", propagate_nan=tl.PropagateNan.ALL"

    def __init__(self, settings=None):
        super().__init__({"strict": True, **(settings or {})})

    def _print_not_supported(self, expr):
        raise UnsupportedNode(f"TritonPrinter cannot print {type(expr).__name__}: {expr}")

    def _print_Function(self, expr):
        name = KNOWN_FUNCTIONS.get(expr.func)
        if name is None:
            return self._print_not_supported(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _product(self, base, n: int) -> str:
        b = self._print(base) if base.is_Atom else f"({self._print(base)})"
        return " * ".join([b] * n)

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        if expr.is_number:        # a constant such as 1/sqrt(pi): its float64 value
            return repr(float(expr))
        table = {
            sp.Rational(1, 2): lambda: f"tl.sqrt({self._print(base)})",
            sp.Rational(-1, 2): lambda: f"tl.rsqrt({self._print(base)})",
            sp.Integer(2): lambda: f"({self._product(base, 2)})",
            sp.Integer(3): lambda: f"({self._product(base, 3)})",
            sp.Integer(-1): lambda: f"(1 / {self.parenthesize(base, PREC_POW)})",
            sp.Integer(-2): lambda: f"(1 / ({self._product(base, 2)}))",
        }
        if e not in table:
            return self._print_not_supported(expr)
        return table[e]()

    # Products and numbers print as in TorchPrinter (nothing torch-specific in them).
    _print_Mul = TorchPrinter._print_Mul
    _print_Rational = TorchPrinter._print_Rational
    _print_Half = _print_Rational
    _print_NumberSymbol = _print_Pi = TorchPrinter._print_NumberSymbol


route_math_module(TritonPrinter)


def triton_code(expr) -> str:
    return TritonPrinter().doprint(expr)
