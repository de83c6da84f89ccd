"""One BatchNorm of each stage of a width-8 ResNet-20, forward + backward, timed alone (batch 64,
channels-last, one thread, freed buffers reused as in training): PyTorch's BatchNorm against
ldtune's fused one (ldtune/batchnorm.py), interleaved. Every stage's convolutions do the same
FLOPs; its BatchNorms do not take the same time (BENCHMARKS.md, "Where the time goes").

    .venv/bin/python scripts/bn_by_stage.py
"""
import statistics
import time

import torch
import torch.nn as nn

from ldtune import batchnorm
from ldtune.train import reuse_freed_memory

STAGES = [(8, 28), (16, 14), (32, 7)]  # (channels, side in pixels) of stages 1-3
BATCH = 64  # images


def ms_per_call(c: int, side: int, calls: int = 50, rounds: int = 8) -> dict[str, float]:
    """Median over rounds (the first is warm-up) of one BatchNorm's forward + backward, in ms, per kind."""
    x = torch.randn(BATCH, c, side, side).to(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn_like(x)
    bns = {"native": nn.BatchNorm2d(c), "fused": nn.BatchNorm2d(c)}
    if not batchnorm.use_fused(bns["fused"]):
        raise SystemExit("the fused BatchNorm kernel is unavailable here")
    times: dict[str, list[float]] = {k: [] for k in bns}
    for _ in range(rounds):
        for k, bn in bns.items():
            t = time.perf_counter()
            for _ in range(calls):
                torch.autograd.grad(bn(x), (x, bn.weight, bn.bias), dy)
            times[k].append((time.perf_counter() - t) / calls * 1e3)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    reuse_freed_memory()  # as training does
    for c, side in STAGES:
        mb = BATCH * c * side * side * 4 / 2**20
        t = ms_per_call(c, side)
        print(f"{BATCH}x{c}x{side}x{side} ({mb:.1f} MiB a tensor): forward + backward {t['native']:.2f} ms "
              f"PyTorch, {t['fused']:.2f} ms fused ({t['native'] / t['fused']:.1f}x)")
