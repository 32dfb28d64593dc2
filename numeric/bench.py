"""``python -m numeric bench``: our layers against what a user would pick instead.

For each shape and dtype, forward and forward+backward of:
- ``ours``: numeric.functional as a user calls it (an autograd.Function that saves x only,
  on the backend chosen for the input: the Triton kernels on CUDA; on a CPU, at these sizes,
  the fused variants through torch.compile);
- ``ours-unfused``: the same op by op (``set_backend("torch")``, CPU);
- ``eager``: the composition a user writes, e.g. ``w * tanh(a * x) + b`` (DyT) or
  ``w * x * rsqrt(beta + x * x) + b`` (DyISRU), for every form;
- ``compiled``: that composition under torch.compile;
- ``rms_norm``, ``layer_norm``: torch's fused norms (F.rms_norm, nn.LayerNorm's kernel);
- ``liger-dyt``, ``liger-rms``: Liger-Kernel's Triton DyT and RMSNorm, when installed (CUDA).

Reported: median time (CUDA events on CUDA, perf_counter on CPU; warm-up, many
repetitions, inputs rotated over several buffers), effective bandwidth (an element-wise
layer moves 2 x bytes(x) forward and 3 x backward), the percentage of the copy bandwidth
measured in the same run, the bytes autograd keeps for the backward, peak memory on CUDA,
and the time ratio against ``eager`` measured in the same run.
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import functional as F
from ._autograd import eager_apply
from . import triton_backend
from .backends import FUSE_MIN
from .generated.forms import FORMS
from .experiments.report import save_figure, table_markdown, write_summary, write_table

NAME = "bench"

#: (shapes, repetitions) per configuration: the small CPU one of the layers' goal, the
#: paper-sized CUDA ones of the kernels' goals.
CONFIGS = {
    "cpu": {"shapes": [(4096, 1024)], "reps": 15},
    "cpu-full": {"shapes": [(4096, 1024), (8192, 1024), (4096, 4096), (16384, 4096),
                            (4096, 8192)], "reps": 5},
    "cuda": {"shapes": [(4096, 4096), (16384, 4096), (4096, 8192), (8192, 1024)], "reps": 100},
    "quick": {"shapes": [(256, 128)], "reps": 3},
    "model": {"shapes": [], "reps": 0},     # numeric/bench_model.py: a stack of blocks
}
#: Time per call at a small shape (what a call costs beyond its memory traffic): ours and
#: the eager composition, float32, one thread on a CPU. Goal: ours at most 1.3x eager.
LATENCY = {"shape": (8, 4096), "dtype": torch.float32, "reps": {False: 400, True: 20},
           "impls": ("ours", "eager", "rms_norm", "by-hand-inexact", "by-hand-exact")}
DTYPES = (torch.float32, torch.bfloat16)
MODES = ("fwd", "fwd+bwd")
ROTATE = 4  # input buffers cycled through, so no repetition finds x in cache


@dataclass
class Case:
    """One implementation at one shape and dtype: inputs and the function to time."""

    impl: str
    layer: str
    fn: Callable
    params: list[torch.Tensor]
    backend: str = "auto"   # numeric.functional's backend while this case runs


#: form -> the composition a user writes, f(x, *scalars, w, b).
EAGER = {
    "dyt": lambda x, a, w, b: w * torch.tanh(a * x) + b,
    "dyisru": lambda x, beta, w, b: w * x * torch.rsqrt(beta + x * x) + b,
    "dyt_ln": lambda x, a, s, w, b: w * torch.tanh(a * (x - s)) + b,
    "dyisru_ln": lambda x, beta, s, w, b: w * (x - s) * torch.rsqrt(beta + (x - s) ** 2) + b,
    "derf": lambda x, a, s, w, b: w * torch.erf(a * x + s) + b,
}


_COMPILED = {}


def _compiled(fn, device: str):
    """fn under torch.compile. On a CPU static shapes (one compile per shape, dtype and grad
    mode; the run resets dynamo's caches per shape and dtype, so each function stays within
    its recompile limit of 8). On CUDA dynamic shapes: inductor's pointwise Triton kernel
    takes the sizes as arguments (and Triton still specializes those divisible by 16), so
    one compile per dtype and grad mode serves every shape: 20 compiles instead of 80."""
    key = (fn, device)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=device == "cuda")
    return _COMPILED[key]


def _liger():
    try:
        import liger_kernel.transformers as lk  # noqa: F401
        return lk
    except Exception:  # not installed, or no GPU for its Triton kernels
        return None


#: A value for each scalar parameter: DyT's default alpha, DyISRU's default beta (C), a shift.
_SCALARS = {"alpha": lambda C: 0.5, "beta": float, "shift": lambda C: 0.1}


def _params(layer, C, device, dtype):
    scalars = [torch.tensor(_SCALARS[p](C), device=device, dtype=dtype)
               for p in FORMS[layer].scalars]
    w = torch.ones(C, device=device, dtype=dtype)
    b = torch.zeros(C, device=device, dtype=dtype)
    return [*scalars, w, b]


def cases(C: int, device: str, dtype, layers=tuple(EAGER)) -> list[Case]:
    """Every implementation that can run here, as a table of cases."""
    out = []
    for layer in layers:
        eager, ours = EAGER[layer], getattr(F, layer)
        p = _params(layer, C, device, dtype)
        out += [Case("eager", layer, eager, p),
                Case("compiled", layer, _compiled(eager, device), p), Case("ours", layer, ours, p)]
        if device == "cpu":
            out.append(Case("ours-unfused", layer, ours, p, backend="torch"))
    w = torch.ones(C, device=device, dtype=dtype)
    b = torch.zeros(C, device=device, dtype=dtype)
    out.append(Case("rms_norm", "norm", lambda x, w: torch.nn.functional.rms_norm(x, (C,), w),
                    [w]))
    out.append(Case("layer_norm", "norm",
                    lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), w, b), [w, b]))
    lk = _liger() if device == "cuda" else None
    if lk is not None:
        out.append(Case("liger-dyt", "dyt", _liger_module(lk, "LigerDyT", C, device, dtype), []))
        out.append(Case("liger-rms", "norm", _liger_module(lk, "LigerRMSNorm", C, device, dtype),
                        []))
    return out


def _liger_module(lk, name, C, device, dtype):
    module = getattr(lk, name)(C).to(device=device, dtype=dtype)
    return lambda x: module(x)


# -- what each implementation computes where a formula is hard -----------------------------

#: (form, dtype, what, x, scalars, where): one input per row where the eager composition's
#: arithmetic is cheaper than the formula because it is wrong there, ``where`` it is wrong
#: (None: everywhere; else the CPU capabilities, torch.backends.cpu.get_cpu_capability(),
#: whose vectorized code is wrong: torch's scalar erf is right at 1.3e-6, its AVX2 and
#: AVX512 erf, which inductor's compiled loop calls, is 14% off). The reference is the same
#: composition in float64: nothing overflows there, and 1 - tanh^2 at 10 keeps 8 of its 16
#: digits (the references are good to 1e-8, the errors shown are 1e-3 to 1).
PROBES = (
    ("dyisru", torch.float32, "y", 1e20, {"beta": 1.0}, None),   # x*x overflows float32
    ("derf", torch.float32, "y", 1.3e-6, {"alpha": 1.0, "shift": 0.0},
     {"AVX2", "AVX512"}),                                        # vectorized erf near 0
    ("dyt", torch.float32, "dy/dx", 10.0, {"alpha": 1.0}, None),  # 1 - tanh^2 cancels
    ("dyt", torch.bfloat16, "dy/dx", 4.0, {"alpha": 1.0}, None),  # tanh saved in bfloat16
)
#: Large enough that ours runs fused on a CPU, as in the timings.
PROBE_SHAPE = (FUSE_MIN // 1024, 1024)


def _probe(fn, x, params, what: str) -> float:
    """y or dy/dx of fn at x (every element the same), as a float64 number."""
    params = [p.clone() for p in params]
    if what == "y":
        with torch.no_grad():
            return fn(x, *params).flatten()[0].double().item()
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x, *params).sum(), x)
    return g.flatten()[0].double().item()


def probes(device: str = "cpu") -> list[dict]:
    """Each probe's value from eager, compiled and ours, its relative error against the
    float64 composition, and whether the composition is expected wrong on this machine
    (``composition_wrong_here``: its row's ``where``, against this CPU's capability)."""
    rows = []
    capability = torch.backends.cpu.get_cpu_capability()
    for layer, dtype, what, value, scalars, where in PROBES:
        C = PROBE_SHAPE[-1]
        ps = [torch.tensor(scalars[p], device=device) for p in FORMS[layer].scalars]
        wb = [torch.ones(C, device=device), torch.zeros(C, device=device)]
        x = torch.full(PROBE_SHAPE, value, device=device)
        exact = _probe(EAGER[layer], x.double(), [p.double() for p in (*ps, *wb)], what)
        row = {"layer": layer, "dtype": str(dtype).replace("torch.", ""), "what": what,
               "x": value, "exact": exact, "cpu_capability": capability,
               "composition_wrong_here": where is None or (device == "cpu"
                                                           and capability in where)}
        args = (x.to(dtype), [p.to(dtype) for p in (*ps, *wb)])
        for impl, fn in (("eager", EAGER[layer]), ("compiled", _compiled(EAGER[layer], device)),
                         ("ours", getattr(F, layer))):
            got = _probe(fn, *args, what)
            row[impl] = got
            row[f"{impl}_rel_err"] = abs(got - exact) / abs(exact)
        rows.append(row)
    return rows


PROBE_HEADER = ["layer", "dtype", "what", "x", "exact", "eager", "eager_rel_err", "compiled",
                "compiled_rel_err", "ours", "ours_rel_err", "cpu_capability"]


# -- timing ------------------------------------------------------------------------------

def _timer(device: str):
    if device == "cuda":
        def run(step, reps):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                starts[i].record()
                step(i)
                ends[i].record()
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
        return run

    def run(step, reps):
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - t0)
        return times
    return run


def _step(case: Case, xs, grads, mode: str):
    params = [p.detach().requires_grad_(mode != "fwd") for p in case.params]

    def step(i):
        x = xs[i % len(xs)]
        if mode == "fwd":
            with torch.no_grad():
                case.fn(x, *params)
            return
        xg = x.detach().requires_grad_(True)
        case.fn(xg, *params).backward(grads[i % len(grads)])
    return step


def kept_bytes(case: Case, x) -> int:
    """Bytes of the tensors autograd saves for the backward (each storage once)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape), t.stride())] = (
            t.numel() * t.element_size())
        return t

    params = [p.detach().requires_grad_(True) for p in case.params]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        case.fn(x.detach().requires_grad_(True), *params)
    return sum(seen.values())


