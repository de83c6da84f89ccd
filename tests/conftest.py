import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fmnist_small():
    """A 512-image, class-balanced Fashion-MNIST subset (test set: the whole 10,000)."""
    from ldtune.data import load
    return load("fashion_mnist", subset=512, seed=0)


@pytest.fixture(scope="session")
def digits():
    from ldtune.data import load
    return load("digits", seed=0)
