"""``python -m numeric gpu-verify --out DIR``: the whole GPU check in one run (at most 5
minutes on one H200; ``--quick`` at most 2).

On a machine with a CUDA device, in this order, each result written to DIR as it comes:
1. the device, driver, torch, CUDA and Triton versions (``environment.json``);
2. the tests that touch CUDA (the ``gpu`` marker; ``--quick``: those of the kernels and the
   layers' values), on several workers, within TEST_SECONDS, every comparison logging its
   largest error against its tolerance (``junit.xml``, ``errors.jsonl``);
3. the benchmark at the CUDA configuration (``bench/``: every shape of the kernels' goals,
   the per-call latency; Liger-Kernel compared when installed), each row appended to
   ``bench/bench.jsonl`` as measured; ``--quick``: the quick configuration;
4. the model stack, eager (``model/``; ``python -m numeric bench --config model`` adds
   torch.compile, whose compiles of the stack take minutes); not with ``--quick``;
5. ``gpu-verification.md`` and, printed last, a summary table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

import torch

NAME = "gpu-verify"


def environment() -> dict:
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["driver"] = out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["driver"] = "unknown"
    return info


def outcomes(junit: Path) -> dict:
    """Counts of outcomes, all tests and those whose id names the cuda device."""
    counts = {"all": Counter(), "cuda": Counter()}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [c.tag for c in case]
        outcome = ("failed" if {"failure", "error"} & set(kinds)
                   else "skipped" if "skipped" in kinds else "passed")
        counts["all"][outcome] += 1
        if "cuda" in case.get("name", ""):
            counts["cuda"][outcome] += 1
    return {k: dict(v) for k, v in counts.items()}


def largest_errors(log: Path) -> list[dict]:
    """Per (device, dtype): the largest error/allowed ratio and absolute error seen."""
    worst = defaultdict(lambda: {"max_err_over_allowed": 0.0, "max_abs_err": 0.0, "what": ""})
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            w = worst[(r["device"], r["dtype"])]
            if r["max_err_over_allowed"] >= w["max_err_over_allowed"]:
                w.update(max_err_over_allowed=r["max_err_over_allowed"], what=r["what"])
            w["max_abs_err"] = max(w["max_abs_err"], r["max_abs_err"])
    return [{"device": d, "dtype": t, **v} for (d, t), v in sorted(worst.items())]


#: Wall-clock limit of the tests (seconds), full and quick: past it they are stopped and the
#: record says so, and the benchmark still runs.
TEST_SECONDS = {False: 150, True: 60}
#: The test files of ``--quick``: the kernels' and the layers' values and gradients.
QUICK_TESTS = ("tests/test_kernels.py", "tests/test_layers_property.py")
WORKERS = 8


def _tests(out: Path, quick: bool) -> tuple[int | str, float]:
    junit, log = out / "junit.xml", out / "errors.jsonl"
    log.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-n", str(WORKERS),
           "-p", "no:cacheprovider", f"--junitxml={junit}", *(QUICK_TESTS if quick else ())]
    t0 = time.monotonic()
    try:
        rc = subprocess.run(cmd, env={**os.environ, "DYNORM_ERROR_LOG": str(log)},
                            timeout=TEST_SECONDS[quick]).returncode
    except subprocess.TimeoutExpired:
        rc = f"stopped after {TEST_SECONDS[quick]} s"
    return rc, time.monotonic() - t0


def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    if not torch.cuda.is_available():
        raise ValueError("gpu-verify needs a CUDA device, and none is present")
    from . import bench

    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    progress(f"gpu-verify: {env['device']}, driver {env['driver']}, torch {env['torch']}")
    progress("gpu-verify: the tests that touch CUDA (marker gpu)")
    rc, seconds = _tests(out, quick)
    junit = out / "junit.xml"
    counts = outcomes(junit) if junit.exists() else {"all": {}, "cuda": {}}
    errors = largest_errors(out / "errors.jsonl")
    timing = {"tests_s": round(seconds, 1)}
    _write(out, env, counts, errors, rc, timing)        # the record so far
    progress("gpu-verify: benchmark")
    t0 = time.monotonic()
    summary = bench.run(out / "bench", quick=quick, progress=progress,
                        config="quick" if quick else "cuda")
    timing["bench_s"] = round(time.monotonic() - t0, 1)
    _write(out, env, counts, errors, rc, timing)
    if not quick:
        progress("gpu-verify: the model stack, eager")
        t0 = time.monotonic()
        from . import bench_model
        saved = dict(bench_model.RUNS)
        bench_model.RUNS.pop("compiled")
        try:
            summary.update(bench.run(out / "model", progress=progress, config="model"))
        finally:
            bench_model.RUNS.update(saved)
        timing["model_s"] = round(time.monotonic() - t0, 1)
    _write(out, env, counts, errors, rc, timing)
    print(_summary(counts, errors, rc, timing, out), flush=True)
    return {"environment": env, "tests": counts, "largest_errors": errors, "timing": timing}


def _summary(counts, errors, rc, timing, out: Path) -> str:
    """The table printed last: tests, largest errors, the benchmark's headline rows."""
    from .experiments.report import markdown_table

    lines = [f"gpu-verify: tests exit {rc}; on CUDA {counts['cuda']}; all {counts['all']}; "
             f"seconds {timing}"]
    lines.append(markdown_table(["dtype", "max err / allowed"],
                                [[e["dtype"], e["max_err_over_allowed"]] for e in errors
                                 if e["device"].startswith("cuda")]))
    for stem in ("bench/bench.md", "bench/latency.md", "model/model.md"):
        if (out / stem).exists():
            lines += [stem, (out / stem).read_text()]
    return "\n".join(lines)


def _write(out: Path, env, counts, errors, rc, timing) -> None:
    from .experiments.report import markdown_table

    lines = ["# GPU verification", "",
             "Written by `python -m numeric gpu-verify --out DIR` on the machine below.", "",
             markdown_table(list(env), [list(env.values())]),
             f"Tests that touch CUDA (marker gpu): exit {rc}. All collected: {counts['all']}. "
             f"Ran on CUDA: {counts['cuda']}. Seconds per part: {timing}.", "",
             "Largest error seen, per device and dtype, as a fraction of the allowed tolerance "
             "(tests/tolerances.py):", "",
             markdown_table(["device", "dtype", "max err / allowed", "max abs err", "where"],
                            [[e["device"], e["dtype"], e["max_err_over_allowed"],
                              e["max_abs_err"], e["what"]] for e in errors])]
    for title, stem in (("Benchmark", "bench/bench.md"), ("Time per call", "bench/latency.md"),
                        ("Model stack", "model/model.md")):
        if (out / stem).exists():
            lines += [f"## {title}", "", (out / stem).read_text()]
    (out / "gpu-verification.md").write_text("\n".join(lines))
