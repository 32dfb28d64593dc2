"""The command line of derive: commands, formats, export schema, one-line errors."""
from __future__ import annotations

import errno
import os
import io
import json
import re
import subprocess
import sys
import time

import pytest
import sympy as sp

from derive import NAMES
from derive.catalog import result
from derive.cli import main
from derive.symbols import ASSUMPTIONS


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_names_every_result(capsys):
    rc, out, _ = run(capsys, "list")
    assert rc == 0 and all(name in out for name in NAMES)


@pytest.mark.parametrize("fmt,needle", [("pretty", "tanh(α⋅x)"), ("latex", r"\tanh{\left(\alpha x"),
                                        ("text", "gamma*tanh(alpha*x)")])
def test_show_formats(capsys, fmt, needle):
    rc, out, _ = run(capsys, "show", "dyt", "--format", fmt)
    assert rc == 0 and needle in out


def test_steps_lists_each_step_with_its_reason_and_checks(capsys):
    rc, out, _ = run(capsys, "steps", "dyt")
    assert rc == 0
    for name in ("decouple_derivative_space", "freeze_sigma", "integrate_with_y0"):
        assert name in out
    assert "keep the diagonal" in out and "[ok exact, ok numeric]" in out


@pytest.mark.parametrize("argv,needle", [
    (["show", "dyx"], "unknown result 'dyx'"),
    (["steps", "nope"], "unknown result 'nope'"),
    (["show", "dyt", "--format", "xml"], "invalid choice: 'xml'"),
    (["export", "--json", "/nonexistent-dir/x.json"], "cannot write /nonexistent-dir/x.json"),
    ([], "required"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    err = _without_announcement(err)   # a first run may say that it derives
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_export_schema_and_round_trip(tmp_path, capsys):
    path = tmp_path / "catalog.json"
    assert run(capsys, "export", "--json", str(path))[0] == 0
    data = json.loads(path.read_text())["results"]
    assert set(NAMES) == set(data)
    for name, entry in data.items():
        assert set(entry) == {"expr", "latex", "symbols", "params", "steps"}
        local = {sym: sp.Symbol(sym, **a) for sym, a in entry["symbols"].items()}
        assert all(entry["symbols"][sym] == ASSUMPTIONS[sym] for sym in entry["symbols"])
        expr = sp.sympify(entry["expr"], locals=local)
        assert expr.free_symbols <= set(local.values()), name
        for p, e in entry["params"].items():
            assert p in local and sp.sympify(e, locals=local).free_symbols <= set(local.values())
        assert entry["steps"]
    assert data["dyt"]["params"] == {"alpha": "1/(sqrt(C)*sigma)", "gamma": "sqrt(C)"}
    assert data["dyisru"]["params"] == {"beta": "C*epsilon + S"}


def test_console_script_and_module_agree():
    """`python -m derive` is the same program as the console script (no traceback either way)."""
    p = subprocess.run([sys.executable, "-m", "derive", "show", "nope"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("dynorm: error:") and not p.stdout


def test_generated_files_are_in_sync_and_deterministic():
    """paper_notes/derivation.md and numeric/generated/ match what the catalog generates, to
    the byte, in a process with a hash seed of its own (the checked-in files were written
    under others: nothing generated depends on set or dict order)."""
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    p = subprocess.run([sys.executable, "-m", "derive", "generate", "--check"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout + p.stderr


def test_generate_check_names_a_stale_file_and_the_fix(tmp_path, monkeypatch, capsys):
    from derive import generate
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "targets", lambda: {"paper_notes/derivation.md": lambda: "x"})
    rc, out, err = run(capsys, "generate", "--check")
    assert rc == 1 and "stale: paper_notes/derivation.md" in out
    assert "python -m derive generate" in err


def _without_announcement(err: str) -> str:
    """stderr less the line that says a result is being derived (not read from the cache)."""
    return "".join(line for line in err.splitlines(True)
                   if not line.startswith("dynorm: deriving and checking"))


def test_a_reader_that_stops_early_is_not_an_error():
    """`dynorm derivation | head -3`: exit 0, nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "derive", "derivation"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = _without_announcement(proc.stderr.read().decode())
    assert proc.wait() == 0 and err == ""


def test_show_on_an_ascii_terminal_prints_the_ascii_pretty_form(capsys, monkeypatch):
    """A stdout that cannot encode Unicode (PYTHONIOENCODING=ascii): the 2-D form in ASCII."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["show", "dyisru"]) == 0
    stdout.flush()
    text = stdout.buffer.getvalue().decode("ascii")
    lines = text.splitlines()
    assert any(line.startswith("dyisru = ") for line in lines)
    assert any(set(line.strip()) == {"-"} or "---" in line for line in lines)  # a fraction bar
    assert _without_announcement(capsys.readouterr().err) == ""


class _Full(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target,needle", [
    ("/dev/full", "cannot write /dev/full: No space left on device"),
    ("-", "cannot write to standard output: No space left on device"),
])
def test_export_to_a_full_disk_names_what_it_could_not_write(capsys, monkeypatch, target, needle):
    from derive import export

    monkeypatch.setattr(export, "export", lambda: {"results": {}})
    if target == "-":
        monkeypatch.setattr(sys, "stdout", _Full())
    elif not __import__("os").path.exists(target):
        pytest.skip("needs /dev/full")
    assert main(["export", "--json", target]) == 2
    err = capsys.readouterr().err
    assert err == f"dynorm: error: {needle}\n"


@pytest.mark.parametrize("name", ["rmsnorm", "layernorm_jacobian_diag", "dyt_ln"])
def test_result_names_print_as_written(capsys, name):
    """SymPy alone prints rmsnorm as ‖rms‖ (\\left\\|{rms}\\right\\|) and dyt_ln as dytₗₙ."""
    _, pretty, _ = run(capsys, "show", name)
    assert any(line.startswith(f"{name} = ") for line in pretty.splitlines()), pretty
    _, latex, _ = run(capsys, "show", name, "--format", "latex")
    lhs = latex.splitlines()[1].split(" = ")[0]
    assert lhs == r"\mathrm{%s}" % name.replace("_", r"\_")


@pytest.mark.parametrize("argv,names", [
    (["derivation"], ["C", "sigma", "S", "epsilon", "beta", "alpha", "gamma"]),
    (["steps", "dyisru_ln"], ["C", "m", "Q", "epsilon", "beta"]),
    (["steps", "dyt_ln", "--format", "text"], ["C", "mu", "s", "alpha", "gamma"]),
])
def test_a_derivation_says_what_its_symbols_are(capsys, argv, names):
    from derive.symbols import MEANINGS

    rc, out, _ = run(capsys, *argv)
    legend = out.split("\n\n")[0].splitlines()
    assert rc == 0 and legend[0] == "Symbols:"
    for name in names:
        (line,) = [line for line in legend if line.endswith("  " + MEANINGS[name])]
        assert name in line.split()


def test_every_symbol_a_derivation_prints_has_a_meaning():
    from derive.symbols import MEANINGS

    for name in NAMES:
        r = result(name)
        printed = set().union(*(sp.sympify(e).free_symbols for e in
                                [r.expr, *r.params, *r.params.values(), *(s.expr for s in r.steps)]))
        assert {s.name for s in printed} <= set(MEANINGS), name


def test_claims_speak_of_C_not_of_the_helper_n(capsys):
    """The LayerNorm forms are checked with C = n + 1; their claims say C - 1."""
    rc, out, _ = run(capsys, "steps", "dyisru_ln")
    assert "tends to sqrt(C - 1) as x -> +oo" in out
    for name in NAMES:
        claims = [c.claim for st in result(name).steps for c in st.checks]
        assert not [c for c in claims if re.search(r"\bn\b", c)], name


def test_derive_stops_after_its_time_naming_the_step():
    """The p-norm at p = 8 takes SymPy over 300 s to separate the ODE's variables: with
    --seconds 2 the command stops after about 2 s with one line that names the step."""
    norm = "x / (mean(abs(x)**8) + epsilon)**(1/8)"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "derive", "derive", norm, "--seconds", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert re.fullmatch(r"dynorm: error: cannot derive .*: SymPy did not finish the step "
                        r"'\w+' within 2 s \(--seconds N allows more\)", line), line
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_derive_seconds_must_be_positive(capsys, seconds):
    code, _, err = run(capsys, "derive", "x / sqrt(mean(x**2))", "--seconds", seconds)
    assert code == 2 and f"--seconds must be positive, got {float(seconds):g}" in err


@pytest.mark.parametrize("seconds", ["inf", "1e12"])
def test_derive_without_a_bound_past_the_timers_range(capsys, seconds):
    """inf, or more seconds than the timer holds, is no bound (not an OverflowError that
    would read as SymPy's failure)."""
    code, out, err = run(capsys, "derive", "x / sqrt(mean(x**2) + epsilon)", "--seconds",
                         seconds)
    assert code == 0 and "function space" in out, err