def copy_bandwidth(x, reps: int, device: str) -> float:
    """Bytes per second of a device copy of x (read + write), measured now."""
    y = torch.empty_like(x)
    times = _timer(device)(lambda i: y.copy_(x), reps + 3)[3:]
    return 2 * x.numel() * x.element_size() / statistics.median(times)


def measure(case: Case, shape, dtype, device, reps, mode) -> dict:
    previous = F.set_backend(case.backend)
    try:
        return _measure(case, shape, dtype, device, reps, mode)
    finally:
        F.set_backend(previous)


def _measure(case: Case, shape, dtype, device, reps, mode) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(shape, generator=g, device=device).to(dtype) for _ in range(ROTATE)]
    grads = [torch.randn(shape, generator=g, device=device).to(dtype) for _ in range(ROTATE)]
    step = _step(case, xs, grads, mode)
    run = _timer(device)
    run(step, 3)                                      # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = run(step, reps)
    t = statistics.median(times)
    nbytes = xs[0].numel() * xs[0].element_size()
    moved = (2 if mode == "fwd" else 5) * nbytes
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else float("nan")
    return {"time_ms": 1e3 * t, "bandwidth_GBps": moved / t / 1e9,
            "kept_MiB": kept_bytes(case, xs[0]) / 2**20 if mode != "fwd" else 0.0,
            "peak_MiB": peak / 2**20}


