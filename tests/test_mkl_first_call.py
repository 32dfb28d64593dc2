"""MKL's first-call CPU detection is settled before any of our code splits math across threads.

torch's CPU tanh, exp, erf, ... call MKL's VML, which detects the CPU at its first call: it
stores the raw CPU code in a global and only then the code its kernel table is indexed by. A
second thread that enters in between (torch splits an op of 2 x 2048 elements or more over
two threads) runs its whole chunk with a low-accuracy AVX2 kernel: torch.tanh(3.453125) came
out 0.99804795 against 0.99799899, and an eager DyT's float32 output 3.3028581 against
3.3027201, in about 1 of 10 fresh processes with 2 threads (MKL 2024.2, bundled in torch
2.11 and 2.13; pytorch/pytorch#188792). The race cannot be made to happen on demand, but
the state it needs can be read: a fresh process has not detected yet, and after importing
numeric, derive.testing or a module of ``dynorm generate --form`` it has, from a
one-element call that no thread splits (derive/shell.py, WARM_UP).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
LIB = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
STATE = "mkl_vml_serv_cpu_detect.vml_cpu_type"


def _state_offset() -> tuple[int, int] | None:
    """(offset of vmsTanh, offset of MKL's detection state) in libtorch_cpu.so, or None
    where this torch has no MKL VML with those symbols (or there is no nm to read them)."""
    if not LIB.is_file() or shutil.which("nm") is None:
        return None
    out = subprocess.run(["nm", str(LIB)], capture_output=True, text=True).stdout
    syms = {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines())
            if len(p) == 3}
    if "vmsTanh" not in syms or STATE not in syms:
        return None
    return syms["vmsTanh"], syms[STATE]


OFFSETS = _state_offset()
needs_mkl = pytest.mark.skipif(OFFSETS is None, reason="this torch's libtorch_cpu.so has no "
                               "MKL VML detection state to read (no MKL, or no nm)")

#: Prints MKL's detection state (-1: not yet detected) after running the lines it is given.
PROBE = """
import ctypes, sys, torch
tanh, state = {offsets}
lib = ctypes.CDLL({lib!r})
base = ctypes.cast(lib.vmsTanh, ctypes.c_void_p).value - tanh
{before}
print(ctypes.c_int.from_address(base + state).value)
"""


def _state_after(lines: str, cwd: Path = ROOT) -> int:
    code = PROBE.format(offsets=OFFSETS, lib=str(LIB), before=lines)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@needs_mkl
def test_a_fresh_process_has_not_detected_yet():
    """The probe reads the right global: -1 before any math, set after one tanh."""
    assert _state_after("") == -1
    assert _state_after("torch.tanh(torch.zeros(1))") != -1


@needs_mkl
@pytest.mark.parametrize("module", ["numeric", "derive.testing"])
def test_importing_our_code_settles_the_detection(module):
    assert _state_after(f"import {module}") != -1


@needs_mkl
def test_a_generated_module_settles_the_detection(tmp_path):
    """The module of ``dynorm generate --form`` carries the same warm-up (its shell is
    printed from the same source)."""
    from derive import formgen

    (tmp_path / "tanh_a.py").write_text(formgen.module("tanh_a", "tanh(a*x)"))
    assert _state_after("import tanh_a", cwd=tmp_path) != -1


@needs_mkl
def test_the_warm_up_runs_on_the_cpu_whatever_the_default_device():
    """Under torch.set_default_device("meta") (or "cuda": importing must not start CUDA)
    the warm-up still makes its calls on the CPU."""
    assert _state_after("torch.set_default_device('meta')\nimport numeric") != -1
