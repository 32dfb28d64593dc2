"""A converted model under FSDP2 (torch.distributed.fsdp.fully_shard), two processes on the
CPU (gloo), trains as it does in one process. (DDP: tests/test_layers_api.py.)

fully_shard shards every parameter along its first dimension and rejects 0-dim ones
("fully_shard doesn't support scalar parameters"); the layers' scalars (alpha, log_beta,
shift) are 0-dim, so they are passed as ``ignored_params``: each process keeps them whole,
and a hook averages their gradients over the processes, as FSDP2 does for the rest.
"""
from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import numeric
from numeric.modules import LAYERS
from numeric.distributed import replicated_scalars

WORLD = 2
FORMS = ["dyt", "dyisru_ln"]     # one scalar, and two (log_beta, shift)
STEPS, BATCH = 3, 8


def _model(to: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 16),
                          nn.RMSNorm(16), nn.LayerNorm(16, elementwise_affine=False),
                          nn.Linear(16, 4)).double()
    numeric.convert(model, to)
    return model


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=g, dtype=torch.float64),
             torch.randn(BATCH, 4, generator=g, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model: nn.Module, batches, mean_over_processes=lambda t: t) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(mean_over_processes(loss.detach()).item())
    return losses


def _mean(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t.div_(dist.get_world_size())


def _worker(rank: int, store: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = {}
        for to in FORMS:
            model = _model(to)
            scalars = replicated_scalars(model)
            for layer in model:
                if isinstance(layer, tuple(LAYERS.values())):
                    fully_shard(layer, mesh=mesh, ignored_params=scalars)
            fully_shard(model, mesh=mesh, ignored_params=scalars)
            part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            losses = _train(model, [(x[part], y[part]) for x, y in _batches()], _mean)
            params = {n: (p.full_tensor() if p.dim() else p.detach().clone())
                      for n, p in model.named_parameters()}
            results[to] = (losses, params)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_fsdp2_trains_a_converted_model_as_one_process(tmp_path):
    out = tmp_path / "results.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD)
    results = torch.load(out)
    for to in FORMS:
        losses, params = results[to]
        model = _model(to)
        assert losses == pytest.approx(_train(model, _batches()), rel=1e-12), to
        assert params.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            assert torch.allclose(params[name], p, rtol=1e-12, atol=1e-14), f"{to}: {name}"
