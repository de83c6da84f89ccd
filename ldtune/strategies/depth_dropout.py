"""Depth Dropout: skip whole residual branches at random, per mini-batch; trainable shortcuts.

How to use: ``--strategy depth_dropout --set p=0.5`` on a residual block net of two-3x3-conv units
(CIFAR ResNets, resnet18/34). On bottleneck nets (resnet50 and up) a 1x1 shortcut costs 16/17 of
its branch, so the strategy adds FLOPs at p = 0.5 and warns. Before training, every residual unit
that does not down-sample gets a trainable shortcut (1x1 conv + BatchNorm, initialised to pass
its input through) in place of its identity. At every step each such unit draws once, from the
strategy's seeded generator: with probability ``p`` its main path is skipped for the whole
mini-batch. Evaluation runs every unit, unscaled (Sec. III-D: the trainable shortcut has
already absorbed the dropping).

Suggested hyperparameters: ``p`` = 0.25 (the paper's most accurate: error 8.1% vs 8.5% on
CIFAR-10 ResNet-56) or 0.5 (about a third less training time for error 9.8%: 1.3 points up,
which the paper's text calls "relative error ... increasing by 1.3%"; Table I).
Studies search ``p`` in [0.1, 0.8]. On runs of a few epochs, ``recalibrate_bn`` = 64 images
(below): the paper's unscaled evaluation, near chance after 4 epochs, then scores 0.64 there.

What it skips: a skipped unit's main path is not computed at all, forward or backward
(``ResidualUnit.run_branch`` off: no conv, no BN, no masking); the cost table counts the
step without it. Its 1x1 shortcut always runs and costs 1/18 of a two-3x3-conv branch.

Readings chosen:
* shortcut = 1x1 conv + BN (this project's issue); the paper's Sec. IV-A also puts a
  non-linearity on it: ``shortcut_relu: true``.
* evaluation runs every unit unscaled (Sec. III-D, the default). On short runs this fails:
  the BatchNorm running statistics were gathered with about half the branches off, and the
  full net's sums are larger than that. Two options fix it; neither is in the paper:
  - ``recalibrate_bn: N`` keeps the unscaled rule. Before each evaluation it recomputes every
    BatchNorm's running statistics over N training images with every unit on ("precise BN":
    one forward pass of the whole net per image, timed and counted as training);
  - ``eval_scale: true`` scales each branch by 1 - p at eval (stochastic depth's rule), at no cost.
  ResNet-20 at width 8, 2,048 Fashion-MNIST images, 4 epochs, three seeds (``scripts/dd_eval.py``):
  at p = 0.5 the paper's rule scores 0.27, ``recalibrate_bn: 64`` 0.64 (for 1.1 points of
  ``flops_saved``), ``eval_scale`` 0.58; at p = 0.25, 0.40, 0.66 and 0.66. The baseline: 0.75.
  256 images score as 64 do. The training is the same under every rule;
* units that down-sample never drop (the paper: "improves accuracy by a noticeable margin");
  ``drop_downsample: true`` lets them drop too (their projection shortcut stays).
* FLOP saving on CIFAR ResNet-56 (our count vs the paper's analytic 12.3%, 34.6%, 56.7% at
  p = 0.25, 0.5, 0.75): the paper charges each 1x1 shortcut 1/9 of a whole unit and keeps 3 of
  27 units; our ResNet-56 has 2 down-sampling units (option B projections), a 1x1 shortcut costs
  1/18 of a branch (two 3x3 convs), and the stem and head cost a little in both nets. So we count
  18.3%, 41.7% and 65.2% of the plain ResNet-56's training FLOPs, i.e. (25 p - 25/18) / 27 of 27
  equal units (``tests/test_methods.py`` checks both the paper's arithmetic and ours). Counted
  FLOPs omit BN, ReLU and adds, which the skipped branches also save and the shortcut's BN adds.

Time vs FLOPs: on a narrow net on a CPU the shortcut costs far more time than FLOPs. Its 1x1 conv
does 1/9 of a 3x3 conv's FLOPs but reads and writes as many bytes, and oneDNN runs it at about half
a 3x3 conv's FLOP rate at 8 channels; its BatchNorm adds passes that no FLOP count includes. With
every branch on, a step costs 1.09-1.21x the baseline's time for 1.05x its FLOPs (six in-process
measurements, ``scripts/step_anatomy.py`` and ``scripts/bn_ab.py``), and ``time_saved`` trails
``flops_saved`` by that overhead: on a width-8 ResNet-20 the shortcuts take 13-15% of this
strategy's training time. Made free (a bound, not a method), they would leave an efficiency of
1.01; against its own net with nothing dropped it is 0.84, and 0.92-0.93 at width 16
(``scripts/skip_cost.py``, two runs at each width). A hand-written 1x1 kernel saved about 1% of a
step, and one op for the whole 1x1 conv + BN nothing (BENCHMARKS.md). ResNet-56 at width 8, p =
0.5: 31.7-32.8% less time for 42% fewer FLOPs over three ``ldtune bench`` runs (20-28% over six
runs before ldtune's fused CPU BatchNorm, BENCHMARKS.md); ResNet-20 at width 8: efficiency
0.68-0.71 over four runs, at width 16 0.84. On a Zen 4 CPU with AVX-512: 0.69-0.73 at width 8
(three runs), 0.79 at width 16, and 30.5% less time on ResNet-56 (BENCHMARKS.md).
Dropping the same branches with identity shortcuts (``stochastic_depth`` with ``rule: uniform``)
turns nearly all of the FLOP saving into time. On an H100 at batch 256, where a step's time follows
its kernel launches, the shortcuts' extra conv and BN kernels cost more than the skipped branches
save: ResNet-18 at 32x32, p = 0.5, 31% fewer FLOPs and 14% *more* time.

Paper: J. Guo and S. Gould, "Depth Dropout: Efficient Training of Residual Convolutional Neural
Networks", DICTA 2016 (../shared/papers/depth-dropout.txt), Eq. 3-4 and Sec. III-C.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..models import ResidualUnit
from ..errors import UserError
from .base import EpochPlan, HParam
from .branch_drop import BranchDrop


def trainable_shortcut(channels: int, relu: bool = False) -> nn.Sequential:
    """1x1 conv + BN (+ ReLU) that starts as the identity up to BatchNorm's normalisation."""
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
    layers = [conv, nn.BatchNorm2d(channels)] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*layers)


