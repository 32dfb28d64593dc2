"""``python -m numeric gpu-verify --out DIR``: the whole GPU check in one run.

On a machine with a CUDA device: records the device, driver, torch, CUDA and Triton
versions; runs the whole test suite with CUDA present (every test marked ``gpu`` runs on
the device) while every comparison logs its largest error against its tolerance; runs the
benchmark at the CUDA configuration; writes ``gpu-verification.md`` with the counts of
tests that ran on CUDA and how they ended, the largest error per dtype and device, and the
benchmark table with the percentage of measured copy bandwidth.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    if not torch.cuda.is_available():
        raise ValueError("gpu-verify needs a CUDA device, and none is present")
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    progress(f"gpu-verify: {env['device']}, driver {env['driver']}, torch {env['torch']}")
    junit, log = out / "junit.xml", out / "errors.jsonl"
    log.unlink(missing_ok=True)
    progress("gpu-verify: running the test suite with CUDA present")
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}"],
                           env={**os.environ, "DYNORM_ERROR_LOG": str(log)})
    counts = outcomes(junit)
    errors = largest_errors(log)
    progress("gpu-verify: benchmark")
    from . import bench
    bench.run(out / "bench", quick=quick, progress=progress, config="quick" if quick else "cuda")
    _write(out, env, counts, errors, tests.returncode)
    return {"environment": env, "tests": counts, "largest_errors": errors}


def _write(out: Path, env, counts, errors, rc) -> None:
    from .experiments.report import markdown_table

    lines = ["# GPU verification", "",
             "Written by `python -m numeric gpu-verify --out DIR` on the machine below.", "",
             markdown_table(list(env), [list(env.values())]),
             f"Test suite exit code {rc}. All tests: {counts['all']}. "
             f"Tests that ran on CUDA: {counts['cuda']}.", "",
             "Largest error seen, per device and dtype, as a fraction of the allowed tolerance "
             "(tests/tolerances.py):", "",
             markdown_table(["device", "dtype", "max err / allowed", "max abs err", "where"],
                            [[e["device"], e["dtype"], e["max_err_over_allowed"],
                              e["max_abs_err"], e["what"]] for e in errors]),
             "## Benchmark", "", (out / "bench" / "bench.md").read_text()]
    (out / "gpu-verification.md").write_text("\n".join(lines))
