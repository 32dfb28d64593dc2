"""dynorm's symbolic side: SymPy derives DyT and DyISRU from RMSNorm and LayerNorm.

Pure SymPy (and mpmath); never imports torch or numpy-based code.

>>> from derive import result
>>> result("dyisru").expr
sqrt(C)*x/sqrt(beta + x**2)
"""
from .catalog import NAMES, Result, catalog, result
from .steps import DerivationError, Obligation, Step

__all__ = ["NAMES", "Result", "catalog", "result", "DerivationError",
           "Obligation", "Step"]
