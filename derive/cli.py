"""The command line: ``python -m derive`` and the console script ``dynorm``.

Every command is a function in COMMANDS; errors are one line on stderr and exit 2
(1 for a failed derivation or stale generated files), never a traceback. A reader that
stops early (``| head``) is not an error. The pretty format falls back to SymPy's ASCII
pretty form when stdout cannot encode Unicode (``PYTHONIOENCODING=ascii``, a C locale):
the same 2-D layout, with ``sqrt`` and ``-`` bars for the root and fraction signs, so
nothing is lost, where replacing the characters would print ``?`` in their place.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from . import cache, export, generate, render
from .catalog import NAMES, announce, result
from .steps import Deadline, DerivationError, deadline

PROG = "dynorm"
MAIN_RESULTS = ("dyt", "dyisru")


class UsageError(Exception):
    """A wrong command line: reported in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we report one line
        raise UsageError(message)


def _name(text: str) -> str:
    if text not in NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown result {text!r} (known: {', '.join(NAMES)})")
    return text


def cmd_list(args) -> int:
    from .catalog import ENTRIES
    for name, e in ENTRIES.items():
        print(f"{name:28s} {e.title}")
    return 0


def _rendered(name: str, make) -> str:
    """Text rendered from results, read back from the disk cache where a run with the same
    derive/ sources stored it (the results are unpickled and printed only once)."""
    text = cache.load(name)
    if not isinstance(text, str):
        text = make()
        cache.store(name, text)
    return text


def cmd_show(args) -> int:
    print(_rendered(f"show-{args.name}-{args.format}",
                    lambda: render.formula(result(args.name), args.format)))
    return 0


def cmd_steps(args) -> int:
    r = result(args.name)
    print(render.legend([r], args.format) + "\n")
    print(render.steps(r, args.format))
    return 0


def cmd_derivation(args) -> int:
    """The main job: the closed forms of DyT and DyISRU with their derivations."""
    results = [result(name) for name in args.names or MAIN_RESULTS]
    print(render.legend(results, args.format) + "\n")
    for r in results:
        print(render.steps(r, args.format))
        print()
        print(render.formula(r, args.format))
        print("\n" + "=" * 78 + "\n")
    return 0


def cmd_export(args) -> int:
    data = export.export()
    text = export.dumps(data)
    if args.json == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.json).write_text(text)
    except OSError as e:  # a full disk fails on close, where the error names no file
        raise OSError(e.errno, e.strerror, args.json) from None
    print(f"wrote {len(data['results'])} results to {args.json}")
    return 0


def _print_derivation(results, fmt: str) -> None:
    for r in results.values():
        print(render.steps(r, fmt))
        print()
        print(render.formula(r, fmt))
        print("\n" + "=" * 78 + "\n")


#: How long `dynorm derive` may take before it stops with the step it was in: the p-norm at
#: p = 1/3 takes about 100 s on this project's 2-core machine, at p = 8 over 300 s.
DERIVE_SECONDS = 300.0


def cmd_derive(args) -> int:
    """The procedure on a user's norm: its derivation, and the export schema with --json."""
    from .catalog import counterpart_results
    from .procedure import counterparts
    if not args.seconds > 0:   # NaN too; inf (or any S past the timer's range) is no bound
        raise UsageError(f"--seconds must be positive, got {args.seconds:g}")
    try:
        with deadline(args.seconds):
            results = counterpart_results(counterparts(args.norm))
    except Deadline as e:
        where = f" the step {e.steps[0]!r}" if e.steps else ""
        raise UsageError(f"cannot derive {args.norm!r}: SymPy did not finish{where} within "
                         f"{e.seconds:g} s (--seconds N allows more)") from None
    except (ValueError, DerivationError) as e:  # a bad text, or a norm it cannot handle
        raise UsageError(f"cannot derive {args.norm!r}: {e}") from None
    except Exception as e:  # noqa: BLE001  SymPy gave up on the user's formula
        raise UsageError(f"cannot derive {args.norm!r}: SymPy failed "
                         f"({type(e).__name__}: {e})") from None
    _print_derivation(results, args.format)
    if args.json:
        Path(args.json).write_text(export.dumps(export.export(results)))
        print(f"wrote {len(results)} results to {args.json}")
    return 0


