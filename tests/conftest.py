"""Test setup: pick the device and switch Triton to its CPU interpreter when there is no GPU.

TRITON_INTERPRET is read when a ``@triton.jit`` function is decorated, so it must
be set before tqgen (or any generated kernel) is imported.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    # The interpreter runs numpy/torch ops on tiny tiles: one thread per xdist worker
    # avoids oversubscribing the cores (2x faster on a 2-core CI machine).
    torch.set_num_threads(1)

import pytest  # noqa: E402

import tqgen  # noqa: E402,F401  (imported after the environment is set)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where kernels run: the GPU when present, else the CPU interpreter."""
    return DEVICE


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the tune cache at an empty directory for the test."""
    from tqgen.tuning import cache

    monkeypatch.setattr(cache, "TUNE_CACHE_DIR", tmp_path)
    cache.invalidate()
    yield tmp_path
    cache.invalidate()
