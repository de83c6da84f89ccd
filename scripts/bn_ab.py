"""PyTorch's BatchNorm against ldtune's fused CPU BatchNorm (ldtune/batchnorm.py), in whole SGD
steps of step_anatomy's variants, interleaved in one process: what the fused kernel changes in a
step's time and in each variant's efficiency (time saved / FLOPs saved).

    .venv/bin/python scripts/bn_ab.py --model resnet20 --width 8
    .venv/bin/python scripts/bn_ab.py --model resnet56 --width 8 --rounds 8 --steps 3
"""
from __future__ import annotations

import argparse
import functools
import time

import torch

from ldtune import batchnorm
from ldtune.train import reuse_freed_memory, sgd
from step_anatomy import flops, interleaved, sgd_steps, variant  # this directory is on sys.path when a script runs

VARIANTS = ("plain", "stage 1", "stage 3", "half off", "dd all on", "dd half off", "no weight grads")
KINDS = ("native", "fused")


def main(argv: list[str] | None = None) -> dict[tuple[str, str], float]:
    """Print the table; return {(variant, kind): median ms per step}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", help="a CIFAR ResNet (resnet20 ... resnet110)")
    ap.add_argument("--width", type=int, default=8, help="stem channels")
    ap.add_argument("--batch-size", type=int, default=64, help="images per step")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds; the median is reported")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and kind per round")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory()
    if not batchnorm.available():
        raise SystemExit("the fused BatchNorm kernel is unavailable here")
    built, cost = {}, {}
    for n in VARIANTS:
        for kind in KINDS:
            net, hook = variant(n, a.model, a.width)
            cost[n] = flops(net, hook, 28)
            net = net.to(memory_format=torch.channels_last).train()
            if kind == "fused":
                batchnorm.use_fused(net)
            opt = sgd(net.parameters(), torch.device("cpu"), lr=0.01, momentum=0.9, weight_decay=5e-4)
            built[n, kind] = (net, hook, opt)
    x = torch.randn(a.batch_size, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,))

    def run(key, steps: int) -> float:
        net, hook, opt = built[key]
        t = time.perf_counter()
        sgd_steps(net, opt, x, y, steps, hook)
        return (time.perf_counter() - t) / steps * 1e3

    for k in built:
        run(k, 2)  # warm-up
    med = interleaved({k: functools.partial(run, k, a.steps) for k in built}, a.rounds)
    print(f"{a.model} width {a.width}, batch {a.batch_size}, 1 thread, channels-last; ms per step, median of "
          f"{a.rounds} interleaved rounds of {a.steps} steps; efficiency = time saved / FLOPs saved")
    print(f"{'variant':<16}{'flops_saved':>12}{'native ms':>11}{'fused ms':>10}{'change':>8}"
          f"{'eff native':>12}{'eff fused':>11}")
    for n in VARIANTS:
        fs = 1 - cost[n] / cost["plain"]
        effs = [f"{(1 - med[n, k] / med['plain', k]) / fs:.2f}" if fs >= 0.05 else "-" for k in KINDS]
        print(f"{n:<16}{fs:>12.1%}{med[n, 'native']:>11.1f}{med[n, 'fused']:>10.1f}"
              f"{med[n, 'fused'] / med[n, 'native'] - 1:>+8.1%}{effs[0]:>12}{effs[1]:>11}")
    return med


if __name__ == "__main__":
    main()
