"""FreezeOut: per-block cosine LR that reaches zero at t_i; a block whose LR is zero is frozen.

How to use: ``--strategy freezeout --set t0=0.8 --set schedule=cubic --set scale_lr=true``.
Block i of B (block 0 is the stem; the head is i = B) gets
``t_i = g(t0 + (1 - t0) * i / B)`` with ``g(x) = x`` (``linear``) or ``x**3`` (``cubic``; ``t0`` is
given before cubing, as in the paper, so t0 = 0.8 puts the first block at 0.512). Its LR
multiplier at fraction ``t`` of the run (counted in iterations, whatever the epoch length) is
Eq. 1, ``alpha_i(t) = 0.5 * alpha_i(0) * (1 + cos(pi * t / t_i))`` with ``alpha_i(0) = 1/t_i``
when ``scale_lr`` (every block travels the same integrated LR) else 1. The head has t = 1:
it trains to the end on plain cosine annealing. FreezeOut's schedule replaces the workload's
``schedule``.

Suggested hyperparameters (paper, Sec. 3.1): cubic, scaled, ``t0 = 0.8``; the close
alternative is linear, unscaled, ``t0 = 0.5``. Studies search ``t0`` in [0.3, 0.95] and both
``schedule`` and ``scale_lr`` (the paper sweeps "a wide range of t0"). Mind the low end: cubic
and scaled, t0 = 0.3 starts block 0 at 1/0.3**3, about 37x the base LR (2x at the default 0.8);
a trial that diverges there is recorded as ``diverged``.

What it skips: from the first iteration with ``t >= t_i`` block i is frozen: its weights stop
requiring gradients and its BatchNorm goes to eval mode at once, mid-epoch, so autograd runs
no backward through the frozen prefix (no input-gradient and no weight-gradient GEMMs: nothing
upstream needs a gradient) and SGD never touches it (no momentum, no weight decay). At the
next epoch boundary the loop takes the block over as frozen (forward under ``no_grad``, out of
the optimizer). With ``cache: true`` the frozen prefix is then served from the loop's feature
cache (computed once, without augmentation; no forward at all) - an option no paper has.

Readings chosen: a "layer" of the paper is a block here (the loop's LR groups are per block;
the paper's code also freezes whole residual blocks of its WRN). On ``densenet121`` the blocks are
the stem, 4 dense blocks and 3 transitions (8 in all), so freezing is coarser than the paper's per-layer
DenseNet-BC (L = 76): fewer, larger steps of saving. t_i is spaced over the
iterations of this run, not the paper code's hard-coded 1000 iterations per epoch.

Paper: A. Brock, T. Lim, J.M. Ritchie, N. Weston, "FreezeOut: Accelerate Training by
Progressively Freezing Layers", NIPS 2017 workshop (../shared/papers/freezeout.txt), Eq. 1.
"""
from __future__ import annotations

import math

from .base import EpochPlan, HParam, Strategy


def freeze_times(t0: float, n: int, schedule: str) -> list[float]:
    """t_i for i = 0..n (n = number of blocks; index n is the head, t = 1), as fractions of training."""
    lin = [t0 + (1.0 - t0) * i / n for i in range(n + 1)]
    return [x ** 3 for x in lin] if schedule == "cubic" else lin


def lr_multipliers(t: float, times: list[float], scale_lr: bool) -> list[float]:
    """Eq. 1 at fraction ``t`` of training, per block (head last): a multiplier of the base LR."""
    return [0.5 * (1.0 / ti if scale_lr else 1.0) * (1.0 + math.cos(math.pi * t / ti)) if t < ti else 0.0
            for ti in times]


class FreezeOut(Strategy):
    __doc__ = __doc__
    name = "freezeout"
    hparams = {
        "t0": HParam(float, 0.8, "fraction of training (before cubing) at which the first block's LR reaches 0",
                     low=0.1, high=1.0, search=(0.3, 0.95)),
        "schedule": HParam(str, "cubic", "spacing of the t_i: linear, or linear then cubed",
                           choices=("linear", "cubic"), search=("linear", "cubic")),
        "scale_lr": HParam(bool, True, "flag: initial LR of block i is base LR / t_i",
                           search=(True, False)),
        "cache": HParam(bool, False, "flag: serve the frozen prefix from the feature cache (from the next epoch)"),
    }

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.blocks = ctx.model.blocks
        self.times = freeze_times(self.hp["t0"], len(self.blocks), self.hp["schedule"])
        self.frozen = 0  # blocks frozen so far (a prefix: t_i grows with i)

    def _due(self, t: float) -> int:
        return sum(1 for ti in self.times[:-1] if t >= ti)

    def epoch_start(self, epoch: int) -> EpochPlan:
        k = self._due(epoch / self.ctx.epochs)
        self.frozen = max(self.frozen, k)
        return EpochPlan(frozen=k, cached=k if self.hp["cache"] else 0)

    def step_start(self, epoch: int, step: int, t: float) -> None:
        k = self._due(t)
        for b in self.blocks[self.frozen:k]:  # LR reached zero mid-epoch: freeze now
            b.eval()
            for p in b.parameters():
                p.requires_grad_(False)
        self.frozen = max(self.frozen, k)

    def lr_factors(self, t: float, sched: float) -> list[float]:
        return lr_multipliers(t, self.times, self.hp["scale_lr"])