def _pair(text: str, what: str) -> tuple[str, str]:
    """NAME=VALUE split at the first '=', both sides stripped and non-empty."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip() or not value.strip():
        raise UsageError(f"{what} must be NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def cmd_generate_form(args) -> int:
    """A standalone torch module for a formula of the user's: one line for any problem, a
    warning line for each thing the user should know about the module written."""
    from . import formgen
    from .printers import UnsupportedNode

    if args.check or not args.out:
        raise UsageError("--form takes --out FILE (and not --check)")
    if len(args.form) > 1:
        raise UsageError(f"one --form per command (got {len(args.form)}: "
                         f"{', '.join(map(repr, args.form))}); run generate once for each")
    form = args.form[0]
    name, formula = _pair(form, "--form")
    inits = {}
    for item in args.init or ():
        sym, value = _pair(item, "--init")
        try:
            inits[sym] = float(value)
        except ValueError:
            raise UsageError(f"--init {sym}: not a number: {value!r}") from None
    command = " ".join(["dynorm generate --form", shlex.quote(form),
                        *(f"--init {shlex.quote(i)}" for i in args.init or ())])
    try:
        out = formgen.generate(name, formula, inits, command)
    except ValueError as e:  # the formula's text, its names, an --init
        raise UsageError(f"--form: {e}") from None
    except UnsupportedNode as e:
        raise UsageError(f"--form: cannot generate {name}: {e}") from None
    except RecursionError:
        raise UsageError(f"--form: cannot generate {name}: the formula is nested too deeply "
                         "for SymPy") from None
    for note in out.notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    if args.sweeps < 0 or args.examples < 1:
        raise UsageError("--sweeps takes a count >= 0 and --examples one >= 1")
    rows, seconds = _verified(name, formula, out.source, args)
    failed = [r for r in rows if r["failed"]]
    say = sys.stdout if args.out != "-" else sys.stderr
    print(_verification(name, rows, seconds, args), file=say)
    if failed and not args.allow_inexact:
        print(f"{PROG}: error: {name} is not within the {args.tolerance!r} standard in "
              f"{', '.join(dict.fromkeys(_dt(r['dtype']) for r in failed))}: "
              f"{failed[0]['failed']}; nothing written (--allow-inexact writes it anyway)",
              file=sys.stderr)
        return 1
    if args.out == "-":
        sys.stdout.write(out.source)
        return 0
    try:
        Path(args.out).write_text(out.source, encoding="utf-8")
    except OSError as e:
        raise OSError(e.errno, e.strerror, args.out) from None
    print(f"wrote {args.out}: {out.signature} and {formgen.camel(name)}")
    return 0


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _verified(name: str, formula: str, source: str, args) -> tuple[list[dict], float]:
    """derive.testing's report of the module ``source`` against ``formula``: every order it
    implements (2), every float dtype, the sweeps over every value and hypothesis's draws."""
    import importlib.util
    import tempfile
    import time
    import warnings

    from . import testing

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"_dynorm_generated_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", testing.Unchecked)
        rows = testing.report(getattr(module, name), formula, order=2, sweep=args.sweeps,
                              examples=args.examples, tolerance=args.tolerance)
    for w in caught:
        if issubclass(w.category, testing.Unchecked):
            print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    return rows, time.monotonic() - t0


def _verification(name: str, rows: list[dict], seconds: float, args) -> str:
    """The verification's table: per dtype and order the worst error in ulps of the exact
    value (and as a fraction of the standard's allowed error)."""
    what = ("every bfloat16 and float16 value and every binade of float32 and float64 at "
            f"{args.sweeps} setting(s) of the scalars, and " if args.sweeps else "")
    head = (f"verified {name} against its formula in {seconds:.0f} s ({what}{args.examples} "
            f"hypothesis draws per dtype), standard {args.tolerance!r}: worst error in ulps "
            "(fraction of the allowed)")
    cols = {0: "output", 1: "first derivatives", 2: "second derivatives"}
    lines = [head, f"  {'dtype':9s}" + "".join(f"{c:>22s}" for c in cols.values())]
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        cells = {r["order"]: r for r in rows if r["dtype"] == dtype and r["order"] is not None}
        line = f"  {_dt(dtype):9s}"
        for k in cols:
            r = cells.get(k)
            cell = ("-" if r is None else
                    f"{r['ulps']:.3g} ({r['over_allowed']:.2g})" + (" FAIL" if r["failed"] else ""))
            line += f"{cell:>22s}"
        lines.append(line)
    return "\n".join(lines)


