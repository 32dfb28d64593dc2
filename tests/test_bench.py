"""The benchmark runs end to end (tiny configuration) and measures what it claims."""
from __future__ import annotations

import csv

import pytest
import torch

from numeric import bench
from numeric import functional as F

from tests import strategies as S
from tests.tolerances import TOLERANCES


def test_bench_quick_writes_tables_and_keeps_half_the_bytes(tmp_path):
    summary = bench.run(tmp_path, quick=True, progress=lambda m: None)
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert {r["impl"] for r in rows} >= {"ours", "eager", "compiled", "rms_norm", "layer_norm"}
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "bench.md").exists() and (tmp_path / "summary.md").exists()
    probes = list(csv.DictReader((tmp_path / "probes.csv").open()))
    assert [(r["layer"], r["dtype"]) for r in probes] == [
        (p[0], str(p[1]).replace("torch.", "")) for p in bench.PROBES]
    assert "What each computes where the formula is hard" in (tmp_path / "summary.md").read_text()
    # memory is deterministic: ours keeps x (and the parameters, +0.1% here), eager keeps
    # x and tanh(a x) at least
    for key, v in summary.items():
        if key.endswith("fwd+bwd") and not key.startswith("latency"):
            assert v["kept_ratio_vs_eager"] <= 0.502, key
    # the time per call at (8, 4096): ours and eager for every form and mode, a ratio each
    latency = list(csv.DictReader((tmp_path / "latency.csv").open()))
    assert {(r["impl"], r["layer"], r["mode"]) for r in latency} >= {
        (impl, layer, mode) for impl in ("ours", "eager") for layer in bench.EAGER
        for mode in bench.MODES}
    assert all(float(r["time_us"]) > 0 for r in latency)
    assert all(float(summary[f"latency {layer} 8x4096 float32 {mode}"]["time_ratio_vs_eager"]) > 0
               for layer in bench.EAGER for mode in bench.MODES)


def test_kept_bytes_counts_what_autograd_saves():
    x = torch.randn(64, 32)
    case = bench.Case("ours", "dyt", F.dyt, bench._params("dyt", 32, "cpu", torch.float32))
    saved = bench.kept_bytes(case, x)
    assert saved == x.numel() * 4 + (1 + 32) * 4     # x, alpha, weight: nothing else


@pytest.mark.parametrize("device", S.DEVICES)
def test_probes_find_ours_right_where_the_composition_is_wrong(device):
    """At each probe ours is within the dtype's tolerance of the float64 composition, and
    where the probe table says the compiled or eager composition is wrong on this CPU (one
    probe is wrong only with AVX2 and AVX512 code), it is off by more than 10% (if torch
    fixes one, the benchmark's notes on what the speed goal costs are out of date: this test
    says so). The probes expected right here are not checked against eager: their claim is
    about other machines."""
    rows = bench.probes(device)
    assert all(r["cpu_capability"] == torch.backends.cpu.get_cpu_capability() for r in rows)
    for row in rows:
        dtype = getattr(torch, row["dtype"])
        where = (row["layer"], row["dtype"], row["what"], row["x"], row["cpu_capability"])
        assert row["ours_rel_err"] <= TOLERANCES[dtype].rtol, where
        if not row["composition_wrong_here"]:
            continue
        assert max(row["eager_rel_err"], row["compiled_rel_err"]) > 0.1, where
