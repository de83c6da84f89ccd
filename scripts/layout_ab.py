"""A/B of commit 2dbe433 (gradients kept channels-last), interleaved in one process.

    .venv/bin/python scripts/layout_ab.py --model resnet20 --width 8

Before that commit a down-sampling shortcut subsampled with a slice and the head pooled with
``AdaptiveAvgPool2d``; both backward passes return contiguous (NCHW) gradients into the
channels-last net. This builds each variant twice, once with those two modules put back
("before") and once as the net is now ("after"), and times one SGD step of each in
alternating order (one thread, batch 64, channels-last), so that this machine's drift hits both
alike. Variants: every branch on; the non-down-sampling half off; the last stage's branches
off (its down-sampling unit's included, as stochastic depth drops them); every branch off.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldtune import models
from ldtune.train import reuse_freed_memory
from step_anatomy import sgd_steps  # this directory is on sys.path when a script runs


class SlicedProjection(models.Projection):
    """The shortcut as it was: every s-th pixel by slicing (its backward is NCHW)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def build(arch: str, width: int, variant: str, before: bool):
    torch.manual_seed(0)
    net = models.build(arch, 1, 10, width=width, image_size=28)
    units = models.residual_units(net)
    if before:
        for u in units:
            if u.downsample:
                u.shortcut[0].__class__ = SlicedProjection
        net.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.head[-1])
    last_stage = units[max(i for i, u in enumerate(units) if u.downsample):]
    for i, u in enumerate(units):
        u.run_branch = {"plain": True, "half off": u.downsample or i % 2 == 0,
                        "last stage off": u not in last_stage, "all off": False}[variant]
    net = net.to(memory_format=torch.channels_last).train()
    return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", help="a CIFAR ResNet")
    ap.add_argument("--width", type=int, default=8, help="stem channels")
    ap.add_argument("--rounds", type=int, default=12, help="alternating rounds; medians are reported")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per net per round")
    a = ap.parse_args()
    torch.set_num_threads(1)
    reuse_freed_memory()
    x = torch.randn(64, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def run(net, opt, n: int) -> float:
        t = time.perf_counter()
        sgd_steps(net, opt, x, y, n)
        return (time.perf_counter() - t) / n * 1e3

    print(f"{a.model} width {a.width}, batch 64, 1 thread, channels-last; ms per step, median of {a.rounds} "
          f"alternating rounds of {a.steps} steps")
    print(f"{'variant':<16}{'before':>9}{'after':>9}{'change':>9}")
    for variant in ("plain", "half off", "last stage off", "all off"):
        nets = {k: build(a.model, a.width, variant, k == "before") for k in ("before", "after")}
        for net, opt in nets.values():
            run(net, opt, 3)  # warm-up
        ts: dict[str, list[float]] = {k: [] for k in nets}
        for r in range(a.rounds):
            for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
                ts[k].append(run(*nets[k], a.steps))
        b, n = statistics.median(ts["before"]), statistics.median(ts["after"])
        print(f"{variant:<16}{b:>9.1f}{n:>9.1f}{n / b - 1:>+9.1%}")


if __name__ == "__main__":
    main()
