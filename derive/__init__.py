"""dynorm's symbolic side: SymPy derives the counterparts of a normalization (DyT and
DyISRU from RMSNorm and LayerNorm, and those of any norm given as a formula).

Pure SymPy (and mpmath); never imports torch or numpy-based code (``derive.testing``, which
runs a torch implementation against the formulas, is the one exception, imported on its own).

The flow, module by module:

1. definitions: ``symbols`` (every symbol, created once), ``parser`` and ``formula`` (user
   text, never evaluated), ``normalizations`` (the norms as text, for
   the procedure);
2. procedure: ``steps`` (a Step and its obligations, checked two ways), ``statistics``
   (split a statistic into channel i and the rest), ``ode`` (solve the frozen-statistics
   ODE), ``procedure`` (``counterparts``: Jacobian, derivative space, function space);
3. catalog: ``catalog`` (every named result, derived and checked), ``activations`` and
   ``properties`` (what the named forms are proven to be), ``derf``, ``cache`` (the results
   on disk, keyed by this package's source);
4. forms: ``forms`` (a layer form as y = weight * f + bias, and the functions to print: forward,
   backward, jvp, hvp), ``vjp`` (the reference norms' backward);
5. rules: ``rules`` (the named rewrites in their rule sets, each proven);
6. printers: ``printers`` (SymPy to torch and to Triton, on one base);
7. emitters: ``codegen`` (numeric/generated/*.py), ``shell`` (the autograd.Functions and the
   dtype policy around the printed functions, for numeric's forms and a user's), ``kernelgen``
   (the Triton kernels),
   ``formgen`` (a module for a user's formula), ``generate`` (writes and checks them all),
   ``render`` and ``export`` (the derivations as text, LaTeX and JSON), ``cli``.

>>> from derive import result
>>> result("dyisru").expr
sqrt(C)*x/sqrt(beta + x**2)
"""
from .catalog import NAMES, Result, catalog, result
from .procedure import Counterparts, ProcedureError, counterparts
from .steps import DerivationError, Obligation, Step

__all__ = ["NAMES", "Result", "catalog", "result", "Counterparts", "ProcedureError",
           "counterparts", "DerivationError", "Obligation", "Step"]
