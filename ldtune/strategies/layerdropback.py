"""LayerDropBack (LDB): in DROP epochs a random subset of layers gets no weight gradient.

How to use: ``--strategy layerdropback --set p=0.3 --set s=2 --set kappa=2``. Epoch e is a DROP
epoch when ``e % s == 0 and e > 0`` (Eq. 1); the others are plain SGD. In a DROP epoch each
layer outside the always-trained ones (the first ``keep_first`` layers and the last) is left
out of the update with probability ``p``; batch size and learning rate are multiplied by
``kappa`` (Eq. 4 as the experiments run it, Sec. 4.3.3). The forward pass never changes, so
evaluation is the plain net.

Suggested hyperparameters (paper): ``p = 0.3``, ``kappa = 2``, ``s = 2`` (Table 4: s = 2 is the
setting of its main tables). Studies search ``p`` in [0.1, 0.8], ``s`` in 1..8 (cut to the values
that still act in a shorter run: 1..2 in 3 epochs), ``kappa`` in [1, 4].

What it skips: a left-out layer's weights have ``requires_grad`` off for that epoch (or step),
so autograd skips its weight-gradient GEMM (the input gradient still flows through it to the
always-trained first layers), the loop's ``zero_grad(set_to_none=True)`` leaves its gradient
``None`` and SGD gives it no update: no momentum, no weight decay. The cost table reads the
flags live, so ``epoch_flops`` shows the saving. Batch size times ``kappa`` saves no FLOPs
(same samples per epoch) but fewer, larger steps.

Time vs FLOPs: weight-gradient GEMMs are a third of a step's FLOPs but, on a narrow net on a CPU,
less of its time: BatchNorm, ReLU and the input gradients still run. So ``time_saved`` trails
``flops_saved``. With every weight after the stem off, 33% fewer FLOPs gave 26-29% less time on
ResNet-20 at width 8 (efficiency 0.79-0.88 with ldtune's fused CPU BatchNorm, 0.60-0.83 before
it; ``scripts/step_anatomy.py``, ``scripts/bn_ab.py``, BENCHMARKS.md). What makes up the rest is
``kappa``'s fewer, larger steps: on a Zen 4 CPU, p 0.5 and s 1 gave 0.63 with ``kappa`` 1 and
1.05 with ``kappa`` 2 (``ldtune bench``, three rounds each; BENCHMARKS.md).
On an H100 it is the other way round: the DROP epochs' larger batches (``kappa``) need fewer
kernel launches per image, so ResNet-18 at 32x32 trained 32% faster for 9% fewer FLOPs.

Readings chosen:
* a "layer" is a conv or linear layer together with the BatchNorm that follows it;
* ``p`` is the drop rate, as the text and the ablation say (``reading: text``, LR times
  ``kappa``). ``reading: equations`` follows Eq. 2 and Eq. 4 literally instead: a layer is
  *updated* iff u < p, and the DROP-epoch LR is base / p (batch size still times ``kappa``);
* the subset is drawn once per DROP epoch (Algorithm 1); ``resample: step`` draws it every
  step, as the authors' public code does.

Paper: E. Hershkovitch Neiterman, G. Ben-Artzi, "LayerDropBack: A Universally Applicable Approach
for Accelerating Training of Deep Networks" (../shared/papers/layerdropback.txt), Eq. 1-4, Alg. 1.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..errors import UserError
from .base import EpochPlan, HParam, Strategy

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def layers_of(model: nn.Module) -> list[list[nn.Parameter]]:
    """The net's layers in order: each conv/linear starts one; a BatchNorm (or any other leaf with
    parameters) joins the layer before it."""
    layers: list[list[nn.Parameter]] = []
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        if isinstance(m, WEIGHT_LAYERS) or not layers:
            layers.append([])
        layers[-1].extend(own)
    return layers


def is_drop_epoch(e: int, s: int) -> bool:
    """Eq. 1: DROP iff e mod s = 0 and e > 0."""
    return e > 0 and e % s == 0


class LayerDropBack(Strategy):
    __doc__ = __doc__
    name = "layerdropback"
    draws_at_random = True  # the layers updated, per DROP epoch or step
    hparams = {
        "p": HParam(float, 0.3, "probability per layer per DROP epoch (or step) of no weight update "
                    "(reading 'equations': of being updated)", low=0.0, high=1.0, search=(0.1, 0.8)),
        "s": HParam(int, 2, "epochs: epoch e is a DROP epoch when e % s == 0 and e > 0", low=1, high=1000,
                    search=(1, 8)),
        "kappa": HParam(float, 2.0, "multiplier of batch size in DROP epochs, and of LR (reading 'equations': LR / p)", low=1.0, high=8.0,
                        search=(1.0, 4.0)),
        "keep_first": HParam(int, 4, "layers: the first layers are always updated", low=0, high=10000),
        "resample": HParam(str, "epoch", "when the subset is drawn: once per DROP epoch or every step",
                           choices=("epoch", "step")),
        "reading": HParam(str, "text", "'text': p is the drop rate, LR x kappa; 'equations': Eq. 2 and 4",
                          choices=("text", "equations")),
    }

    def validate(self) -> None:
        if self.hp["reading"] == "equations" and self.hp["p"] == 0:
            raise UserError("layerdropback.p", "must be > 0 with reading 'equations' (the LR is base / p)")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        layers = layers_of(ctx.model)
        k = self.hp["keep_first"]
        self.sampled = layers[k:-1]  # the first k and the last layer always train
        if not self.sampled:
            warnings.warn(f"layerdropback.keep_first: {k} leaves none of {ctx.model.arch or 'the net'}'s "
                          f"{len(layers)} layers to sample (the first {k} and the last always train); "
                          "nothing is skipped", stacklevel=2)
        self.off: list[nn.Parameter] = []  # parameters this strategy switched off
        self.drop = False
        self.batch_size = int(round(self.hp["kappa"] * ctx.batch_size))
        data = ctx.extra.get("data")
        n = data.num_train if data is not None else ctx.steps_per_epoch * ctx.batch_size
        if any(is_drop_epoch(e, self.hp["s"]) for e in range(ctx.epochs)) and self.batch_size > n:
            raise UserError("layerdropback.kappa", f"DROP-epoch batch size {self.batch_size} "
                            f"(kappa x {ctx.batch_size}) exceeds the {n} training images")

    def _restore(self) -> None:
        for p in self.off:
            p.requires_grad_(True)
        self.off = []

    def _draw(self) -> None:
        self._restore()
        u = torch.rand(len(self.sampled), generator=self.ctx.rng)
        update = u < self.hp["p"] if self.hp["reading"] == "equations" else u >= self.hp["p"]
        for layer, upd in zip(self.sampled, update.tolist()):
            if not upd:
                for p in layer:
                    if p.requires_grad:
                        p.requires_grad_(False)
                        self.off.append(p)

    def epoch_start(self, epoch: int) -> EpochPlan:
        self.drop = is_drop_epoch(epoch, self.hp["s"])
        if not self.drop:
            self._restore()
            return EpochPlan()
        if self.hp["resample"] == "epoch":
            self._draw()
        lr = 1.0 / self.hp["p"] if self.hp["reading"] == "equations" else self.hp["kappa"]
        return EpochPlan(batch_size=self.batch_size, lr_scale=lr)

    def step_start(self, epoch: int, step: int, t: float) -> None:
        if self.drop and self.hp["resample"] == "step":
            self._draw()

    def teardown(self) -> None:
        self._restore()
