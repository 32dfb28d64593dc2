"""Text to SymPy without evaluating Python: a whitelist walk over Python's ``ast``.

``sympify`` and ``parse_expr`` evaluate the text as Python, so a string such as
``"__import__('os').system(...)"`` runs. Here the text is only parsed by :mod:`ast`, and a
SymPy expression is built from the allowed nodes alone: numbers, the given symbols and
constants, ``+ - * / **`` (``^`` is read as ``**``, as SymPy does), unary minus, and calls
of the functions in :data:`FUNCTIONS` with positional arguments. Anything else is a :class:`ParseError`
naming what it met. A float literal becomes the exact rational it is written as (``0.5``
is 1/2), as the derivation works in exact arithmetic.
"""
from __future__ import annotations

import ast
import io
import keyword
import tokenize
from typing import Callable, Mapping

import sympy as sp

#: A statistic over the channels: inside it, x stands for every channel x_j in turn.
MEAN = sp.Function("mean")
SUM = sp.Function("sum")

#: The functions a text may call, by the names it may use.
FUNCTIONS: dict[str, Callable] = {
    "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log,
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "atan": sp.atan,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "asinh": sp.asinh, "atanh": sp.atanh,
    "erf": sp.erf, "abs": sp.Abs, "Abs": sp.Abs, "sign": sp.sign,
    "Max": sp.Max, "Min": sp.Min, "Eq": sp.Eq,
    "mean": MEAN, "sum": SUM,
}

CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

MAX_LENGTH = 5000         # characters of text
MAX_EXPONENT = 1000       # |n| of a numeric power a**n with a a number (no 9**9**9)


class ParseError(ValueError):
    """The text is not an expression of the whitelist; the message names the culprit."""


_BINARY: dict[type, Callable] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: _power(a, b),
}

_UNARY: dict[type, Callable] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}


#: How the error names a construct outside the whitelist (else by its ast class).
_CONSTRUCTS = {ast.BoolOp: "and/or", ast.Compare: "a comparison", ast.Attribute: "attribute "
               "access", ast.Subscript: "indexing", ast.Lambda: "lambda", ast.IfExp: "if/else",
               ast.NamedExpr: "assignment", ast.JoinedStr: "an f-string", ast.List: "a list",
               ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set"}


def _power(base, exp):
    if base.is_Number and exp.is_Number and abs(exp) > MAX_EXPONENT:
        raise ParseError(f"exponent {exp} of the number {base} is too large")
    return base**exp


class _Builder:
    def __init__(self, text: str, symbols: Mapping[str, sp.Symbol],
                 scalar: Callable[[str], sp.Symbol] | None = None):
        self.text, self.symbols, self.scalar = text, symbols, scalar

    def _where(self, node) -> str:
        return ast.get_source_segment(self.text, node) or type(node).__name__

    def build(self, node) -> sp.Basic:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            what = _CONSTRUCTS.get(type(node), type(node).__name__)
            raise ParseError(f"{what} not allowed: {self._where(node)!r}")
        return method(node)

    def _Expression(self, node):
        return self.build(node.body)

    def _Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ParseError(f"constant not allowed: {self._where(node)!r}")
        if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
            raise ParseError(f"not a finite number: {self._where(node)!r}")
        return sp.Integer(v) if isinstance(v, int) else sp.Rational(repr(v))

    def _Name(self, node):
        name = node.id
        if name in self.symbols:
            return self.symbols[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise ParseError(f"{name!r} is a function: call it, e.g. {name}(x)")
        if self.scalar is not None:
            return self.scalar(name)
        raise ParseError(f"unknown name {name!r} (known symbols: "
                         f"{', '.join(sorted(self.symbols))}; constants: "
                         f"{', '.join(CONSTANTS)})")

    def _BinOp(self, node):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ParseError(f"operator not allowed: {self._where(node)!r}")
        return op(self.build(node.left), self.build(node.right))

    def _UnaryOp(self, node):
        op = _UNARY.get(type(node.op))
        if op is None:
            raise ParseError(f"operator not allowed: {self._where(node)!r}")
        return op(self.build(node.operand))

    def _Call(self, node):
        if not isinstance(node.func, ast.Name):
            raise ParseError(f"only named functions may be called: {self._where(node)!r}")
        name = node.func.id
        if name not in FUNCTIONS:
            what = "a symbol, not a function" if name in self.symbols else "an unknown function"
            raise ParseError(f"{name!r} is {what} (functions: {', '.join(FUNCTIONS)})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ParseError(f"{name}() takes positional arguments only: {self._where(node)!r}")
        return FUNCTIONS[name](*(self.build(a) for a in node.args))


def _keyword(text: str) -> str | None:
    """The first Python keyword among the names of ``text`` (lambda, in, is, ...), which
    make it a syntax error when used as a symbol's name."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and keyword.iskeyword(tok.string):
                return tok.string
    except (tokenize.TokenError, SyntaxError):  # unbalanced brackets, a bad character
        pass
    return None


def parse(text: str, symbols: Mapping[str, sp.Symbol],
          scalar: Callable[[str], sp.Symbol] | None = None) -> sp.Basic:
    """The SymPy expression written in ``text``, over ``symbols`` (name -> Symbol); with
    ``scalar``, any other name (not a constant or function) is ``scalar(name)``.

    Raises :class:`ParseError` (a ValueError) naming the first thing outside the whitelist,
    TypeError if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ParseError(f"text too long ({len(text)} characters, at most {MAX_LENGTH})")
    text = text.strip().replace("^", "**")   # x^2 is a power, with the power's precedence
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        word = _keyword(text)
        if word is not None:
            raise ParseError(f"{word!r} is a Python keyword: it cannot name a symbol "
                             f"(rename it) in {text!r}") from None
        raise ParseError(f"not an expression: {e.msg} in {text!r}") from None
    except (RecursionError, MemoryError):   # Python's parser on deep nesting
        raise ParseError("expression nested too deeply") from None
    try:
        return _Builder(text, symbols, scalar).build(tree)
    except RecursionError:
        raise ParseError("expression nested too deeply") from None
    except (TypeError, AttributeError) as e:  # e.g. a function called with wrong arity
        raise ParseError(f"cannot build {text!r}: {e}") from None
