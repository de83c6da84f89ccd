"""PyTorch's loop SGD against the fused CPU SGD that training uses (``ldtune.train.sgd``): the
optimizer step alone, then whole SGD steps of step_anatomy's variants, interleaved in one process
(one thread, fused BatchNorm, channels-last).

    .venv/bin/python scripts/sgd_ab.py --model resnet20
    .venv/bin/python scripts/sgd_ab.py --model resnet56 --rounds 8 --steps 3
"""
from __future__ import annotations

import argparse
import time

import torch

from ldtune import batchnorm
from ldtune.train import reuse_freed_memory, sgd
from step_anatomy import interleaved, sgd_steps, variant  # this directory is on sys.path when a script runs

VARIANTS = ("plain", "half off", "dd all on", "dd half off")
KINDS = ("loop", "fused")
HP = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def optimizer(net, kind: str) -> torch.optim.Optimizer:
    """PyTorch's loop SGD ("loop") or training's (``ldtune.train.sgd``, "fused")."""
    if kind == "loop":
        return torch.optim.SGD(net.parameters(), foreach=False, **HP)
    return sgd(net.parameters(), torch.device("cpu"), **HP)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", help="a CIFAR ResNet (resnet20 ... resnet110)")
    ap.add_argument("--width", type=int, default=8, help="stem channels")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds; the median is reported")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and optimizer per round")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory()
    x = torch.randn(64, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    net, _ = variant("plain", a.model, a.width)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opts = {k: optimizer(net, k) for k in KINDS}

    def step_only(opt, n: int = 50):
        def run() -> float:
            t = time.perf_counter()
            for _ in range(n):
                opt.step()
            return (time.perf_counter() - t) / n * 1e3
        return run

    alone = interleaved({k: step_only(o) for k, o in opts.items()}, a.rounds)
    print(f"{a.model} width {a.width}: optimizer.step() alone, {len(list(net.parameters()))} "
          f"parameter tensors: loop {alone['loop']:.2f} ms, fused {alone['fused']:.2f} ms")

    runs = {}
    for n in VARIANTS:
        for kind in KINDS:
            net, hook = variant(n, a.model, a.width)
            net = net.to(memory_format=torch.channels_last).train()
            batchnorm.use_fused(net)
            opt = optimizer(net, kind)
            sgd_steps(net, opt, x, y, 2, hook)  # warm-up

            def run(net=net, opt=opt, hook=hook) -> float:
                t = time.perf_counter()
                sgd_steps(net, opt, x, y, a.steps, hook)
                return (time.perf_counter() - t) / a.steps * 1e3
            runs[f"{n}|{kind}"] = run
    med = interleaved(runs, a.rounds)
    print(f"whole steps, batch 64, ms, median of {a.rounds} interleaved rounds of {a.steps} steps")
    print(f"{'variant':<14}{'loop':>8}{'fused':>8}{'change':>9}")
    for n in VARIANTS:
        lo, fu = med[f"{n}|loop"], med[f"{n}|fused"]
        print(f"{n:<14}{lo:>8.1f}{fu:>8.1f}{fu / lo - 1:>+9.1%}")


if __name__ == "__main__":
    main()
