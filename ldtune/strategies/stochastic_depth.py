"""Stochastic depth: skip residual branches at random, more often the deeper the unit.

How to use: ``--strategy stochastic_depth --set p=0.5`` on a residual block net. Residual unit
l of L (counted from 1 at the input) skips its branch with probability ``p * l / L`` (the
linear decay rule; the last unit drops with probability ``p``), one draw per unit per
mini-batch, for the whole batch. Shortcuts stay as the net has them (identity; the projection
of a down-sampling unit). Evaluation runs every branch scaled by its survival probability
``1 - p * l / L``.

Suggested hyperparameters: ``p`` = 0.5 (Huang et al.'s p_L = 0.5 survival at the last unit);
studies search ``p`` in [0.1, 0.8].

What it skips: a skipped branch is not computed at all, forward or backward
(``ResidualUnit.run_branch`` off); the cost table counts the step without it. Expected FLOP
saving is about ``p/2`` of the residual units' share.

Readings chosen: down-sampling units drop like the others (in Huang et al. every unit can
drop); ``drop_downsample: false`` keeps them always on. ``rule: uniform`` gives every unit drop
probability ``p`` (the paper's uniform rule, which it compares with linear decay) instead.

Time vs FLOPs: on a narrow net on a CPU the early, high-resolution units cost more time per FLOP
than the late ones: their BatchNorm, ReLU and add passes run over 4x larger maps, and no FLOP count
includes those. ResNet-20 at width 8, one core: skipping stage 1's branches saves 1.06-1.10 times
their FLOP share in time, stage 2's 0.87-0.92 and stage 3's 0.76-0.80 (``scripts/skip_cost.py``, two
runs). Linear decay drops the late units most, so ``time_saved`` trails ``flops_saved``: efficiency
0.80-0.86 in ``ldtune bench`` with ldtune's fused CPU BatchNorm (0.85-0.89 over 2 epochs in
``scripts/skip_cost.py``), 0.65-0.78 over eight runs before it. At width 16 stage 3's skips save
0.90 of their FLOP share, and linear decay gets 0.92-0.93 in ``ldtune bench`` (0.88-0.94 in
``skip_cost.py``; BENCHMARKS.md). ``rule: uniform`` spreads the drops evenly: 0.93 in both
``skip_cost.py`` runs at width 8, 0.95-1.00 at width 16. On a Zen 4 CPU with AVX-512, where
oneDNN pads 8-channel convolutions to 16, the stage gap is wider (1.30 / 0.70 / 0.60) and linear
decay gets 0.73-0.78 at width 8, 0.91 at width 16 (three bench runs and one, BENCHMARKS.md). On
an H100, ResNet-18 at 32x32 with p = 0.5 gave 0.47-0.82 over four runs (BENCHMARKS.md, GPU).

Paper: G. Huang, Y. Sun, Z. Liu, D. Sedra, K. Weinberger, "Deep Networks with Stochastic Depth",
ECCV 2016 (cited by LayerDropBack and Depth Dropout; not in ../shared/papers).
"""
from __future__ import annotations

from .base import HParam
from .branch_drop import BranchDrop


def linear_decay(p: float, n: int) -> list[float]:
    """Drop probability of residual unit l = 1..n: p * l / n."""
    return [p * (i + 1) / n for i in range(n)]


class StochasticDepth(BranchDrop):
    __doc__ = __doc__
    name = "stochastic_depth"
    hparams = {
        "p": HParam(float, 0.5, "probability per mini-batch that the last unit (rule linear) or any unit "
                    "(rule uniform) skips its branch", low=0.0, high=0.95, search=(0.1, 0.8)),
        "drop_downsample": HParam(bool, True, "flag: units that down-sample may drop too"),
        "rule": HParam(str, "linear", "drop probability per unit: 'linear' in depth up to p, or 'uniform' p",
                       choices=("linear", "uniform")),
    }

    def prepare_model(self, model) -> None:
        units = self.residual_units(model)
        drop = linear_decay(self.hp["p"], len(units)) if self.hp["rule"] == "linear" else [self.hp["p"]] * len(units)
        self.units, self.drop = [], []
        for u, d in zip(units, drop):
            if self.hp["drop_downsample"] or not u.downsample:
                self.units.append(u)
                self.drop.append(d)
                u.eval_branch_scale = 1.0 - d  # eval: branch times its survival probability
