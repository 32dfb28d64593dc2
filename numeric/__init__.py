"""dynorm's numeric side: the generated PyTorch layers, experiments and benchmarks.

Needs torch (and numpy); never imports SymPy.

    >>> import torch, numeric
    >>> layer = numeric.DyISRU(8)            # weight sqrt(8), beta 8: RMSNorm on unit-RMS input
    >>> layer(torch.randn(2, 8)).shape
    torch.Size([2, 8])
"""
from . import distributed, functional
from .convert import convert
from .modules import Derf, DyISRU, DyISRULN, DyT, DyTLN, llama_alpha_init
from .reference_norms import LayerNorm, RMSNorm

__all__ = ["functional", "distributed", "convert", "DyT", "DyISRU", "DyTLN", "DyISRULN", "Derf", "LayerNorm",
           "RMSNorm", "llama_alpha_init"]
