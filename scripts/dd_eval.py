"""Depth Dropout's test accuracy under its evaluation rules, on a short run (accuracy, not time).

The paper evaluates every unit unscaled (Sec. III-D). After a few epochs at p = 0.5 that scores
near chance here, while the training loss falls. The cause, as the strategy card says, is the
BatchNorm running statistics, gathered with about half the branches off. Per ``(p, seed)`` this
trains the same run under each rule:
* ``paper``: unscaled, with the running statistics training left;
* ``recalibrate_bn=N``: unscaled, each BatchNorm's statistics recomputed over N training images with
  every unit on before each evaluation (charged to training: it lowers ``flops_saved``);
* ``eval_scale``: each branch scaled by 1 - p (stochastic depth's rule).
The training is identical under all of them (tested); only the evaluated net differs.

    LDTUNE_THREADS=2 .venv/bin/python scripts/dd_eval.py --epochs 4 --seeds 3
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

from ldtune import strategies
from ldtune.train import Workload, fit, load_data

RULES = {"paper": {}, "recalibrate_bn=64": {"recalibrate_bn": 64}, "recalibrate_bn=256": {"recalibrate_bn": 256},
         "eval_scale": {"eval_scale": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--subset", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--p", type=float, nargs="+", default=[0.5, 0.25])
    a = ap.parse_args()
    w = Workload(model="resnet20", width=a.width, dataset="fashion_mnist", subset=a.subset, epochs=a.epochs)
    data = load_data(w)
    print(f"resnet20 width {a.width}, {a.subset} images, {a.epochs} epochs, seeds 0-{a.seeds - 1}; "
          f"test accuracy over the seeds (min-max), flops_saved", flush=True)
    base = [fit(dataclasses.replace(w, seed=s), strategies.create("baseline"), data=data).test_accuracy
            for s in range(a.seeds)]
    print(f"{'baseline':24s} {statistics.mean(base):.3f} ({min(base):.3f}-{max(base):.3f})", flush=True)
    for p in a.p:
        for rule, hp in RULES.items():
            runs = [fit(dataclasses.replace(w, seed=s), strategies.create("depth_dropout", p=p, **hp),
                        data=data) for s in range(a.seeds)]
            acc = [r.test_accuracy for r in runs]
            saved = statistics.mean(r.flops_saved for r in runs)
            print(f"{f'p {p} {rule}':24s} {statistics.mean(acc):.3f} ({min(acc):.3f}-{max(acc):.3f})  "
                  f"{saved:6.1%}", flush=True)


if __name__ == "__main__":
    main()
