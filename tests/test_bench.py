"""The benchmark runs end to end (tiny configuration) and measures what it claims."""
from __future__ import annotations

import csv

import pytest
import torch

from numeric import bench
from numeric import functional as F

from tests import checks
from tests import strategies as S
from tests.tolerances import TOLERANCES


def test_bench_quick_writes_tables_and_keeps_half_the_bytes(tmp_path, monkeypatch):
    """The whole run, its compiled composition through dynamo with its eager backend (what
    is tested is the run; inductor's compiles of 24 graphs were 40 of its 56 s; the probe
    test below compiles with inductor)."""
    compiled = {}
    monkeypatch.setattr(bench, "_compiled", lambda fn, device: compiled.setdefault(
        fn, torch.compile(fn, backend="eager")))
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
    # and the Python of the CUDA path, timed with its launches no-ops (on a CPU)
    assert {(r["layer"], r["mode"]) for r in latency if r["impl"] == bench.NOOP_LAUNCHES} == {
        (layer, mode) for layer in bench.EAGER for mode in bench.MODES}
    assert all(float(summary[f"latency {layer} 8x4096 float32 {mode}"]["time_ratio_vs_eager"]) > 0
               for layer in bench.EAGER for mode in bench.MODES)
    # and DyT by hand, the inexact and the exact derivative
    assert {(r["impl"], r["mode"]) for r in latency if r["impl"].startswith("by-hand")} == {
        (impl, mode) for impl in bench.BY_HAND for mode in bench.MODES}


@pytest.mark.parametrize("device", S.DEVICES)
def test_the_hand_written_dyt_computes_dyt_and_only_the_exact_one_far_out(device):
    """The latency table's DyT by hand: both give DyT's output and, where tanh has not
    rounded to 1, its gradients (float64 references: the formula, sech(u)^2 = 1/cosh(u)^2);
    at u = 12 only the exact one has grad x (the inexact one's 1 - tanh^2 is 0 there)."""
    x64 = torch.tensor([[-3.0, -0.5, 0.0, 0.25, 1.5, 24.0]], dtype=torch.float64)
    a64, w64 = torch.tensor(0.5, dtype=torch.float64), torch.linspace(0.5, 2.0, 6).double()
    b64, g64 = torch.linspace(-1.0, 1.0, 6).double(), torch.linspace(1.0, 2.0, 6).double()[None]
    u = a64 * x64
    sech2 = 1 / torch.cosh(u) ** 2
    ref = {"y": w64 * torch.tanh(u) + b64, "x": g64 * w64 * a64 * sech2,
           "a": (g64 * w64 * x64 * sech2).sum(), "w": (g64 * torch.tanh(u)).sum(0),
           "b": g64.sum(0)}
    got = {}
    for impl, fn in bench.BY_HAND.items():
        x, a, w, b = (t.float().to(device).requires_grad_() for t in (x64, a64, w64, b64))
        y = fn(x, a, w, b)
        y.backward(g64.float().to(device))
        got[impl] = {"y": y, "x": x.grad, "a": a.grad, "w": w.grad, "b": b.grad}
        for k, r in ref.items():
            value = got[impl][k].detach().double().cpu()
            if k == "x":                    # u = 12 (x = 24) is where the two part
                value, r = value[..., :5], r[..., :5]
            torch.testing.assert_close(value, r, rtol=1e-5, atol=1e-6, msg=f"{impl} {k}")
    far = ref["x"][0, 5].item()                   # about 1e-10
    assert got["by-hand-inexact"]["x"][0, 5].item() == 0.0
    assert abs(got["by-hand-exact"]["x"][0, 5].item() - far) <= 1e-5 * far


def test_noop_launches_run_the_triton_path_without_its_kernels():
    """The no-op latency row times the Triton backend's own call path down to the launches
    (each seen, with its grid), and afterwards the real kernels are back."""
    real = bench.triton_backend._kernels
    with bench._noop_launches(True) as launched, checks.backend("triton"):
        x = torch.randn(8, 16, requires_grad=True)
        y = F.dyt(x, 0.5, torch.ones(16))
        y.sum().backward()
    assert [name for name, _ in launched] == ["dyt_forward", "dyt_backward", "dyt_sums"]
    assert y.shape == x.grad.shape == (8, 16)
    assert bench.triton_backend._kernels is real


def test_model_config_times_every_norm_in_the_stack_and_alone(tmp_path, monkeypatch):
    """``bench --config model`` on a CPU: the small stack, every norm, eager and compiled
    (dynamo's eager backend here: inductor's compile time is the GPU run's to spend), the
    stack and its norms alone, inference and training; each row on disk as measured."""
    from numeric import bench_model as M

    monkeypatch.setitem(M.RUNS, "compiled", "eager")
    monkeypatch.setitem(M.MODEL_SIZES["cpu"], "reps", 1)
    summary = bench.run(tmp_path, config="model", progress=lambda m: None)
    rows = list(csv.DictReader((tmp_path / "model.csv").open()))
    want = {(n, r, w, m) for n in M.NORMS for r in M.RUNS for w in ("stack", "norms")
            for m in M.MODES}
    assert {(r["norm"], r["run"], r["what"], r["mode"]) for r in rows} == want
    assert len((tmp_path / "model.jsonl").read_text().splitlines()) == len(want)
    assert all(float(r["time_ms"]) > 0 for r in rows)
    assert all(v["ratio_vs_rmsnorm"] == 1 for k, v in summary.items() if k.startswith("rmsnorm"))


def test_model_block_is_a_llama_block():
    """The block computes x + attn(norm1(x)), then h + w2(silu(w1 n) * w3 n), n = norm2(h):
    against the same written out with torch's own attention math (softmax of the causal
    scores), float64."""
    from numeric import bench_model as M

    torch.manual_seed(0)
    d, heads, hidden = 8, 2, 12
    block = M.Block(d, heads, hidden, M.NORMS["rmsnorm"]).double()
    x = torch.randn(2, 5, d, dtype=torch.float64)
    n1 = block.norm1(x)
    q, k, v = (t.view(2, 5, heads, d // heads).transpose(1, 2)
               for t in block.qkv(n1).chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, d)
    h = x + block.out(a)
    n2 = block.norm2(h)
    want = h + block.w2(torch.nn.functional.silu(block.w1(n2)) * block.w3(n2))
    assert torch.allclose(block(x), want, rtol=1e-12, atol=1e-12)


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
