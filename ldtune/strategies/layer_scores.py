"""Learn&Drop's layer scores and prefix selection, shared by ``learn_drop`` and ``freezing``.

Functional core (a test can call it without the trainer):

* :class:`ScoreAccumulator` sums, over one epoch and on the device, each scored weight's signed
  gradient and each weight tensor's absolute gradient (``torch._foreach`` ops, no host sync per
  step), and returns P_l per block (Eq. 2):
  ``P_l = 1 - sum_i |sum_j g_lij| / sum_i sum_j |g_lij|`` (i: weights of block l, j: steps).
* :func:`standardize` is Eq. 3: ``P'_l = (P_l - mean(P)) / std(P)`` (population std).
* :func:`candidate_end` is Eq. 4 (or the text's maximum-sum prefix), :func:`median_rule` the
  paper's ``M_c >= M_d`` check, and :func:`select` puts them together.

:class:`ScoreSelection` is the strategy both methods share (no ``name``: not registered itself);
a subclass says with ``cache`` whether the selected prefix is cached (``learn_drop``) or only
frozen (``freezing``). The strategy cards explain the hyperparameters and the readings.
"""
from __future__ import annotations

import math
import warnings
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from .base import Context, EpochPlan, HParam, Strategy

SELECTIONS = ("eq4", "max_prefix_sum")
STANDARDIZE = ("head", "all")


def scored_params(block: nn.Module) -> list[nn.Parameter]:
    """The weights a block is scored on: conv and linear kernels (tensors of >= 2 dims), not BN
    affine parameters or biases (the paper scores "the weights of the l-th conv layer")."""
    return [p for p in block.parameters() if p.ndim >= 2]


class ScoreAccumulator:
    """Per-epoch gradient sums of a list of blocks' scored weights, on their device.

    ``params_by_block[b]`` is the list of weight tensors of block ``b``. ``add(grads)`` takes the
    gradients in the flattened order of those lists (a ``None`` gradient is skipped).
    """

    def __init__(self, params_by_block: Sequence[Sequence[torch.Tensor]]):
        self.params = [p for ps in params_by_block for p in ps]
        self.owner = [b for b, ps in enumerate(params_by_block) for _ in ps]  # block of each tensor
        self.num_blocks = len(params_by_block)
        dev = self.params[0].device if self.params else torch.device("cpu")
        self.signed = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]  # sum_j g_ij, per weight
        self.abs = torch.zeros(len(self.params), dtype=torch.float32, device=dev)  # sum_j sum_i |g_ij|, per tensor
        self.steps = 0

    def add(self, grads: Sequence[torch.Tensor | None]) -> None:
        if any(g is None for g in grads):
            keep = [i for i, g in enumerate(grads) if g is not None]
            if not keep:
                return
            signed, g = [self.signed[i] for i in keep], [grads[i] for i in keep]
            idx = torch.tensor(keep, device=self.abs.device)
            self.abs.index_add_(0, idx, torch.stack(torch._foreach_norm(g, 1)).float())
        else:
            signed, g = self.signed, list(grads)
            if not g:
                return
            self.abs += torch.stack(torch._foreach_norm(g, 1)).float()
        torch._foreach_add_(signed, g)
        self.steps += 1

    def add_from_params(self) -> None:
        """Accumulate the tracked parameters' current ``.grad``."""
        self.add([p.grad for p in self.params])

    def scores(self) -> list[float]:
        """P_l per block (Eq. 2). A block whose weights got no gradient at all scores 1 (no movement)."""
        if not self.params:
            return [1.0] * self.num_blocks
        dev = self.abs.device
        owner = torch.tensor(self.owner, device=dev)
        num = torch.zeros(self.num_blocks, device=dev).index_add_(
            0, owner, torch.stack(torch._foreach_norm(self.signed, 1)).float())
        den = torch.zeros(self.num_blocks, device=dev).index_add_(0, owner, self.abs)
        p = torch.where(den > 0, 1.0 - num / den.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(den))
        return [float(v) for v in p.double().cpu()]


def standardize(p: Sequence[float]) -> list[float]:
    """Eq. 3 with the population standard deviation; all zeros when every score is equal."""
    a = np.asarray(p, dtype=np.float64)
    if a.size == 0:
        return []
    sd = a.std()
    return [0.0] * a.size if sd == 0 or not math.isfinite(sd) else [float(v) for v in (a - a.mean()) / sd]


def candidate_end(ps: Sequence[float], rule: str = "eq4") -> int | None:
    """Index (into ``ps``, the standardized scores of the blocks still training, first one first)
    of the last candidate block to drop, or None.

    ``eq4``: Eq. 4 as printed, the smallest t with ``P'_t > 0 and P'_{t+1} < 0``.
    ``max_prefix_sum``: the text's "sub-vector of maximum sum starting from the first element":
    the t maximizing ``P'_0 + ... + P'_t`` (first such t), if that sum is positive.
    Either way t < len(ps) - 1: the last block is never a candidate.
    """
    last = len(ps) - 1
    if rule == "eq4":
        for t in range(last):
            if ps[t] > 0 and ps[t + 1] < 0:
                return t
        return None
    if rule == "max_prefix_sum":
        if last < 1:
            return None
        sums = np.cumsum(np.asarray(ps[:last], dtype=np.float64))
        t = int(np.argmax(sums))
        return t if sums[t] > 0 else None
    raise ValueError(f"unknown selection rule {rule!r}")


