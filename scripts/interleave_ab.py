"""How much of a shared machine's noise survives in a time ratio, by how two runs take turns.

Two identical baseline runs (same workload, same seed) are timed as ``ldtune bench`` would time a
strategy against its baseline, one pair per round and per mode, the modes interleaved:
``run`` (one whole run, then the other), ``epoch`` (an epoch of each in turn) and ``step`` (a step
of each in turn, clocks stopped while the other steps). Their time ratio should be 1; its spread
over the rounds is the noise a bench's ``time_saved`` carries in that mode (BENCHMARKS.md). The
median time of a run per mode shows whether taking turns costs a run time of its own.

    LDTUNE_THREADS=1 .venv/bin/python scripts/interleave_ab.py --rounds 6
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

from ldtune import strategies
from ldtune.bench import in_turn
from ldtune.data import trim_test_set
from ldtune.train import Workload, fit, load_data, set_threads, training


def pair(w: Workload, data, mode: str) -> tuple[float, list[float]]:
    """Two identical baseline runs taken in turn by ``mode``: their time ratio, and their times (s)."""
    if mode == "run":
        a, b = (fit(w, strategies.create("baseline"), data=data) for _ in range(2))
    else:
        out = {}
        in_turn({k: training(w, strategies.create("baseline"), data=data, pause=mode) for k in "ab"},
                out.__setitem__)
        a, b = out["a"], out["b"]
    return a.train_time_s / b.train_time_s, [a.train_time_s, b.train_time_s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=int, default=8, help="stem channels of a CIFAR ResNet")
    ap.add_argument("--subset", type=int, default=2048, help="training images")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6, help="pairs per mode, the modes interleaved")
    a = ap.parse_args()
    set_threads()
    w = Workload(model=a.model, width=a.width, dataset="fashion_mnist", subset=a.subset, epochs=a.epochs,
                 device="cpu")
    data = trim_test_set(load_data(w), 500, w.seed)  # evaluation is not timed; keep it short
    fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)  # warm-up, untimed
    ratios: dict[str, list[float]] = {m: [] for m in ("run", "epoch", "step")}
    seconds: dict[str, list[float]] = {m: [] for m in ratios}
    for r in range(a.rounds):
        for m in ratios:
            ratio, t = pair(w, data, m)
            ratios[m].append(ratio)
            seconds[m] += t
        print(f"round {r + 1}: " + "  ".join(f"{m} {v[-1]:.3f}" for m, v in ratios.items()), flush=True)
    print(f"{a.model} width {a.width}, {a.subset} images, {a.epochs} epochs: time ratio of two identical runs, "
          "and the median train time of a run (s)")
    print(f"{'mode':<7}{'median':>8}{'sd':>8}{'range':>8}{'time_s':>9}")
    for m, v in ratios.items():
        print(f"{m:<7}{statistics.median(v):>8.3f}{statistics.stdev(v):>8.3f}{max(v) - min(v):>8.3f}"
              f"{statistics.median(seconds[m]):>9.2f}")


if __name__ == "__main__":
    main()
