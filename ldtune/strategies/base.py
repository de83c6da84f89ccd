"""The strategy contract.

A strategy decides; the training loop (``ldtune.train.fit``) obeys and never names a strategy.
The loop calls, in order:

* ``prepare_model(model)`` once, before the cost table and the optimizer exist (a strategy may
  change the net here, e.g. swap shortcuts);
* ``setup(ctx)`` once, with a :class:`Context`;
* ``epoch_start(epoch) -> EpochPlan`` before every epoch: how many leading blocks are frozen
  (forward under ``no_grad``, BatchNorm in eval, out of the optimizer; this prefix only grows),
  how many of those come from the feature cache (no forward at all), batch size, LR scale and
  how many training images BatchNorm's statistics are recomputed on before the evaluation;
* ``step_start(epoch, step, t)`` before every step: may switch residual branches off
  (``ResidualUnit.run_branch``) or weights' ``requires_grad`` for this step; a weight without a
  gradient gets no optimizer update (no momentum, no weight decay);
* ``lr_factors(t, sched)`` per step: a multiplier of the base LR per block (and last the head),
  or ``None`` to use the loop's schedule value ``sched`` everywhere;
* ``after_backward(step)`` after every backward (gradients are there);
* ``epoch_end(epoch) -> dict`` extra fields for the epoch record;
* ``teardown()`` when the run ends, however it ends.

Hyperparameters are declared in ``hparams`` with type, valid range, the default search space for
studies and a unit; ``Strategy(**values)`` validates them and raises :class:`UserError` naming the
bad field.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import UserError
from ..text import plural


def _short(v) -> str:
    """A number as an error shows it: one of many digits by its length."""
    text = str(v)
    return text if len(text) <= 24 else f"a number of {len(text.lstrip('-'))} digits"


@dataclass(frozen=True)
class HParam:
    kind: type  # int, float, str or bool
    default: Any
    unit: str  # e.g. "epochs", "fraction of training", "probability per unit per mini-batch"
    low: float | None = None  # inclusive bounds of valid values
    high: float | None = None
    choices: tuple | None = None
    search: tuple | None = None  # study default: (low, high) for numbers, or the choices to try
    help: str = ""
    # an epoch count (unit "epochs"): the largest value that still acts in an E-epoch run is
    # E - end_margin (studies search below it, recommendations stay below it)
    end_margin: int = 1

    @property
    def is_epoch_count(self) -> bool:
        return self.kind is int and self.unit.startswith("epochs")

    def largest_acting(self, epochs: int) -> int:
        return max(epochs - self.end_margin, int(self.low) if self.low is not None else 0)

    def any_acts(self, epochs: int) -> bool:
        """Whether some valid value of this epoch count acts in an ``epochs``-epoch run."""
        return epochs - self.end_margin >= (self.low if self.low is not None else 0)

    def never_acts(self, value, epochs: int) -> bool:
        """An epoch count too large to do anything in an ``epochs``-epoch run (any, where the run
        is too short for every value)."""
        return self.is_epoch_count and (value > self.largest_acting(epochs) or not self.any_acts(epochs))

    def warn_if_never_acts(self, where: str, value, epochs: int) -> None:
        """A warning naming ``where`` when ``value`` never acts in ``epochs`` epochs (not an error:
        the run is valid, only pointless for this hyperparameter)."""
        if self.never_acts(value, epochs):
            most = f"at most {self.largest_acting(epochs)} does" if self.any_acts(epochs) else "no value does"
            warnings.warn(f"{where}: {value} never acts in {plural(epochs, 'epoch')} ({most})", stacklevel=2)

    def check(self, name: str, value: Any, strategy: str) -> Any:
        field_name = f"{strategy}.{name}"
        if self.kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                value = value.lower() in ("true", "1", "yes")
            elif type(value) is int and value in (0, 1):  # ``--set scale_lr=1`` reads as YAML's int 1
                value = bool(value)
            if not isinstance(value, bool):
                raise UserError(field_name, f"must be true or false, got {value!r}")
        elif self.kind in (int, float):
            if isinstance(value, bool):
                raise UserError(field_name, f"must be a number, got {value!r}")
            try:
                v = self.kind(value) if isinstance(value, str) else value
            except ValueError:
                raise UserError(field_name, f"must be {self.kind.__name__}, got {value!r}") from None
            if self.kind is int and isinstance(v, float) and v.is_integer():
                v = int(v)
            if self.kind is int and not isinstance(v, int) or not isinstance(v, (int, float)):
                raise UserError(field_name, f"must be {self.kind.__name__}, got {value!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(field_name, f"must be a finite number, got {value!r}")
            if self.low is not None and v < self.low or self.high is not None and v > self.high:
                bounds = (f">= {self.low}" if self.high is None else f"<= {self.high}" if self.low is None
                          else f"in [{self.low}, {self.high}]")
                raise UserError(field_name, f"must be {bounds}, got {_short(v)}")
            if isinstance(v, int) and not -2 ** 63 <= v < 2 ** 63:  # the results hold 64-bit numbers
                raise UserError(field_name, f"must fit in 64 bits, got {_short(v)}")
            value = self.kind(v)
        else:
            value = str(value)
        if self.choices is not None and value not in self.choices:
            raise UserError(field_name, f"must be one of {list(self.choices)}, got {value!r}")
        return value


@dataclass
class EpochPlan:
    frozen: int = 0  # leading blocks not trained this epoch (no_grad forward, BN eval, out of the optimizer)
    cached: int = 0  # leading blocks whose output comes from the feature cache (<= frozen)
    batch_size: int | None = None  # None: the workload's batch size
    lr_scale: float = 1.0  # multiplies every block's LR this epoch
    # training images to recompute BatchNorm's running statistics on, for the net as evaluated, after
    # this epoch's steps and before its evaluation, in its training time (0: none)
    recalibrate_bn: int = 0


@dataclass
class Context:
    model: Any  # the BlockNet (after prepare_model)
    epochs: int
    steps_per_epoch: int  # at the workload's batch size
    batch_size: int
    lr: float  # base LR
    device: torch.device
    seed: int
    rng: torch.Generator  # CPU generator for the strategy's own draws (seeded)
    cost: Any  # ldtune.cost.CostTable
    workdir: Path  # the run's scratch directory (removed or kept by the caller)
    extra: dict = field(default_factory=dict)


class Strategy:
    """Base class; the default hooks train everything, every step (the baseline)."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    # True where what it skips is drawn at random (from the seeded ``ctx.rng``); the conformance
    # suite checks a run's skips change with that generator's seed exactly where this says so
    draws_at_random: ClassVar[bool] = False

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - set(self.hparams))
        if unknown:
            known = ", ".join(self.hparams) or "none"
            raise UserError(f"{self.name}.{unknown[0]}", f"unknown hyperparameter (known: {known})")
        self.hp = {k: spec.check(k, values.get(k, spec.default), self.name) for k, spec in self.hparams.items()}
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise UserError naming the field."""

    def warn_never_acting(self, given, epochs: int) -> None:
        """A warning for each of the ``given`` hyperparameters that does nothing in ``epochs`` epochs."""
        for k in given:
            self.hparams[k].warn_if_never_acts(f"{self.name}.{k}", self.hp[k], epochs)

    # ---------------------------------------------------------------- hooks
    def prepare_model(self, model) -> None:
        pass

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    def epoch_start(self, epoch: int) -> EpochPlan:
        return EpochPlan()

    def step_start(self, epoch: int, step: int, t: float) -> None:
        pass

    def lr_factors(self, t: float, sched: float) -> list[float] | None:
        return None

    def after_backward(self, step: int) -> None:
        pass

    def epoch_end(self, epoch: int) -> dict:
        return {}

    def teardown(self) -> None:
        pass

    @classmethod
    def card(cls) -> str:
        return (cls.__doc__ or "").strip()