def median_rule(candidates: Sequence[float], dropped: Sequence[float]) -> bool:
    """``M_c >= M_d``: the candidates' median standardized score is at least the median of the
    scores the already dropped blocks had when they were dropped (always true before any drop)."""
    if not len(dropped):
        return True
    return float(np.median(candidates)) >= float(np.median(dropped))


def select(p_active: Sequence[float], dropped_scores: Sequence[float], *, rule: str = "eq4",
           min_drop: int = 1, use_median: bool = True, standardized: Sequence[float] | None = None
           ) -> tuple[int, list[float]]:
    """One selection step. ``p_active``: P_l of the blocks still training (first one first);
    ``dropped_scores``: the stored P'_l of the blocks dropped before. ``standardized``: P'_l of the
    active blocks when the caller standardized them otherwise (``standardize=all``); default Eq. 3
    over ``p_active``. Returns (how many more leading blocks to drop, the active blocks' P'_l)."""
    ps = list(standardized) if standardized is not None else standardize(p_active)
    t = candidate_end(ps, rule)
    if t is None or t + 1 < min_drop:
        return 0, ps
    if use_median and not median_rule(ps[:t + 1], dropped_scores):
        return 0, ps
    return t + 1, ps


class ScoreSelection(Strategy):
    """Learn&Drop's selection as a strategy; subclasses set ``name``, ``cache`` and the card."""

    cache: ClassVar[bool] = True  # serve the selected prefix from the feature cache (else: only freeze)
    hparams = {
        "warmup_epochs": HParam(int, 5, "epochs", low=0, high=10_000, search=(1, 10),
                                help="warm-up epochs before scoring selects (the paper's e1: 5 of 60 on MNIST, 10 of 60 "
                                     "on CIFAR-10, 25 of 150 on Imagenette); the first selection ends the "
                                     "epoch after them",
                                end_margin=2),  # selected at the end of epoch warmup_epochs, out from the next
        "selection": HParam(str, "eq4", "rule", choices=SELECTIONS,
                            help="eq4: Eq. 4 as printed; max_prefix_sum: the text's maximum-sum prefix"),
        "min_drop": HParam(int, 1, "blocks", low=1, high=10_000,
                           help="fewest blocks one drop may take: 1 as the text says ('at least one layer'), "
                                "2 for Algorithm 1's 'n* > 1'"),
        "median_rule": HParam(bool, True, "switch", help="apply the M_c >= M_d check before dropping"),
        "standardize": HParam(str, "head", "set of blocks", choices=STANDARDIZE,
                              help="Eq. 3 over the blocks still training (head) or over all blocks, the "
                                   "dropped ones with their stored P_l (all)"),
    }

    # ---------------------------------------------------------------- hooks
    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        blocks = ctx.model.blocks
        self.num_blocks = len(blocks)
        if self.hp["min_drop"] >= self.num_blocks:  # a selection never takes the last block still training
            warnings.warn(f"{self.name}.min_drop: {self.hp['min_drop']} is not below {ctx.model.arch or 'the net'}'s "
                          f"{self.num_blocks} blocks (the last is never dropped); nothing is ever dropped", stacklevel=2)
        self.dropped = 0  # leading blocks selected so far (dropped or frozen)
        self.p = [float("nan")] * self.num_blocks  # latest P_l per block (stored for dropped blocks)
        self.p_std = [float("nan")] * self.num_blocks  # latest P'_l per block (stored for dropped blocks)
        self.acc: ScoreAccumulator | None = None

    def epoch_start(self, epoch: int) -> EpochPlan:
        blocks = self.ctx.model.blocks
        self.acc = ScoreAccumulator([scored_params(b) for b in blocks[self.dropped:]])
        return EpochPlan(frozen=self.dropped, cached=self.dropped if self.cache else 0)

    def after_backward(self, step: int) -> None:
        self.acc.add_from_params()

    def epoch_end(self, epoch: int) -> dict:
        z = self.dropped  # blocks dropped (or frozen) during this epoch
        self.p[z:] = self.acc.scores()
        self.acc = None
        if self.hp["standardize"] == "all":
            std = standardize(self.p)
            self.p_std[z:] = std[z:]
        else:
            self.p_std[z:] = standardize(self.p[z:])
        if epoch >= self.hp["warmup_epochs"]:
            n, _ = select(self.p[z:], self.p_std[:z], rule=self.hp["selection"], min_drop=self.hp["min_drop"],
                          use_median=self.hp["median_rule"], standardized=self.p_std[z:])
            self.dropped = z + n  # takes effect from the next epoch (the paper's k+1)
        # P_l / P'_l per block (a dropped block keeps its last score); dropped_blocks: the prefix
        # out of training this epoch; drop_selected: the prefix selected now, for the next epoch
        return {"layer_scores": list(self.p), "layer_scores_std": list(self.p_std), "dropped_blocks": z,
                "drop_selected": self.dropped}

    def teardown(self) -> None:
        self.acc = None
