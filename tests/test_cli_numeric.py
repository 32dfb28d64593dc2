"""python -m numeric: one-line errors, and the GPU check's bookkeeping."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from numeric import cli, verify
from numeric.cli import main

NUMBERS = {"max_error": 1.5e-7, "per_case": {f"case {i}": i / 7 for i in range(60)}}


def _fake_run(out, *, quick=False, progress=print, **options):
    """A stand-in experiment: writes two files, returns 61 numbers."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.csv").write_text("a\n1\n")
    (out / "summary.md").write_text("## fake\n")
    return NUMBERS


@pytest.fixture
def fake(monkeypatch):
    """Every experiment name runs the stand-in; the list records each call."""
    calls = []
    monkeypatch.setattr(cli, "load", lambda name: lambda out, **kw: calls.append(kw) or _fake_run(out, **kw))
    return calls


@pytest.mark.parametrize("argv,needle", [
    (["nope", "--out", "/tmp/x"], "invalid choice: 'nope'"),
    (["outliers"], "--out"),
    (["outliers", "--out", "/proc/forbidden/dir"], "cannot write to"),
    (["bench", "--out", "/tmp/x", "--config", "huge"], "invalid choice: 'huge'"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_verify_refuses_cleanly_without_cuda(capsys, tmp_path):
    assert main(["gpu-verify", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_gpu_verify_counts_cuda_tests_and_largest_errors(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_a[float32-cpu]"/>'
        '<testcase name="test_a[float32-cuda]"/>'
        '<testcase name="test_b[cuda]"><failure message="x"/></testcase>'
        '<testcase name="test_c[cpu]"><skipped/></testcase>'
        '</testsuite></testsuites>')
    assert verify.outcomes(junit) == {"all": {"passed": 2, "failed": 1, "skipped": 1},
                                      "cuda": {"passed": 1, "failed": 1}}
    log = tmp_path / "e.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"dtype": "bfloat16", "device": "cuda", "what": "dyt y", "max_err_over_allowed": 0.2,
         "max_abs_err": 1e-3},
        {"dtype": "bfloat16", "device": "cuda", "what": "dyt grad x",
         "max_err_over_allowed": 0.7, "max_abs_err": 1e-4}]))
    (worst,) = verify.largest_errors(log)
    assert worst["max_err_over_allowed"] == 0.7 and worst["what"] == "dyt grad x"
    assert worst["max_abs_err"] == 1e-3


def test_gpu_verify_runs_the_cuda_tests_first_then_the_benchmarks_and_prints_a_summary(
        tmp_path, monkeypatch, capsys):
    """The order (tests that touch CUDA, benchmark, the model stack eager only), the record
    rewritten after each part, the summary printed last; the parts themselves stubbed."""
    from numeric import bench, bench_model

    calls = []

    def tests(out, quick):
        calls.append("tests")
        (out / "junit.xml").write_text('<testsuite><testcase name="t[cuda]"/></testsuite>')
        return 0, 1.0

    def bench_run(out, *, quick=False, progress=print, config=None):
        calls.append((config, tuple(bench_model.RUNS)))
        assert (tmp_path / "gpu-verification.md").exists()     # the record so far
        out.mkdir(parents=True)
        stem = "model" if config == "model" else "bench"
        (out / f"{stem}.md").write_text(f"| {stem} table |\n")
        return {}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(verify, "environment", lambda: {"device": "H", "driver": "1",
                                                        "torch": "t"})
    monkeypatch.setattr(verify, "_tests", tests)
    monkeypatch.setattr(bench, "run", bench_run)
    verify.run(tmp_path, progress=lambda m: None)
    assert calls == ["tests", ("cuda", ("eager", "compiled")), ("model", ("eager",))]
    assert tuple(bench_model.RUNS) == ("eager", "compiled")
    record = (tmp_path / "gpu-verification.md").read_text()
    assert "| bench table |" in record and "| model table |" in record
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("| model table |")
    assert "on CUDA {'passed': 1}" in printed


def test_an_experiment_prints_a_short_summary_and_the_files_it_wrote(fake, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["norms-axes", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) <= 20
    assert "max_error: 1.5e-07" in printed
    for name in ("table.csv", "summary.md", "results.json"):
        assert str(out / name) in printed
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(NUMBERS))


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--out", "NEW", "--config", "huge"], "invalid choice: 'huge'"),
    (["outliers", "--out", "NEW", "--config", "cpu"], "argument --config: applies to bench only, not outliers"),
    (["outliers", "--out", ""], "--out: empty"),
    (["outliers", "--out", "NEW", "--steps", "3"], "argument --steps: applies to real-model only"),
    (["real-model", "--out", "NEW", "--steps", "-1"], "argument --steps: must be an integer >= 0"),
    (["real-model", "--out", "NEW", "--steps", "many"], "argument --steps: must be an integer"),
    pytest.param(["bench", "--out", "NEW", "--config", "cuda"], "needs a CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU machine")),
])
def test_bad_options_fail_at_once_and_create_nothing(fake, tmp_path, monkeypatch, capsys,
                                                      argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("NEW", str(tmp_path / "new")) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not fake and list(tmp_path.iterdir()) == []


def test_steps_reach_the_real_model_experiment_only(fake, tmp_path):
    """--steps goes to real-model's run (alone or within all), to no other experiment."""
    assert main(["real-model", "--out", str(tmp_path / "a"), "--steps", "7"]) == 0
    assert len(fake) == 1 and fake[0]["steps"] == 7
    fake.clear()
    assert main(["all", "--out", str(tmp_path / "b"), "--steps", "0"]) == 0
    assert [kw.get("steps") for kw in fake] == [0 if name == "real-model" else None
                                               for name in cli.EXPERIMENTS]


_STANDIN = """
import sys
from numeric import cli
cli.load = lambda name: lambda out, **kw: {"value": 1.0}
sys.exit(cli.main(["norms-axes", "--out", sys.argv[1]]))
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("reader,rc,error", [
    ("closed pipe", 0, []),
    ("full disk", 2, [f"{cli.PROG}: error: cannot write to standard output: No space left on device"]),
])
def test_a_closed_pipe_or_a_full_disk_gives_one_line_and_no_traceback(tmp_path, reader, rc, error):
    """`python -m numeric ... | true` exits 0; `... > /dev/full` says so in one line, exit 2."""
    argv = [sys.executable, "-c", _STANDIN, str(tmp_path)]
    if reader == "closed pipe":
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait()
    else:
        with open("/dev/full", "w") as full:
            p = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True)
        err, code = p.stderr, p.returncode
    assert code == rc
    assert [line for line in err.splitlines() if not line.startswith("[")] == error  # progress aside


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU machine")
def test_bench_refuses_the_cuda_configuration_without_cuda(tmp_path):
    from numeric import bench

    with pytest.raises(ValueError, match="needs a CUDA device"):
        bench.run(tmp_path / "b", config="cuda")
    assert not (tmp_path / "b").exists()


def test_a_full_disk_under_all_names_the_file(fake, tmp_path, monkeypatch, capsys):
    """results.md, written after every experiment, fails on a full disk: one line naming it."""
    def full(out, names):
        raise OSError(28, "No space left on device", str(out / "results.md"))
    monkeypatch.setattr(cli, "_results_md", full)
    assert main(["all", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"cannot write {tmp_path / 'results.md'}: No space left on device\n")
