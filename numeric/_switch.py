"""A process-wide choice among a few names: set in code, or read from the environment."""
from __future__ import annotations

import os


class Switch:
    """One of ``choices``; starts from the environment variable ``env`` (or ``default``)."""

    def __init__(self, what: str, choices: tuple[str, ...], env: str, default: str):
        self.what, self.choices = what, choices
        self.value = self._checked(os.environ.get(env, default), env)

    def _checked(self, name: str, what: str) -> str:
        if name not in self.choices:
            raise ValueError(f"{what} must be one of {', '.join(self.choices)}; got {name!r}")
        return name

    def set(self, name: str) -> str:
        """Choose ``name`` for every later call; returns the previous choice."""
        previous, self.value = self.value, self._checked(name, self.what)
        return previous