def branch_channels(unit: ResidualUnit) -> int:
    convs = [m for m in unit.branch.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class DepthDropout(BranchDrop):
    __doc__ = __doc__
    name = "depth_dropout"
    hparams = {
        "p": HParam(float, 0.5, "probability per unit per mini-batch that its main path is skipped",
                    low=0.0, high=0.95, search=(0.1, 0.8)),
        "drop_downsample": HParam(bool, False, "flag: units that down-sample may drop too"),
        "shortcut_relu": HParam(bool, False, "flag: ReLU after the shortcut's BN (the paper's Sec. IV-A)"),
        "eval_scale": HParam(bool, False, "flag: eval scales each branch by 1 - p (not the paper's rule)"),
        "recalibrate_bn": HParam(int, 0, "training images per evaluation: BatchNorm statistics recomputed with every "
                                 "unit on (0: off, the paper's rule)", low=0),
    }

    def validate(self) -> None:
        if self.hp["recalibrate_bn"] == 1:  # BatchNorm cannot take batch statistics of one image at 1x1
            raise UserError("depth_dropout.recalibrate_bn", "must be 0 (off) or at least 2 images")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        data = ctx.extra.get("data")
        if data is not None and self.hp["recalibrate_bn"] > data.num_train:
            warnings.warn(f"depth_dropout.recalibrate_bn: {self.hp['recalibrate_bn']} is more than the "
                          f"{data.num_train} training images; it recalibrates on all of them", stacklevel=2)

    def epoch_start(self, epoch: int) -> EpochPlan:
        return EpochPlan(recalibrate_bn=self.hp["recalibrate_bn"])

    def prepare_model(self, model) -> None:
        self.units = [u for u in self.residual_units(model) if self.hp["drop_downsample"] or not u.downsample]
        self.drop = [self.hp["p"]] * len(self.units)
        costs = []  # the new 1x1 conv's weights over the branch's: their FLOP ratio, at one resolution
        for u in self.units:
            if not u.downsample:  # identity shortcut -> trainable 1x1 conv + BN
                c = branch_channels(u)
                costs.append(c * c / sum(m.weight.numel() for m in u.branch.modules() if isinstance(m, nn.Conv2d)))
                u.shortcut = trainable_shortcut(c, self.hp["shortcut_relu"])
            u.eval_branch_scale = 1.0 - self.hp["p"] if self.hp["eval_scale"] else 1.0  # paper: unscaled
        if costs and max(costs) > 0.25:  # a bottleneck (1x1, 3x3, 1x1 at 4x width): 16/17 of its branch
            warnings.warn(f"depth_dropout: {model.arch or 'this net'}'s shortcuts would cost up to "
                          f"{max(costs):.0%} of their branch's FLOPs (bottleneck units), so dropping saves little "
                          "or costs more than it saves; the paper's nets have two-3x3-conv units (1/18)", stacklevel=2)