def run(out: Path, *, quick: bool = False, progress=print, config: str | None = None) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = config or ("quick" if quick else device)
    if config == "cuda" and device != "cuda":
        raise ValueError("config 'cuda' needs a CUDA device, and none is present")
    if config == "model":
        return _model(out, device, progress)
    cfg = CONFIGS[config]
    rows, summary = [], {}
    write = appender(out / "bench.jsonl")
    for shape in cfg["shapes"]:
        for dtype in DTYPES:
            if device == "cpu":
                torch._dynamo.reset()             # static shapes: within the recompile limit
            x = torch.randn(shape, device=device).to(dtype)
            bw = copy_bandwidth(x, cfg["reps"], device)
            del x
            dname = str(dtype).replace("torch.", "")
            for case in cases(shape[-1], device, dtype):
                for mode in MODES:
                    progress(f"bench: {case.impl:11s} {case.layer:6s} {shape} {dname} {mode}")
                    r = measure(case, shape, dtype, device, cfg["reps"], mode)
                    r.update(impl=case.impl, layer=case.layer, shape=f"{shape[0]}x{shape[1]}",
                             dtype=dname, mode=mode, copy_GBps=bw / 1e9,
                             pct_copy=100 * r["bandwidth_GBps"] / (bw / 1e9))
                    rows.append(r)
                    write(r)
    _ratios(rows)
    progress("bench: latency (time per call at a small shape)")
    lat = latency(device, quick or config == "quick")
    progress("bench: probes (what each implementation computes where the formula is hard)")
    _write(out, rows, probes(device), device, config, lat)
    for r in lat:
        if r["impl"] in ("ours", NOOP_LAUNCHES):
            what = "latency" if r["impl"] == "ours" else f"latency {NOOP_LAUNCHES}"
            summary[f"{what} {r['layer']} {r['shape']} {r['dtype']} {r['mode']}"] = {
                "time_us": round(r["time_us"], 1),
                "time_ratio_vs_eager": round(r["ratio_vs_eager"], 3)}
    for r in rows:
        if r["impl"] == "ours":
            summary[f"{r['layer']} {r['shape']} {r['dtype']} {r['mode']}"] = {
                "time_ratio_vs_eager": round(r["ratio_vs_eager"], 3),
                "time_ratio_vs_compiled": round(r["ratio_vs_compiled"], 3),
                "kept_ratio_vs_eager": round(r["kept_ratio_vs_eager"], 3)}
    return summary


