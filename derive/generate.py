"""Generated files: what they contain, writing them, and finding the stale ones.

``TARGETS`` maps a path (relative to the repository root) to the function that renders
its content. Content is deterministic: no timestamps, versions or absolute paths.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from . import render
from .catalog import catalog

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m derive generate"


def _notes() -> str:
    return render.markdown(catalog())


def targets() -> dict[str, Callable[[], str]]:
    """Relative path -> renderer, for every generated file."""
    from . import kernelgen
    from .codegen import sources  # the PyTorch sources, by file name

    out = {"paper_notes/derivation.md": _notes}
    out.update(sources())
    out.update(kernelgen.sources())  # the Triton kernels
    return out


def write(root: Path | None = None) -> list[str]:
    """Write every generated file; return the paths that changed."""
    root = root or ROOT
    changed = []
    for rel, render_fn in targets().items():
        path = root / rel
        text = render_fn()
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed


def stale(root: Path | None = None) -> list[tuple[str, str]]:
    """(path, unified diff) for every generated file that is missing or out of date."""
    root = root or ROOT
    out = []
    for rel, render_fn in targets().items():
        path = root / rel
        want = render_fn()
        have = path.read_text() if path.exists() else ""
        if have != want:
            diff = difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                        f"{rel} (checked in)", f"{rel} (generated)", n=1)
            out.append((rel, "".join(diff)))
    return out


def orphans(root: Path | None = None, folder: str = "numeric/generated") -> list[str]:
    """Files in the generated folder that no target produces (left behind by a rename)."""
    root = root or ROOT
    base = root / folder
    if not base.is_dir():
        return []
    known = set(targets())
    return sorted(str(p.relative_to(root)) for p in base.rglob("*.py")
                  if str(p.relative_to(root)) not in known)
