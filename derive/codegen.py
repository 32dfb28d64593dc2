"""Generated PyTorch sources (filled in by the code printers)."""
from __future__ import annotations


def sources() -> dict:
    return {}