def appender(path: Path):
    """A function that appends one row to path as a JSON line, flushed: each figure is on
    disk as soon as it is measured (a run stopped early keeps what it measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)

    def write(row: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
    return write


def _model(out: Path, device: str, progress) -> dict:
    from . import bench_model as M

    rows = M.run(out, device=device, progress=progress, write=appender(out / "model.jsonl"))
    write_table(out, "model", M.HEADER, [[r[h] for h in M.HEADER] for r in rows])
    write_summary(out, "bench", [
        f"The DyT paper's efficiency table at one GPU's size: {M.describe(device)}; "
        f"{_device_name(device)}, torch {torch.__version__}. Times in ms; ratios over "
        "torch's RMSNorm in the same stack, eager or compiled alike, measured in the same "
        "run. `stack`: the whole stack; `norms`: its norm layers alone.",
        table_markdown(out, "model")])
    return {f"{r['norm']} {r['run']} {r['what']} {r['mode']}": {"time_ms": round(r["time_ms"], 3),
                             "ratio_vs_rmsnorm": round(r["ratio_vs_rmsnorm"], 3)}
            for r in rows}


# -- what exact derivatives cost per call: DyT by hand, both ways --------------------------

_BIG = torch.finfo(torch.float32).max


class _DyTInexact(torch.autograd.Function):
    """DyT as eager autograd differentiates it, in one Function (float32): tanh saved, the
    backward 1 - tanh^2 (``tanh_backward``), which is 0 once tanh rounds to 1 (|u| near 9)
    where the true value is still 1e-8. Four passes forward, eight backward."""

    @staticmethod
    def forward(x, a, w, b):
        t = torch.tanh(x * a)
        return torch.addcmul(b, w, t), t

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, g, _):
        x, a, w, t = ctx.saved_tensors
        gu = torch.ops.aten.tanh_backward(g * w, t)
        return gu * a, (gu * x).sum(), (g * t).sum(0), g.sum(0)


class _DyTExact(torch.autograd.Function):
    """DyT with the exact derivative written by hand, every temporary reused in place
    (float32): x clamped as ours, sech(u)^2 = 4e/(1 + e)^2 with e = exp(-2|u|), the scalar's
    gradient summed in float64. Four passes forward, sixteen backward."""

    @staticmethod
    def forward(x, a, w, b):
        return torch.addcmul(b, w, x.clamp(-_BIG, _BIG).mul_(a).tanh_())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])

    @staticmethod
    def backward(ctx, g):
        x, a, w = ctx.saved_tensors
        xc = x.clamp(-_BIG, _BIG)
        u = xc * a
        gw = torch.tanh(u).mul_(g).sum(0)
        e = u.abs_().mul_(-2).exp_()
        e.div_((e + 1).square_())                       # sech(u)^2 / 4
        t1 = torch.mul(g, w).mul_(e)
        gx = t1 * (4 * a)
        ga = t1.mul_(xc).sum(dtype=torch.float64).mul_(4)
        return gx, ga.to(a.dtype), gw, g.sum(0)


#: Hand-written DyT (x, alpha, weight, bias) for the latency table: where the time of an
#: exact derivative goes, apart from our shell and generated code.
#: Each called as ours is, by its C++ apply (eager_apply: no signature binding per call).
_INEXACT, _EXACT = eager_apply(_DyTInexact), eager_apply(_DyTExact)
BY_HAND = {"by-hand-inexact": lambda x, a, w, b: _INEXACT(x, a, w, b)[0],
           "by-hand-exact": _EXACT}


def latency(device: str, quick: bool = False) -> list[dict]:
    """Per-call times (microseconds, median) at LATENCY's shape, ours and the eager
    composition of every form (and F.rms_norm; for DyT also the two hand-written Functions
    of BY_HAND), forward (no grad) and forward+backward; on a CPU with one intra-op thread.
    Ratios against eager of the same layer and mode."""
    shape, dtype = LATENCY["shape"], LATENCY["dtype"]
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    todo = [c for c in cases(shape[-1], device, dtype) if c.impl in LATENCY["impls"]]
    dyt = _params("dyt", shape[-1], device, dtype)
    todo += [Case(impl, "dyt", fn, dyt) for impl, fn in BY_HAND.items()
             if impl in LATENCY["impls"]]
    if device == "cpu":      # the Python of the CUDA path, its launches no-ops
        todo += [Case(NOOP_LAUNCHES, c.layer, c.fn, c.params, backend="triton")
                 for c in todo if c.impl == "ours"]
    try:
        rows = []
        for case in todo:
            for mode in MODES:
                with _noop_launches(case.impl == NOOP_LAUNCHES):
                    r = measure(case, shape, dtype, device, LATENCY["reps"][quick], mode)
                rows.append({"impl": case.impl, "layer": case.layer,
                             "shape": f"{shape[0]}x{shape[1]}",
                             "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                             "time_us": 1e3 * r["time_ms"]})
    finally:
        torch.set_num_threads(threads)
    eager = {(r["layer"], r["mode"]): r["time_us"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        e = eager.get((r["layer"], r["mode"]))
        r["ratio_vs_eager"] = r["time_us"] / e if e else float("nan")
    return rows


#: The latency row of the Triton backend's call path on a CPU with every kernel a no-op:
#: what a CUDA call costs in Python (module, Function, the checks, allocations, the launch
#: arguments), the kernels' own time excluded.
NOOP_LAUNCHES = "ours-cuda-path-noop-launches"


class _NoopKernel:
    """A Triton kernel's stand-in: ``kernel[grid](...)`` records the launch, computes nothing."""

    def __init__(self, name: str, launched: list):
        self.name, self.launched = name, launched

    def __getitem__(self, grid):
        return lambda *args, **meta: self.launched.append((self.name, grid))


