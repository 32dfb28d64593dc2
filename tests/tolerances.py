"""The one table of tolerances and the one comparison helper live in derive/testing.py
(``derive.testing``, which anyone's implementation is tested with); re-exported here."""
from derive.testing import (DTYPES, ERROR_LOG, TOLERANCES, Mismatch, Tol,  # noqa: F401
                            assert_close, tol_for)
