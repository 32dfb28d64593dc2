"""python -m numeric: one-line errors, and the GPU check's bookkeeping."""
from __future__ import annotations

import json

import pytest
import torch

from numeric import verify
from numeric.cli import main


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
