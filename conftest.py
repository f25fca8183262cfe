"""Repo-wide pytest setup: GPU tests are skipped where no GPU is visible (CI is CPU-only)."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_environ():
    """The plugin reads its settings once per process (overlays/environ.py); a test that loads them with its own
    monkeypatched environment must not leave those values to the next test."""
    yield
    from speedrun.overlays import environ

    environ.reset()


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (run on the GPU host, see README)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
