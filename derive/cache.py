"""A disk cache of derived results, so that a derivation answers at once after its first run.

A result is stored once it has been derived and every obligation of every step checked; it is
read back only under the same key: the bytes of every source file of ``derive/`` and the
versions of SymPy, mpmath and Python. Any change to the derivation, a rule, a check or a
library makes a new key, so a stored result cannot be stale. Files live in
``$DYNORM_CACHE`` (default ``$XDG_CACHE_HOME/dynorm`` or ``~/.cache/dynorm``), one folder per
key; ``DYNORM_CACHE=off`` turns the cache off. An unreadable or unwritable cache is passed
over: the result is derived again.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from functools import cache
from pathlib import Path

import mpmath
import sympy

HERE = Path(__file__).resolve().parent


@cache
def key() -> str:
    """derive's own source and the library versions, hashed."""
    h = hashlib.sha256()
    for path in sorted(HERE.rglob("*.py")):
        h.update(path.relative_to(HERE).as_posix().encode() + b"\0" + path.read_bytes())
    h.update(f"sympy {sympy.__version__} mpmath {mpmath.__version__} {sys.version}".encode())
    return h.hexdigest()[:32]


def folder() -> Path | None:
    """Where this key's results live, or None when the cache is off."""
    where = os.environ.get("DYNORM_CACHE", "")
    if where == "off":
        return None
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        where = Path(base) / "dynorm"
    return Path(where) / key()


def _path(name: str) -> Path | None:
    base = folder()
    return None if base is None else base / f"{name}.pickle"


def has(name: str) -> bool:
    path = _path(name)
    return path is not None and path.is_file()


def _read(path: Path | None):
    """The pickle at path, or None (no cache, no file, or a broken one: a miss, computed
    again and overwritten)."""
    if path is None or not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except Exception:  # noqa: BLE001 - a broken file is a miss
        return None


def _write(path: Path | None, value) -> None:
    """value pickled to path, atomically; a failure to write is passed over."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False) as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(f.name, path)
    except Exception:  # noqa: BLE001 - read-only home, full disk: the cache is optional
        pass


def load(name: str):
    """The stored result called ``name``, or None."""
    return _read(_path(name))


def store(name: str, value) -> None:
    """Store a derived (and checked) result; a failure to write is passed over."""
    _write(_path(name), value)


# -- references: mpmath's values of a formula over every value of a dtype ---------------------

def references() -> Path | None:
    """Where the mpmath references over every value of a dtype live (``derive.testing``):
    beside the derivations' folders, in ``references``; a file's name is the hash of what it
    holds (the formula, its parameters' values, the derivative, the dtype and the libraries
    that evaluated it), so it does not change with derive's source. None when the cache is
    off."""
    base = folder()
    return None if base is None else base.parent / "references"


def _reference(name: str) -> Path | None:
    base = references()
    return None if base is None else base / f"{name}.pickle"


def load_reference(name: str):
    """The stored reference called ``name``, or None."""
    return _read(_reference(name))


def store_reference(name: str, value) -> None:
    """Store a reference; a failure to write is passed over."""
    _write(_reference(name), value)
