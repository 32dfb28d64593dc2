"""References from the catalog: the closed forms evaluated by mpmath at 50 digits.

The references live in derive/testing.py (``derive.testing``); re-exported here with the
table of the generated forms. A layer form is the catalog expression divided by its bound,
times a per-channel weight, plus a bias; its derivatives are SymPy's. Nothing here uses the
generated code or its printer: the spec is the catalog.
"""
from derive.testing import DIGITS, PRECISIONS, evaluate, layer_expr, params, wrt  # noqa: F401
from numeric.generated.forms import FORMS  # noqa: F401
