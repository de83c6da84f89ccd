import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)  # small nets: one thread is fastest, and robust when the machine is busy


@pytest.fixture(scope="session")
def fmnist_small():
    """A 512-image, class-balanced Fashion-MNIST subset; test set: a class-balanced 2,000 images."""
    from ldtune.data import load, trim_test_set
    return trim_test_set(load("fashion_mnist", subset=512, seed=0), 2000)


@pytest.fixture(scope="session")
def digits():
    from ldtune.data import load
    return load("digits", seed=0)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("name")`` imports scripts/name.py as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
