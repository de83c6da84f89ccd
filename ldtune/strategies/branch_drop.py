"""The mechanism shared by strategies that skip whole residual branches at random (stochastic
depth, Depth Dropout); not a strategy itself (it has no ``name``, so it is not registered).

A subclass's ``prepare_model`` picks its units with :meth:`BranchDrop.residual_units` and sets
``self.units`` and ``self.drop`` (one drop probability per unit). Every step each unit draws
once, from the strategy's seeded generator, and skips its branch for the whole mini-batch
(``ResidualUnit.run_branch`` off: not computed at all). The run's end switches every branch back on.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .. import models
from ..models import ResidualUnit
from .base import Strategy


class BranchDrop(Strategy):
    draws_at_random = True  # one draw per unit per mini-batch
    units: list[ResidualUnit]  # the units that may drop, set by prepare_model
    drop: list[float]  # probability per mini-batch that each of them skips its branch

    def residual_units(self, model) -> list[ResidualUnit]:
        """The net's residual units; a UserError naming ``model`` if it has none."""
        units = models.residual_units(model)
        if not units:
            raise UserError("model", f"{self.name} needs residual units; {model.arch or 'this net'} has none")
        return units

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self._drop = torch.tensor(self.drop)

    def step_start(self, epoch: int, step: int, t: float) -> None:
        keep = torch.rand(len(self.units), generator=self.ctx.rng) >= self._drop  # one draw per unit
        for u, k in zip(self.units, keep.tolist()):
            u.run_branch = k

    def teardown(self) -> None:
        for u in getattr(self, "units", []):
            u.run_branch = True
