"""Writing an experiment's outputs: tables as CSV and Markdown, figures as PNG."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Sequence


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(out: Path, stem: str, header: Sequence[str], rows: Sequence[Sequence]) -> list[Path]:
    """Write ``stem.csv`` and ``stem.md``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[_cell(v) for v in row] for row in rows])
    md_path.write_text(markdown_table(header, rows))
    return [csv_path, md_path]


def save_figure(fig, out: Path, stem: str) -> Path:
    """Save a matplotlib figure as ``stem.png`` (150 dpi) and close it."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


class Progress:
    """Prints a line with the elapsed time; ``progress(msg)`` is all an experiment calls."""

    def __init__(self, stream=None):
        import sys

        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=self.stream, flush=True)


def table_markdown(out: Path, stem: str) -> str:
    """The Markdown of a table written by ``write_table``, for inclusion in a summary."""
    return (out / f"{stem}.md").read_text()


def write_summary(out: Path, name: str, paragraphs: Sequence[str]) -> Path:
    """Write ``summary.md``: a ``## name`` heading, then the paragraphs, blank-line separated."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.md"
    path.write_text(f"## {name}\n\n" + "\n\n".join(p.strip() for p in paragraphs) + "\n")
    return path
