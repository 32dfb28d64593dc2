"""``python -m numeric EXPERIMENT --out DIR``: run an experiment, write figures and tables.

Errors are one line and exit 2 (an unknown name, a bad number, an unwritable path).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .experiments import EXPERIMENTS, load
from .experiments.report import Progress

PROG = "python -m numeric"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _writable_dir(text: str) -> Path:
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {e.strerror}") from None
    return path


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run one of dynorm's numerical experiments.")
    names = ", ".join(EXPERIMENTS)
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"], metavar="EXPERIMENT",
                   help=f"one of: {names}, or all")
    p.add_argument("--out", required=True, type=_writable_dir, metavar="DIR",
                   help="folder for the figures (PNG) and tables (CSV, Markdown)")
    p.add_argument("--quick", action="store_true", help="the small configuration of the tests")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    progress = Progress()
    for name in names:
        out = args.out / name if args.experiment == "all" else args.out
        progress(f"{name}: running ({EXPERIMENTS[name][1]})")
        try:
            summary = load(name)(out, quick=args.quick, progress=progress)
        except (ValueError, OSError) as e:
            print(f"{PROG}: error: {name}: {e}", file=sys.stderr)
            return 2
        progress(f"{name}: done, outputs in {out}")
        print(json.dumps({name: summary}, indent=2, default=str))
    return 0
