"""numeric.RMSNorm and numeric.LayerNorm as people use them: torch's defaults, errors that
name the argument, reset_parameters; values on each of tests/strategies.py's DEVICES."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.testing import assert_close
import numeric
from tests import strategies as S

NORMS = [numeric.RMSNorm, numeric.LayerNorm]


@pytest.mark.parametrize("cls", NORMS)
@pytest.mark.parametrize("C,shape", [(8, (2, 7)), (1, ()), (3, (3, 0))],
                         ids=["last-dim-7", "0-d", "(3,0)"])
def test_wrong_input_shape_names_the_last_dimension(cls, C, shape):
    with pytest.raises(ValueError, match=f"input's last dimension must be {C}"):
        cls(C)(torch.randn(shape))


@pytest.mark.parametrize("cls", NORMS)
def test_integer_input_and_non_tensor_are_type_errors(cls):
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        cls(3)(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match="input must be a tensor"):
        cls(3)([1.0, 2.0, 3.0])


@pytest.mark.parametrize("cls", NORMS)
@pytest.mark.parametrize("eps", [-1, -1e-12, float("nan"), float("inf")])
def test_negative_or_non_finite_eps_is_rejected(cls, eps):
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        cls(8, eps=eps)


@pytest.mark.parametrize("cls", NORMS)
def test_eps_of_the_wrong_type_is_a_type_error(cls):
    with pytest.raises(TypeError, match="eps must be a real number"):
        cls(8, eps="1e-5")


def test_layernorm_eps_none_is_a_type_error():
    """torch's LayerNorm has no eps=None either."""
    with pytest.raises(TypeError, match="eps must be a real number, got NoneType"):
        numeric.LayerNorm(8, eps=None)


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 3e-4), (torch.bfloat16, 3e-4),
                                         (torch.float64, 1e-8)],
                         ids=["float32", "bfloat16", "float64"])
def test_rmsnorm_eps_defaults_to_torchs(dtype, scale, device):
    """eps=None is torch's default: its RMSNorm takes the compute dtype's machine epsilon.
    The inputs are small enough (mean square ~ eps) for eps to matter."""
    torch.manual_seed(0)
    x = (torch.randn(4, 16, dtype=torch.float64) * scale).to(device, dtype)
    kw = dict(dtype=dtype, device=device)
    ours, theirs = numeric.RMSNorm(16, **kw), nn.RMSNorm(16, **kw)
    assert ours.eps is None and theirs.eps is None
    assert_close(ours(x), theirs(x).double(), what="RMSNorm with eps=None")
    # the check can fail: another eps in this regime is far off
    assert not torch.allclose(nn.RMSNorm(16, eps=1e-6, **kw)(x).double(),
                              theirs(x).double(), rtol=1e-2)
    assert_close(numeric.RMSNorm(16, eps=None, **kw)(x), theirs(x).double(),
                 what="RMSNorm with explicit eps=None")


@pytest.mark.parametrize("device", S.DEVICES)
@pytest.mark.parametrize("cls,ref", [(numeric.RMSNorm, nn.RMSNorm),
                                     (numeric.LayerNorm, nn.LayerNorm)])
def test_meta_init_then_to_empty_then_reset(cls, ref, device):
    """The usual deferred init: build on meta, allocate, reset; weights are torch's init."""
    ours, theirs = cls(8, device="meta"), ref(8, device="meta")
    ours.to_empty(device=device)
    theirs.to_empty(device=device)
    for m in (ours, theirs):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float("nan"))          # what to_empty may leave behind
        m.reset_parameters()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    x = torch.randn(3, 8, device=device)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
