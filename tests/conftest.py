from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # CI machines have 2 cores; keep tests from oversubscribing them.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models and many small kernels gain nothing from a second intra-op thread, and on a busy 2-core machine two
    spinning OpenMP threads slowed such tests many-fold."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
