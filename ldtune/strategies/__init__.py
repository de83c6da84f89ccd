"""Strategy registry: every module in this package that defines a ``Strategy`` subclass with a
``name`` registers it. The CLI, the study spec, ``ldtune bench`` and the tests all use ``REGISTRY``.

A strategy of your own lives in a module of its own (a *plugin*) and registers itself with
:func:`register`; a study names the module under ``plugins:``, and its driver, its trials and
``ldtune pareto``/``recommend`` on its results import it (``ldtune strategies --plugin MODULE``
shows its card). The conformance suite (tests/test_conformance.py) runs over it like any other, with
``--plugin MODULE`` (README)."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import UserError
from .base import Context, EpochPlan, HParam, Strategy

REGISTRY: dict[str, type[Strategy]] = {}


def _discover() -> None:
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod != "base":
            importlib.import_module(f"{__name__}.{mod}")
    stack = list(Strategy.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.name and cls.__module__.startswith(__name__):
            REGISTRY[cls.name] = cls


# the trials table's columns and pareto's output columns (results.TRIAL_COLUMNS, commands.pareto.OUT_COLUMNS,
# kept equal by a test; named here so a plugin registers where only PyTorch is installed): a hyperparameter
# of one of these names would overwrite that column in every table
RESERVED_HPARAMS = frozenset({
    "study", "trial_id", "strategy", "model", "dataset", "epochs", "seed", "status", "error", "test_accuracy",
    "train_time_s", "train_flops", "flops_saved", "time_saved", "speedup", "accuracy_delta", "device_name",
    "front", "hyperparameters"})


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a plugin's strategy to ``REGISTRY`` under its ``name``; returns the class, so it serves
    as a class decorator (``@register``). A built-in strategy's name is not for a plugin to take."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or not cls.name:
        raise TypeError(f"register() takes a Strategy subclass with a name, got {cls!r}")
    if cls.name == "all":  # a spec's `strategies: {all: ...}` and the fronts' label for every strategy together
        raise UserError("plugins", f"{cls.__module__}.{cls.__qualname__}: the name 'all' stands for every strategy; "
                                   "rename it")
    known = REGISTRY.get(cls.name)
    if known is not None and known is not cls and known.__module__.startswith(f"{__name__}."):
        raise UserError("plugins", f"{cls.__module__}.{cls.__qualname__}: the name {cls.name!r} is a built-in strategy's")
    taken = sorted(set(cls.hparams) & RESERVED_HPARAMS)
    if taken:
        raise UserError("plugins", f"{cls.__module__}.{cls.__qualname__}: hyperparameter {taken[0]!r} is the name "
                                   "of a results column; rename it")
    REGISTRY[cls.name] = cls
    return cls


def import_plugins(modules, field: str = "plugins") -> None:
    """Import each plugin module (which registers its strategies); one that cannot be imported is
    the user's to mend, named under ``field``."""
    for module in modules:
        try:
            importlib.import_module(module)
        except UserError as e:  # a plugin's own complaint (register's name clash), under this field
            raise UserError(field, e.message) from None
        except ImportError as e:
            hint = (" (a plugin must be installed or on PYTHONPATH; for one in this directory: PYTHONPATH=$PWD)"
                    if isinstance(e, ModuleNotFoundError) and e.name == module.split(".")[0] else "")
            raise UserError(field, f"cannot import {module!r}: {e}{hint}") from None
        except Exception as e:  # the module raised, has a syntax error, or its name is not a module's
            raise UserError(field, f"cannot import {module!r}: {type(e).__name__}: {e}") from None


def unknown(field: str, name: str | None = None, load_with: str = "--plugin MODULE") -> UserError:
    """The error for a strategy name not in the registry, naming ``field`` (and ``name`` where the
    field is not the name itself), with the way to load a plugin's (``load_with``)."""
    what = "unknown strategy" if name is None else f"unknown strategy {name!r}"
    return UserError(field, f"{what}; known: {', '.join(sorted(REGISTRY))} (for a plugin's, load it with {load_with})")


def get(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise unknown("strategy", name)
    return REGISTRY[name]


def create(name: str, **hparams) -> Strategy:
    return get(name)(**hparams)


_discover()

__all__ = ["REGISTRY", "register", "import_plugins", "unknown", "get", "create", "Strategy", "EpochPlan", "HParam", "Context"]
