"""dynorm's symbolic side: SymPy derives the counterparts of a normalization (DyT and
DyISRU from RMSNorm and LayerNorm, and those of any norm given as a formula).

Pure SymPy (and mpmath); never imports torch or numpy-based code.

>>> from derive import result
>>> result("dyisru").expr
sqrt(C)*x/sqrt(beta + x**2)
"""
from .catalog import NAMES, Result, catalog, result
from .procedure import Counterparts, ProcedureError, counterparts
from .steps import DerivationError, Obligation, Step

__all__ = ["NAMES", "Result", "catalog", "result", "Counterparts", "ProcedureError",
           "counterparts", "DerivationError", "Obligation", "Step"]
