"""Shared test configuration: hypothesis profiles, devices, the gpu marker."""
from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# "ci" is the default everywhere: derandomized, bounded, no deadline (CI machines vary).
settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(
    "dev", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The derivation's disk cache (derive/cache.py) for this run only: the first process that
# needs a result derives and checks it, later ones (the CLI's subprocesses) read it back.
# Nothing from an earlier run or the user's own cache is read.
os.environ["DYNORM_CACHE"] = tempfile.mkdtemp(prefix="dynorm-cache-")

# Without a GPU, tests/test_kernels.py runs the Triton kernels through Triton's interpreter.
# Triton reads TRITON_INTERPRET when a @triton.jit function is defined, its own included
# (triton.language's, imported with torch._dynamo by any test that compiles), so it is set
# here, before any test module is imported. It changes nothing for CPU code otherwise.
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped when no CUDA device is present."""
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
