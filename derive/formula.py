"""A user's element-wise formula, from text to SymPy, without evaluating Python.

``parse("tanh(alpha*x)")`` reads the text with the whitelist of :mod:`derive.parser`
(numbers, names, ``+ - * / **``, unary minus, calls of its functions; never ``eval``,
``sympify`` or ``parse_expr``): ``x`` is the channel's input (the canonical real ``x``),
``pi`` and ``E`` are the constants, and every other name is a real scalar parameter. A layer
formula is element-wise, so the statistics over the channels (``mean``, ``sum``) are
refused here, and so are ``Max``/``Min`` (torch.maximum takes no number) and relations.
"""
from __future__ import annotations

import keyword
import unicodedata

import sympy as sp

from .parser import MEAN, SUM, ParseError
from .parser import parse as _parse
from .symbols import x


class FormulaError(ParseError):
    """The text is not an element-wise formula of the whitelist; the message says why."""


#: Functions of the whitelist that a layer formula may not call, and why.
REFUSED = {MEAN: "a statistic over the channels (a layer formula is element-wise)",
           SUM: "a statistic over the channels (a layer formula is element-wise)",
           sp.Max: "not printable for tensors with a number argument",
           sp.Min: "not printable for tensors with a number argument"}


def _scalar(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def parse(text: str) -> sp.Expr:
    """The SymPy expression written in ``text``: x, real scalar parameters, constants.

    Raises :class:`FormulaError` (a ValueError) naming the first thing outside the
    whitelist, TypeError if ``text`` is not a string.
    """
    if isinstance(text, str) and not text.strip():
        raise FormulaError("empty formula")
    try:
        expr = _parse(text, {x.name: x}, _scalar)
    except ParseError as e:
        raise FormulaError(str(e)) from None
    if not isinstance(expr, sp.Expr):
        raise FormulaError(f"not a real-valued expression: {text!r}")
    for f, why in REFUSED.items():
        if expr.has(f):
            raise FormulaError(f"{f.__name__}() is {why}: {text!r}")
    return expr


def identifier(name: str, what: str) -> str:
    """``name`` if it can name a Python function argument or module attribute, else a
    FormulaError saying why (``what``: the role, e.g. "form name")."""
    if not name.isidentifier():
        raise FormulaError(f"{what} {name!r} is not a Python identifier")
    if unicodedata.normalize("NFKC", name) != name:   # Python reads identifiers as NFKC
        raise FormulaError(f"{what} {name!r} would be read by Python as "
                           f"{unicodedata.normalize('NFKC', name)!r}: write it so")
    if keyword.iskeyword(name) or name.startswith("_"):
        raise FormulaError(f"{what} {name!r} is reserved (a keyword or a private name)")
    return name
