"""A user's element-wise formula, from text to SymPy, without evaluating Python.

``parse("tanh(alpha*x)")`` reads the text with :mod:`ast` and builds the expression from the
allowed nodes alone: numbers, names, ``+ - * / **`` (``^`` is read as ``**``, as SymPy
does), unary minus and plus, and calls of the functions in :data:`FUNCTIONS` with
positional arguments. ``x`` is the channel's input (the canonical real ``x``), ``pi`` and
``E`` are the constants, and every other name is a real scalar parameter. Anything else is a
:class:`FormulaError` naming what it met. A float literal is the exact rational it is written
as (``0.5`` is 1/2). Nothing of the text is ever passed to ``eval``, ``sympify`` or
``parse_expr``.
"""
from __future__ import annotations

import ast
import keyword
from typing import Callable

import sympy as sp

from .symbols import x

#: The functions a formula may call, by the names it may use. Which of them (and of their
#: derivatives) can be printed as torch code is the printer's table, not this one.
FUNCTIONS: dict[str, Callable] = {
    "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log,
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "atan": sp.atan,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "asinh": sp.asinh, "atanh": sp.atanh,
    "erf": sp.erf, "erfc": sp.erfc, "abs": sp.Abs, "Abs": sp.Abs, "sign": sp.sign,
    "besselj": sp.besselj,
}

CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

MAX_LENGTH = 2000     # characters of text
MAX_EXPONENT = 1000   # |n| of a numeric power a**n with a a number (no 9**9**9)


class FormulaError(ValueError):
    """The text is not a formula of the whitelist; the message names the culprit."""


_BINARY: dict[type, Callable] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: _power(a, b),
}

_UNARY: dict[type, Callable] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}


#: How an error names a construct outside the whitelist (else by its ast class).
_CONSTRUCTS = {ast.BoolOp: "and/or", ast.Compare: "a comparison", ast.Attribute: "attribute "
               "access", ast.Subscript: "indexing", ast.Lambda: "lambda", ast.IfExp: "if/else",
               ast.NamedExpr: "assignment", ast.JoinedStr: "an f-string", ast.List: "a list",
               ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set"}


def _power(base, exp):
    if base.is_Number and exp.is_Number and abs(exp) > MAX_EXPONENT:
        raise FormulaError(f"exponent {exp} of the number {base} is too large")
    return base**exp


class _Builder:
    """One method per allowed ast node; any other node is an error naming its text."""

    def __init__(self, text: str):
        self.text = text

    def _where(self, node) -> str:
        return ast.get_source_segment(self.text, node) or type(node).__name__

    def build(self, node) -> sp.Expr:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _CONSTRUCTS.get(type(node), type(node).__name__)
            raise FormulaError(f"{what} not allowed: {self._where(node)!r}")
        return method(node)

    def _Expression(self, node):
        return self.build(node.body)

    def _Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FormulaError(f"constant not allowed: {self._where(node)!r}")
        if v != v or v in (float("inf"), float("-inf")):
            raise FormulaError(f"not a finite number: {self._where(node)!r}")
        return sp.Integer(v) if isinstance(v, int) else sp.Rational(repr(v))

    def _Name(self, node):
        name = node.id
        if name == x.name:
            return x
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise FormulaError(f"{name!r} is a function: call it, e.g. {name}(x)")
        return sp.Symbol(name, real=True)

    def _BinOp(self, node):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise FormulaError(f"operator not allowed: {self._where(node)!r}")
        return op(self.build(node.left), self.build(node.right))

    def _UnaryOp(self, node):
        op = _UNARY.get(type(node.op))
        if op is None:
            raise FormulaError(f"operator not allowed: {self._where(node)!r}")
        return op(self.build(node.operand))

    def _Call(self, node):
        if not isinstance(node.func, ast.Name):
            raise FormulaError(f"only named functions may be called: {self._where(node)!r}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise FormulaError(f"unknown function {name!r} (functions: {', '.join(FUNCTIONS)})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise FormulaError(f"{name}() takes positional arguments only: {self._where(node)!r}")
        try:
            return FUNCTIONS[name](*(self.build(a) for a in node.args))
        except TypeError as e:  # the wrong number of arguments
            raise FormulaError(f"{self._where(node)!r}: {e}") from None


def parse(text: str) -> sp.Expr:
    """The SymPy expression written in ``text``: x, real scalar parameters, constants.

    Raises :class:`FormulaError` (a ValueError) naming the first thing outside the
    whitelist, TypeError if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"formula must be a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula too long ({len(text)} characters, at most {MAX_LENGTH})")
    if not text.strip():
        raise FormulaError("empty formula")
    text = text.strip().replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"not an expression: {e.msg} in {text!r}") from None
    try:
        expr = _Builder(text).build(tree)
    except RecursionError:
        raise FormulaError("formula nested too deeply") from None
    if not isinstance(expr, sp.Expr):
        raise FormulaError(f"not a real-valued expression: {text!r}")
    return expr


def identifier(name: str, what: str) -> str:
    """``name`` if it can name a Python function argument or module attribute, else a
    FormulaError saying why (``what``: the role, e.g. "form name")."""
    if not name.isidentifier() or not name.isascii():
        raise FormulaError(f"{what} {name!r} is not a Python identifier")
    if keyword.iskeyword(name) or name.startswith("_"):
        raise FormulaError(f"{what} {name!r} is reserved (a keyword or a private name)")
    return name
