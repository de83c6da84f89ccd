"""One BatchNorm of each stage of a width-8 ResNet-20, forward + backward, timed alone (batch 64,
channels-last, one thread, freed buffers reused as in training): why early units cost more time per FLOP on the CPU (BENCHMARKS.md,
"Where the time goes"). Every stage's convolutions do the same FLOPs; its BatchNorms do not take
the same time.

    .venv/bin/python scripts/bn_by_stage.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from ldtune.train import reuse_freed_memory

STAGES = [(8, 28), (16, 14), (32, 7)]  # (channels, side in pixels) of stages 1-3
BATCH = 64  # images


def ms_per_call(c: int, side: int, calls: int = 50, rounds: int = 8) -> float:
    """Median over rounds (the first is warm-up) of one BatchNorm's forward + backward, in ms."""
    x = torch.randn(BATCH, c, side, side).to(memory_format=torch.channels_last).requires_grad_()
    g, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    dy = torch.randn_like(x)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            torch.autograd.grad(F.batch_norm(x, None, None, g, b, training=True), (x, g, b), dy)
        times.append((time.perf_counter() - t) / calls * 1e3)
    return statistics.median(times[1:])


if __name__ == "__main__":
    torch.set_num_threads(1)
    reuse_freed_memory()  # as training does
    for c, side in STAGES:
        mb = BATCH * c * side * side * 4 / 2**20
        print(f"{BATCH}x{c}x{side}x{side} ({mb:.1f} MiB a tensor): {ms_per_call(c, side):.2f} ms forward + backward")
