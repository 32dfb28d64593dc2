"""FSDP2 and the layers' 0-dim scalars.

torch's ``fully_shard`` refuses 0-dim parameters ("fully_shard doesn't support scalar
parameters"), and the layers' scalars (``alpha``, ``log_beta``, ``shift``) are 0-dim so that a
bfloat16 input stays bfloat16. They are one number each: keep them whole on every process
(``ignored_params``) and average their gradients over the processes, as FSDP2 does for the
sharded parameters::

    scalars = numeric.distributed.replicated_scalars(model)
    for layer in blocks:
        fully_shard(layer, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)

The model then trains as in one process (tests/test_distributed.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _mean_grad(p: torch.Tensor) -> None:
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())


def replicated_scalars(model: nn.Module) -> set[nn.Parameter]:
    """The 0-dim parameters of ``model``, each given a hook that averages its gradient over
    the default process group once it is accumulated; pass them as ``ignored_params``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for p in scalars:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(_mean_grad)
    return scalars