@contextmanager
def _noop_launches(on: bool):
    """The Triton backend runnable on a CPU, every kernel a no-op (outputs allocated, never
    written: timing only); yields the list of launches it saw."""
    launched: list = []
    if not on:
        yield launched
        return
    fake = SimpleNamespace(KERNELS={form: SimpleNamespace(scalars=len(FORMS[form].scalars), **{
        role: _NoopKernel(f"{form}_{role}", launched) for role in ("forward", "backward", "sums")})
        for form in FORMS})
    saved = triton_backend.check_device, triton_backend._kernels
    triton_backend.check_device, triton_backend._kernels = (lambda x: None), (lambda x: fake)
    try:
        yield launched
    finally:
        triton_backend.check_device, triton_backend._kernels = saved


LATENCY_HEADER = ["impl", "layer", "shape", "dtype", "mode", "time_us", "ratio_vs_eager"]


def _ratios(rows) -> None:
    """Ratios against the eager composition (and its torch.compile) of the same layer,
    shape, dtype and mode."""
    key = lambda r: (r["layer"], r["shape"], r["dtype"], r["mode"])  # noqa: E731
    eager = {key(r): r for r in rows if r["impl"] == "eager"}
    compiled = {key(r): r for r in rows if r["impl"] == "compiled"}
    for r in rows:
        e, c = eager.get(key(r)), compiled.get(key(r))
        r["ratio_vs_eager"] = r["time_ms"] / e["time_ms"] if e else float("nan")
        r["ratio_vs_compiled"] = r["time_ms"] / c["time_ms"] if c else float("nan")
        r["kept_ratio_vs_eager"] = (r["kept_MiB"] / e["kept_MiB"]
                                    if e and e["kept_MiB"] else float("nan"))


