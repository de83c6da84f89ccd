"""Strategy registry: every module in this package that defines a ``Strategy`` subclass with a
``name`` registers it. The CLI, the study spec, ``ldtune bench`` and the tests all use ``REGISTRY``."""
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


def get(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise UserError("strategy", f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def create(name: str, **hparams) -> Strategy:
    return get(name)(**hparams)


_discover()

__all__ = ["REGISTRY", "get", "create", "Strategy", "EpochPlan", "HParam", "Context"]