def cmd_generate(args) -> int:
    if args.form or args.out or args.init:
        if not args.form:
            raise UsageError("--out and --init go with --form NAME=EXPR")
        return cmd_generate_form(args)
    if not args.check:
        changed = generate.write()
        print(f"{len(changed)} file(s) written" + "".join(f"\n  {p}" for p in changed))
        return 0
    stale, orphans = generate.stale(), generate.orphans()
    if not stale and not orphans:
        print(f"{len(generate.targets())} generated files are in sync")
        return 0
    for rel, diff in stale:
        print(f"stale: {rel}\n{diff}")
    for rel in orphans:
        print(f"orphaned (no longer generated; delete it): {rel}")
    print(f"run `{generate.COMMAND}` to regenerate, then commit the result", file=sys.stderr)
    return 1


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Derive DyT and DyISRU from RMSNorm and LayerNorm.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = dict(choices=tuple(render.FORMATS), default="pretty")
    sub.add_parser("list", help="the results of the catalog").set_defaults(run=cmd_list)
    s = sub.add_parser("show", help="one closed form")
    s.add_argument("name", type=_name)
    s.add_argument("--format", **fmt)
    s.set_defaults(run=cmd_show)
    s = sub.add_parser("steps", help="the derivation of one result, with its checks")
    s.add_argument("name", type=_name)
    s.add_argument("--format", **fmt)
    s.set_defaults(run=cmd_steps)
    s = sub.add_parser("derivation", help="DyT and DyISRU: derivations and closed forms")
    s.add_argument("names", nargs="*", type=_name)
    s.add_argument("--format", **fmt)
    s.set_defaults(run=cmd_derivation)
    s = sub.add_parser("export", help="every result as JSON")
    s.add_argument("--json", required=True, metavar="FILE", help="output file, or - for stdout")
    s.set_defaults(run=cmd_export)
    s = sub.add_parser("derive", help="the procedure on a norm of your own: its Jacobian "
                       "and counterparts, derived and checked")
    s.add_argument("norm", metavar="NORM",
                   help="channel x's output, statistics as mean(...) or sum(...) over the "
                   "channels, e.g. 'x / sqrt(mean(x**2) + epsilon)'")
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    s.add_argument("--format", **fmt)
    s.add_argument("--seconds", type=float, default=DERIVE_SECONDS, metavar="S",
                   help=f"give up, naming the step, after S seconds (default {DERIVE_SECONDS:g})")
    s.set_defaults(run=cmd_derive)
    s = sub.add_parser("generate", help="write the generated sources and notes")
    s.add_argument("--check", action="store_true", help="exit 1 if they are stale")
    s.add_argument("--form", metavar="NAME=EXPR", action="append",
                   help="instead: a standalone torch module for weight * EXPR(x) + bias")
    s.add_argument("--out", metavar="FILE", help="--form's output file, or - for stdout")
    s.add_argument("--init", action="append", metavar="SYM=VALUE",
                   help="--form: a scalar's initial value in the module (default 1.0)")
    s.add_argument("--sweeps", type=int, default=1, metavar="K",
                   help="--form's verification: settings of the scalars at which every "
                   "bfloat16 and float16 value and every binade of float32 and float64 is "
                   "checked (default 1; 0: hypothesis's draws only)")
    s.add_argument("--examples", type=int, default=20, metavar="N",
                   help="--form's verification: hypothesis draws per dtype (default 20)")
    s.add_argument("--tolerance", choices=("ulp", "torch"), default="ulp",
                   help="--form's verification standard (derive.testing; default ulp)")
    s.add_argument("--allow-inexact", action="store_true",
                   help="--form: write the module even where it is not within the standard")
    s.set_defaults(run=cmd_generate)
    return p


def _unicode_ok(stream) -> bool:
    """Whether ``stream`` can encode what the pretty printer draws."""
    try:
        "\u2500\u221a\u22c5\u03c3".encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _drop_stdout() -> None:
    """Point stdout at devnull, so the interpreter's flush at exit does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass


def _announce(name: str) -> None:
    """Once per run, on stderr: the first derivation without the cache takes seconds."""
    if not _announce.done:
        _announce.done = True
        where = cache.folder()
        print(f"{PROG}: deriving and checking {name} and what it needs (every claim, two ways; "
              + (f"stored in {where} for later runs)" if where else "the cache is off)"),
              file=sys.stderr)


_announce.done = False


def main(argv: list[str] | None = None) -> int:
    announce(_announce)
    try:
        args = parser().parse_args(argv)
        if getattr(args, "format", None) == "pretty" and not _unicode_ok(sys.stdout):
            args.format = "ascii"
        rc = args.run(args)
        sys.stdout.flush()  # a full disk shows here, not at exit
        return rc
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except DerivationError as e:
        print(f"{PROG}: derivation failed: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped (| head): not an error; before OSError,
        _drop_stdout()       # its base class
        return 0
    except OSError as e:
        if e.filename is None:  # no file named: stdout itself
            _drop_stdout()
        where = "to standard output" if e.filename is None else e.filename
        print(f"{PROG}: error: cannot write {where}: {e.strerror}", file=sys.stderr)
        return 2
    except UnicodeEncodeError as e:
        print(f"{PROG}: error: standard output ({e.encoding}) cannot print {e.object[e.start]!r}; "
              "use --format text or set PYTHONIOENCODING=utf-8", file=sys.stderr)
        return 2


def entry_point() -> None:
    sys.exit(main())
