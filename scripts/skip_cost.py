"""What skipping costs in time against what it saves in FLOPs, by where it skips: every run taken in
turn by step, as ``ldtune bench`` takes its runs, so that the machine's noise falls on all alike.

The runs of a round, on one workload and seed:
* ``baseline``: the plain net (identity shortcuts);
* ``stage k off``: every residual branch of stage k skipped at every step (the time per FLOP of
  that stage's units);
* ``sd linear``, ``sd uniform``: stochastic depth at ``--p``, with its linear rule (late units drop
  most) and with every unit at ``p``;
* ``dd p=0``: Depth Dropout's net with nothing dropped: its 1x1 conv + BN shortcuts, every branch on;
* ``dd``: Depth Dropout at ``--p``;
* ``dd, free shortcuts``: the same draws with every trainable shortcut replaced by the identity
  from the first step on, while the cost table still charges its FLOPs. An upper bound on what a
  cheaper shortcut could give, not a method: it trains another function.

It prints each run's savings against the plain baseline, and Depth Dropout's against ``dd p=0``,
its own net (BENCHMARKS.md, "What skipping costs, by where it skips").

    LDTUNE_THREADS=1 .venv/bin/python scripts/skip_cost.py --rounds 4
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch.nn as nn

from ldtune import models, strategies
from ldtune.bench import MIN_SAVING, in_turn
from ldtune.strategies.branch_drop import BranchDrop
from ldtune.strategies.depth_dropout import DepthDropout
from ldtune.train import Workload, fit, load_data, set_threads, training
from step_anatomy import stages  # this directory is on sys.path when a script runs


class StageOff(BranchDrop):
    """Every residual branch of one stage skipped at every step (a measurement, not registered)."""
    name = "stage off"
    hparams = {}

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage  # 1-based; a stage starts at each down-sampling unit

    def prepare_model(self, model) -> None:
        self.units = stages(self.residual_units(model))[self.stage - 1]
        self.drop = [1.0] * len(self.units)  # torch.rand < 1: never kept


class Identity(nn.Sequential):
    """A trainable shortcut whose forward is the identity: its modules stay, so the cost table counts them."""

    def forward(self, x):
        return x


class FreeShortcuts(DepthDropout):
    """Depth Dropout whose trainable shortcuts cost nothing (a measurement, not registered)."""

    def step_start(self, epoch: int, step: int, t: float) -> None:
        # from the first step on: the cost table, built before it from the modules' own forward, charges them
        for u in self.units:
            if not u.downsample:
                u.shortcut.__class__ = Identity
        super().step_start(epoch, step, t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", help="a CIFAR ResNet")
    ap.add_argument("--width", type=int, default=8, help="stem channels")
    ap.add_argument("--subset", type=int, default=2048, help="training images")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run")
    ap.add_argument("--rounds", type=int, default=4, help="rounds, on seeds 0, 1, ...")
    ap.add_argument("--image-size", type=int, default=None, help="zero-pad images to this side (pixels)")
    ap.add_argument("--p", type=float, default=0.5, help="drop probability (stochastic depth's at the last unit)")
    a = ap.parse_args()
    set_threads()
    w = Workload(model=a.model, width=a.width, dataset="fashion_mnist", subset=a.subset, epochs=a.epochs,
                 image_size=a.image_size)
    data = load_data(w)
    n_stages = len(stages(models.residual_units(models.build(a.model, 1, 10, width=a.width))))
    runs = {"baseline": lambda: strategies.create("baseline")}
    for k in range(1, n_stages + 1):
        runs[f"stage {k} off"] = lambda k=k: StageOff(k)
    runs.update({
        "sd linear": lambda: strategies.create("stochastic_depth", p=a.p),
        "sd uniform": lambda: strategies.create("stochastic_depth", p=a.p, rule="uniform"),
        "dd p=0": lambda: strategies.create("depth_dropout", p=0.0),
        "dd": lambda: strategies.create("depth_dropout", p=a.p),
        "dd, free shortcuts": lambda: FreeShortcuts(p=a.p),
    })
    fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)  # warm-up, untimed
    res: dict[str, list] = {k: [] for k in runs}
    for r in range(a.rounds):
        wr = dataclasses.replace(w, seed=r)
        in_turn({k: training(wr, make(), data=data, pause="step") for k, make in runs.items()},
                lambda k, x: res[k].append(x), turn=r)
    t = {k: statistics.mean(x.train_time_s for x in v) for k, v in res.items()}
    f = {k: sum(x.train_flops for x in v) for k, v in res.items()}

    def saving(k: str, ref: str) -> str:
        ts, fs = 1 - t[k] / t[ref], 1 - f[k] / f[ref]
        eff = f"{ts / fs:.2f}" if fs >= MIN_SAVING else "-"
        return f"{ts:>11.1%}{fs:>12.1%}{eff:>12}"

    side = data.image_size
    print(f"{a.model} width {a.width}, {a.subset} images at {side}x{side}, {a.epochs} epochs, p {a.p}, "
          f"{a.rounds} rounds taken in turn by step")
    print(f"{'run':<22}{'time_s':>8}{'time_saved':>11}{'flops_saved':>12}{'efficiency':>12}")
    for k in runs:
        print(f"{k:<22}{t[k]:>8.2f}{saving(k, 'baseline')}")
    print("against Depth Dropout's own net (dd p=0):")
    for k in ("dd", "dd, free shortcuts"):
        print(f"{k:<22}{t[k]:>8.2f}{saving(k, 'dd p=0')}")


if __name__ == "__main__":
    main()
