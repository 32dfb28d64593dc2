"""``python -m numeric bench --config model``: the DyT paper's efficiency table, one GPU's size.

A stack of LLaMA-style blocks, each ``x + attn(norm1(x))`` then ``h + mlp(norm2(h))``:
attention by ``F.scaled_dot_product_attention`` (causal; q, k, v and output projections, no
bias), a SwiGLU MLP ``w2(silu(w1 h) * w3 h)``. Per norm layer (torch's ``nn.RMSNorm``,
``numeric.DyT``, ``numeric.DyISRU``, Liger-Kernel's ``LigerDyT`` when installed on CUDA),
eager and under ``torch.compile``: the time of an inference forward (no grad) and of a
training step's forward and backward (no optimizer: it costs the same for every norm), of
the whole stack and of its norm layers alone (each norm layer on an input of the stack's
activation shape, the same number of calls). Ratios against torch's RMSNorm, eager or
compiled alike, measured in the same run.

Sizes (MODEL_SIZES): on CUDA 4 blocks, d 4096, 32 heads, sequence 2048, batch 4, SwiGLU
hidden 11008, bfloat16 (LLaMA-7B's block); on a CPU a small stack of the same design, float32,
so the benchmark is tested without a GPU.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as TF

from . import modules

#: device -> the stack's size, dtype and repetitions.
MODEL_SIZES = {
    "cuda": {"blocks": 4, "d": 4096, "heads": 32, "seq": 2048, "batch": 4, "hidden": 11008,
             "dtype": torch.bfloat16, "reps": 10},
    "cpu": {"blocks": 2, "d": 64, "heads": 4, "seq": 16, "batch": 2, "hidden": 172,
            "dtype": torch.float32, "reps": 3},
}
MODES = ("inference", "training")
#: How each stack runs: as written, and under torch.compile with this backend.
RUNS = {"eager": None, "compiled": "inductor"}
HEADER = ["norm", "run", "what", "mode", "time_ms", "ratio_vs_rmsnorm"]


def _liger_dyt():
    try:
        from liger_kernel.transformers import LigerDyT
    except Exception:  # noqa: BLE001 - not installed, or no GPU for its Triton kernels
        return None
    return lambda d: LigerDyT(d)


#: norm name -> a factory of one norm layer over d channels (None: not available here).
NORMS = {
    "rmsnorm": lambda d: nn.RMSNorm(d, eps=1e-6),
    "dyt": lambda d: modules.DyT(d),
    "dyisru": lambda d: modules.DyISRU(d),
}


def norms(device: str) -> dict:
    out = dict(NORMS)
    liger = _liger_dyt() if device == "cuda" else None
    if liger is not None:
        out["liger-dyt"] = liger
    return out


class Block(nn.Module):
    """One LLaMA-style block: x (batch, seq, d) -> (batch, seq, d)."""

    def __init__(self, d: int, heads: int, hidden: int, norm):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = norm(d), norm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = TF.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                            v.transpose(1, 2), is_causal=True)
        h = x + self.out(a.transpose(1, 2).reshape(b, s, d))
        n = self.norm2(h)
        return h + self.w2(TF.silu(self.w1(n)) * self.w3(n))


def stack(norm, size: dict, device: str) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [Block(size["d"], size["heads"], size["hidden"], norm) for _ in range(size["blocks"])]
    return nn.Sequential(*blocks).to(device=device, dtype=size["dtype"])


class NormsAlone(nn.Module):
    """The stack's norm layers, each applied to its own input (the stack's activation
    shape): the norms' share of the stack, measured apart."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        self.norms = nn.ModuleList(m for b in model for m in (b.norm1, b.norm2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(norm(x) for norm in self.norms)


def _timer(device: str):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def run(step, reps: int) -> float:
        step()
        step()                                    # warm-up (and compilation)
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def _step(module, x, grad, mode: str):
    if mode == "inference":
        def step():
            with torch.no_grad():
                module(x)
        return step

    def step():
        xg = x.detach().requires_grad_(True)
        y = module(xg)
        ys = y if isinstance(y, tuple) else (y,)
        torch.autograd.backward(ys, [grad] * len(ys))
        for p in module.parameters():
            p.grad = None
    return step


def run(out: Path, *, device: str | None = None, progress=print, write=None) -> list[dict]:
    """Every (norm, compiled, what, mode) row, each handed to ``write`` as it is measured."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = MODEL_SIZES[device]
    shape = (size["batch"], size["seq"], size["d"])
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(shape, generator=g, device=device).to(size["dtype"])
    grad = torch.randn(shape, generator=g, device=device).to(size["dtype"])
    timer, rows = _timer(device), []
    for name, norm in norms(device).items():
        model = stack(norm, size, device)
        for how, backend in RUNS.items():
            torch._dynamo.reset()                 # each (norm, run) within the limit
            for what, module in (("stack", model), ("norms", NormsAlone(model))):
                fn = module if backend is None else torch.compile(module, backend=backend)
                for mode in MODES:
                    progress(f"bench model: {name} {how} {what} {mode}")
                    t = timer(_step(fn, x, grad, mode), size["reps"])
                    row = {"norm": name, "run": how, "what": what, "mode": mode,
                           "time_ms": 1e3 * t}
                    rows.append(row)
                    if write is not None:
                        write(row)
        del model
    base = {(r["run"], r["what"], r["mode"]): r["time_ms"] for r in rows
            if r["norm"] == "rmsnorm"}
    for r in rows:
        r["ratio_vs_rmsnorm"] = r["time_ms"] / base[(r["run"], r["what"], r["mode"])]
    return rows


def describe(device: str) -> str:
    s = MODEL_SIZES[device]
    return (f"{s['blocks']} blocks, d {s['d']}, {s['heads']} heads, sequence {s['seq']}, "
            f"batch {s['batch']}, SwiGLU hidden {s['hidden']}, "
            f"{str(s['dtype']).replace('torch.', '')}, {device}, median of {s['reps']}")
