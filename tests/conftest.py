import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)  # small nets: one thread is fastest, and robust when the machine is busy


def pytest_addoption(parser):
    parser.addoption("--plugin", action="append", default=[], metavar="MODULE",
                     help="import this strategy plugin, so that the conformance suite runs over its strategies too")
    parser.addoption("--hparam", action="append", default=[], metavar="NAME.KEY=VALUE",
                     help="a hyperparameter of strategy NAME in the conformance suite's 2-epoch runs "
                          "(one that lets it skip work within them)")


def pytest_configure(config):
    from ldtune.errors import UserError
    from ldtune.strategies import REGISTRY, import_plugins
    try:
        import_plugins(config.getoption("plugin"), field="--plugin")
    except UserError as e:
        raise pytest.UsageError(str(e)) from None
    config.ldtune_hparams = {}
    for given in config.getoption("hparam"):
        name, dot, rest = given.partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and key):
            raise pytest.UsageError(f"--hparam: expected NAME.KEY=VALUE, got {given!r}")
        if name not in REGISTRY or key not in REGISTRY[name].hparams:
            raise pytest.UsageError(f"--hparam {given}: no strategy {name!r} with hyperparameter {key!r}"
                                    " (a plugin's: load it with --plugin MODULE)")
        config.ldtune_hparams.setdefault(name, {})[key] = value


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
