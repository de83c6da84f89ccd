"""What Depth Dropout's trainable shortcuts cost, taken in turn by step as ``ldtune bench`` takes its runs.

Four runs per round, on one workload and seed:
* ``baseline``: the plain net (identity shortcuts);
* ``dd p=0``: Depth Dropout's net with nothing dropped: its 1x1 conv + BN shortcuts, every branch on;
* ``dd p``: Depth Dropout as it trains;
* ``dd p, free shortcuts``: the same draws, each trainable shortcut replaced by the identity (no
  compute, no gradient work) while the cost table still charges its FLOPs. An upper bound on what
  a cheaper shortcut could give, not a method: it trains another function.

It prints each run's savings against the plain baseline and against ``dd p=0`` (Depth Dropout
measured against its own net), with their efficiencies (BENCHMARKS.md, "What Depth Dropout's
shortcuts cost").

    LDTUNE_THREADS=1 .venv/bin/python scripts/shortcut_cost.py --rounds 4
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch.nn as nn

from ldtune import strategies
from ldtune.bench import in_turn
from ldtune.strategies.depth_dropout import DepthDropout
from ldtune.train import Workload, fit, load_data, set_threads, training


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
    ap.add_argument("--p", type=float, default=0.5, help="Depth Dropout's drop probability per unit per step")
    a = ap.parse_args()
    set_threads()
    w = Workload(model=a.model, width=a.width, dataset="fashion_mnist", subset=a.subset, epochs=a.epochs)
    data = load_data(w)
    fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)  # warm-up, untimed
    runs = {"baseline": lambda: strategies.create("baseline"),
            "dd p=0": lambda: strategies.create("depth_dropout", p=0.0),
            f"dd p={a.p}": lambda: strategies.create("depth_dropout", p=a.p),
            f"dd p={a.p}, free shortcuts": lambda: FreeShortcuts(p=a.p)}
    res: dict[str, list] = {k: [] for k in runs}
    for r in range(a.rounds):
        wr = dataclasses.replace(w, seed=r)
        in_turn({k: training(wr, make(), data=data, pause="step") for k, make in runs.items()},
                lambda k, x: res[k].append(x), turn=r)
    t = {k: statistics.mean(x.train_time_s for x in v) for k, v in res.items()}
    f = {k: sum(x.train_flops for x in v) for k, v in res.items()}

    def saving(k: str, ref: str) -> str:
        ts, fs = 1 - t[k] / t[ref], 1 - f[k] / f[ref]
        eff = f"{ts / fs:.2f}" if fs >= 0.05 else "-"
        return f"{ts:>8.1%} {fs:>8.1%} {eff:>6}"

    print(f"{a.model} width {a.width}, {a.subset} images, {a.epochs} epochs, {a.rounds} rounds taken in turn by step")
    print(f"{'run':<28}{'time_s':>7} | vs plain: {'time':>8} {'flops':>8} {'eff':>6} | vs dd p=0: {'time':>8} "
          f"{'flops':>8} {'eff':>6}")
    for k in runs:
        print(f"{k:<28}{t[k]:>7.2f} | {'':>10}{saving(k, 'baseline')} | {'':>11}{saving(k, 'dd p=0')}")


if __name__ == "__main__":
    main()