HEADER = ["impl", "layer", "shape", "dtype", "mode", "time_ms", "ratio_vs_eager", "ratio_vs_compiled",
          "bandwidth_GBps", "pct_copy", "kept_MiB", "kept_ratio_vs_eager", "peak_MiB",
          "copy_GBps"]


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write(out: Path, rows, probe_rows, device: str, config: str, lat) -> None:
    write_table(out, "bench", HEADER, [[r[h] for h in HEADER] for r in rows])
    write_table(out, "latency", LATENCY_HEADER, [[r[h] for h in LATENCY_HEADER] for r in lat])
    write_table(out, "probes", PROBE_HEADER, [[r[h] for h in PROBE_HEADER] for r in probe_rows])
    _plot(out, rows, device)
    name = _device_name(device)
    ours = [r for r in rows if r["impl"] == "ours"]
    lines = [f"{r['layer']} {r['shape']} {r['dtype']} {r['mode']}: time x{r['ratio_vs_eager']:.2f}"
             f" (x{r['ratio_vs_compiled']:.2f} of compiled)"
             + (f", kept bytes x{r['kept_ratio_vs_eager']:.2f}" if r["mode"] != "fwd" else "")
             for r in ours]
    write_summary(out, "bench", [
        f"Device: {name}; torch {torch.__version__}; configuration `{config}`. Times are "
        "medians; ratios are ours over the eager composition (and over its torch.compile), "
        "measured in the same run.",
        "Ours against eager: " + "; ".join(lines) + ".",
        "![time per implementation](bench.png)",
        table_markdown(out, "bench"),
        f"Time per call at {LATENCY['shape']} float32"
        + (", one intra-op thread" if device == "cpu" else "")
        + " (microseconds, median; what a call costs beyond its memory traffic), ours and "
        "the eager composition; the goal is ours at most 1.3x eager:",
        table_markdown(out, "latency"),
        "What each computes where the formula is hard (one input per row, every element the "
        "same; relative error against the same composition in float64). The composition's "
        "arithmetic, eager or compiled, is cheaper than ours where it is wrong:",
        table_markdown(out, "probes"),
    ])


def _plot(out: Path, rows, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["shape"], r["dtype"]) for r in rows})
    impls = list(dict.fromkeys(r["impl"] + ":" + r["layer"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(impls) * len(keys) / 2 + 3), sharey=True)
    for ax, mode in zip(axes, MODES):
        labels, values = [], []
        for key in keys:
            for impl in impls:
                hit = [r for r in rows if (r["shape"], r["dtype"]) == key and r["mode"] == mode
                       and r["impl"] + ":" + r["layer"] == impl]
                if hit:
                    labels.append(f"{impl} {key[0]} {key[1]}")
                    values.append(hit[0]["time_ms"])
        ax.barh(range(len(values)), values, color=["C0" if l.startswith("ours") else "C7"
                                                   for l in labels])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("median time (ms)")
        ax.set_title(f"{mode} on {_device_name(device)}")
    fig.tight_layout()
    save_figure(fig, out, "bench")
