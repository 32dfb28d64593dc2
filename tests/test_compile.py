"""torch.compile(fullgraph=True) of every layer, norm and generated module: the outputs and
every gradient equal eager's.

On torch 2.11 a compiled block gave eager's outputs and zero gradients for x and every
parameter (dynamo zeroes the gradients of an autograd.Function whose forward returns a no-op
``.to()``); the norms and generated modules raised "Unsupported custom jvp". The reference
is eager autograd through the same modules, which the property tests check against mpmath.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

import numeric
from derive import formgen
from tests import strategies as S

C = 8
#: Each layer or norm once, between Linears, so a zeroed gradient shows in x's and the
#: Linears' gradients as well as in the layer's own.
LAYERS = [numeric.DyT, numeric.DyISRU, numeric.DyTLN, numeric.DyISRULN, numeric.Derf,
          numeric.RMSNorm, numeric.LayerNorm]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A module from `dynorm generate --form`, imported from a temporary file."""
    path = tmp_path_factory.mktemp("form") / "soft.py"
    path.write_text(formgen.module("soft", "tanh(alpha*(x - shift))", {"alpha": 0.5}))
    spec = importlib.util.spec_from_file_location("soft", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soft"] = module           # dynamo looks a function's module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["soft"]


def _block(generated, device) -> nn.Sequential:
    torch.manual_seed(0)
    parts = [nn.Linear(C, C)]
    for cls in [*LAYERS, generated.Soft]:
        parts += [cls(C), nn.Linear(C, C)]
    block = nn.Sequential(*parts).to(device)
    with torch.no_grad():   # weights and biases away from their initial 1 and 0
        for name, p in block.named_parameters():
            if p.dim() == 1 and not isinstance(block[int(name.split(".")[0])], nn.Linear):
                p.uniform_(0.5, 1.5)
    return block


def _grads(block, x, run):
    x = x.detach().clone().requires_grad_(True)
    y = run(x)
    y.backward(torch.linspace(-1, 1, y.numel(), device=x.device).view_as(y))
    grads = {"x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}
    block.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize("device", S.DEVICES)
def test_compiled_block_matches_eager(generated, device):
    block = _block(generated, device)
    x = torch.randn(4, 3, C, device=device)
    y_eager, g_eager = _grads(block, x, block)
    y_comp, g_comp = _grads(block, x, torch.compile(block, fullgraph=True))
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    for name, g in g_eager.items():
        assert g is not None and g.abs().max() > 0, name
        torch.testing.assert_close(g_comp[name], g, rtol=1e-4, atol=1e-5, msg=name)
