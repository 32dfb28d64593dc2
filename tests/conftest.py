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
# "floor" for the lowest supported torch (.ci/floor): the same tests with fewer draws.
settings.register_profile(
    "floor", derandomize=True, max_examples=10, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The caches of one run, and nothing from an earlier run or the user's own: the derivation's
# (derive/cache.py: the first process that needs a result derives and checks it, the others,
# xdist's workers and the CLI's subprocesses, read it back) and inductor's (so that a run on a
# machine with a warm compile cache takes as long, and compiles the same code, as on a fresh
# one). pytest_configure makes the folder; xdist's workers are handed the controller's.
def _use_caches(run: str) -> str:
    os.environ["DYNORM_CACHE"] = os.path.join(run, "derive")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(run, "inductor")
    return run


def pytest_configure(config):
    worker = getattr(config, "workerinput", {})
    config.dynorm_run = _use_caches(worker.get("dynorm_run")
                                    or tempfile.mkdtemp(prefix="dynorm-test-"))
    if worker:   # xdist's workers share the cores: torch's threads in each, no more than its share
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(worker["workercount"])))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller: each worker shares the run's caches."""
    node.workerinput["dynorm_run"] = node.config.dynorm_run


# Without a GPU, the tests of the Triton backend (tests/test_kernels.py, the "triton" cases
# elsewhere) run the kernels on CPU tensors through Triton's interpreter. Triton reads
# TRITON_INTERPRET when a @triton.jit function is defined, its own included (triton.language's,
# imported with torch._dynamo by any test that compiles), so it is set here, before any test
# module is imported. It changes nothing for CPU code otherwise. With a GPU it stays unset:
# the Triton cases run on CUDA tensors and their CPU cases skip (tests/checks.py, cannot_run).
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
