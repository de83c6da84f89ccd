"""Where a training step's time goes, measured in isolation (BENCHMARKS.md, "Where the time goes").

    .venv/bin/python scripts/step_anatomy.py --model resnet20 --width 8
    .venv/bin/python scripts/step_anatomy.py --model resnet56 --width 8
    .venv/bin/python scripts/step_anatomy.py --model resnet20 --width 8 --profile 10   # + time by kind of op
    python scripts/step_anatomy.py --model resnet18 --image-size 32 --batch-size 256 --device cuda

Times one SGD step (forward, backward, update; batch of random one-channel images, channels last,
one thread by default; bf16 autocast on CUDA, as training uses) of a residual net in these
variants, each the median of interleaved rounds, and prints each against the plain net:

* each stage's residual branches off (time per FLOP by stage; a stage starts at a down-sampling unit);
* half of the non-down-sampling branches off, a fresh random half every step (identity shortcuts),
  and one random half kept for every step (what a changing graph costs beside the skipped work;
  on a CPU, where time per FLOP differs by stage, that one half's stage mix also moves it);
* Depth Dropout's 1x1 conv + BN shortcuts added, every branch on, then half of them off;
* every conv weight after the stem without a gradient (what weight-gradient GEMMs cost).

FLOP shares come from ldtune's cost table, so each line shows time saved next to FLOPs saved.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from ldtune import batchnorm, models
from ldtune.bench import rotated
from ldtune.cost import CostTable
from ldtune.models import ResidualUnit
from ldtune.strategies.depth_dropout import branch_channels, trainable_shortcut
from ldtune.strategies.layerdropback import layers_of
from ldtune.train import Sync, autocast_for, reuse_freed_memory, sgd


def stages(units: list[ResidualUnit]) -> list[list[ResidualUnit]]:
    """Residual units grouped by stage: a new stage starts at each down-sampling unit."""
    out: list[list[ResidualUnit]] = []
    for u in units:
        if u.downsample or not out:
            out.append([])
        out[-1].append(u)
    return out


def variant(name: str, arch: str, width: int, size: int = 28, seed: int = 0):
    """(model, per-step hook) for one variant."""
    torch.manual_seed(seed)
    net = models.build(arch, 1, 10, width=width, image_size=size)
    units = models.residual_units(net)
    plain = [u for u in units if not u.downsample]
    rng = torch.Generator().manual_seed(seed)

    def half_off(us):
        def hook():
            off = set(torch.randperm(len(us), generator=rng)[: len(us) // 2].tolist())
            for i, u in enumerate(us):
                u.run_branch = i not in off
        return hook

    hook = None
    if name.startswith("stage"):
        for u in stages(units)[int(name[-1]) - 1]:
            u.run_branch = False
    elif name == "half off":
        hook = half_off(plain)
    elif name == "half fixed":
        half_off(plain)()
    elif name.startswith("dd"):
        for u in plain:
            u.shortcut = trainable_shortcut(branch_channels(u))
        if name == "dd half off":
            hook = half_off(plain)
    elif name == "no weight grads":
        for layer in layers_of(net)[1:-1]:
            for p in layer:
                p.requires_grad_(False)
    return net, hook


def flops(net, hook, size: int, steps: int = 64) -> float:
    """Mean counted FLOPs per sample of a step of this variant (before it goes channels-last)."""
    cost = CostTable(net, (1, size, size), torch.device("cpu"))
    total = 0.0
    for _ in range(steps):
        if hook:
            hook()
        total += cost.step(0, 0)
    return total / steps


def sgd_steps(net, opt, x, y, steps: int, hook=None, autocast=contextlib.nullcontext) -> None:
    """``steps`` SGD steps (forward, backward, update) of ``net`` on one batch: the unit these
    scripts time. ``hook`` runs before each step (a variant's per-step draw)."""
    for _ in range(steps):
        if hook:
            hook()
        with autocast():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def interleaved(runs: dict, rounds: int) -> dict:
    """Median over ``rounds`` of each ``runs[k]()`` (a time), the order rotated by one every round,
    so that slow drifts of a shared machine hit every run alike and no run always goes first."""
    times = {k: [] for k in runs}
    for r in range(rounds):
        for k in rotated(list(runs), r):
            times[k].append(runs[k]())
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Print the table; return {variant: (time_saved, flops_saved)}, plus {"profile": shares by
    kind of op} with ``--profile``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20",
                    help="a residual net: a CIFAR ResNet (resnet20 ... resnet110) or resnet18/34")
    ap.add_argument("--width", type=int, default=8, help="stem channels of a CIFAR ResNet")
    ap.add_argument("--image-size", type=int, default=28, help="side of the random one-channel images (pixels)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=64, help="images per step")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--bn", choices=("fused", "native"), default="fused",
                    help="BatchNorm on the CPU: ldtune's fused kernel, as training uses, or PyTorch's")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile this many steps of the plain net and print its time by kind of op")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory()
    autocast, sync = autocast_for(dev), Sync(dev)
    n_stages = len(stages(models.residual_units(models.build(a.model, 1, 10, width=a.width,
                                                             image_size=a.image_size))))
    names = (["plain"] + [f"stage {k + 1}" for k in range(n_stages)]
             + ["half off", "half fixed", "dd all on", "dd half off", "no weight grads"])
    built = {}
    for n in names:
        net, hook = variant(n, a.model, a.width, a.image_size)
        f = flops(net, hook, a.image_size)
        net = net.to(dev, memory_format=torch.channels_last).train()
        if not cuda and a.bn == "fused":
            batchnorm.use_fused(net)
        opt = sgd(net.parameters(), dev, lr=0.01, momentum=0.9, weight_decay=5e-4)
        built[n] = (net, hook, opt, f)
    x = torch.randn(a.batch_size, 1, a.image_size, a.image_size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)

    mallocs = {n: 0 for n in names}  # new device memory segments (cudaMalloc) while timed: allocator churn

    def run(n: str, steps: int) -> float:
        net, hook, opt, _ = built[n]
        segments = torch.cuda.memory_stats(dev).get("segment.all.allocated", 0) if cuda else 0
        sync()
        t = time.perf_counter()
        sgd_steps(net, opt, x, y, steps, hook, autocast)
        sync()
        if cuda:
            mallocs[n] += torch.cuda.memory_stats(dev).get("segment.all.allocated", 0) - segments
        return (time.perf_counter() - t) / steps * 1e3

    for n in names:
        run(n, 3)  # warm-up
    mallocs.update(dict.fromkeys(names, 0))  # count the timed rounds only
    med = interleaved({n: functools.partial(run, n, a.steps) for n in names}, a.rounds)
    base_t, base_f = med["plain"], built["plain"][3]
    where = torch.cuda.get_device_name(dev) if cuda else f"{a.threads} thread(s), {a.bn} BatchNorm"
    print(f"{a.model} width {a.width}, {a.image_size}x{a.image_size}, batch {a.batch_size}, {where}, channels-last; "
          f"median of {a.rounds} interleaved rounds of {a.steps} steps")
    print(f"{'variant':<18}{'ms/step':>9}{'time_saved':>12}{'flops_saved':>13}{'efficiency':>12}"
          + (f"{'cudaMallocs':>13}" if cuda else ""))
    out = {}
    for n in names:
        t, f = med[n], built[n][3]
        ts, fs = 1 - t / base_t, 1 - f / base_f
        eff = f"{ts / fs:.2f}" if fs >= 0.05 else "-"
        print(f"{n:<18}{t:>9.1f}{ts:>12.1%}{fs:>13.1%}{eff:>12}" + (f"{mallocs[n]:>13}" if cuda else ""))
        out[n] = (ts, fs)
    if a.profile:
        shares, busy_us = profile(lambda: run("plain", a.profile), cuda)
        print(f"plain net, {a.profile} profiled steps: share of {'GPU' if cuda else 'CPU'} time by kind of op "
              "(the profiler's own overhead inflates the many small ops)")
        if cuda:  # kernel time against the step's time: how much of the step the GPU computes at all
            print(f"GPU busy {busy_us / a.profile / 1e3:.1f} ms of each {base_t:.1f} ms step")
        print("  ".join(f"{k} {v:.1%}" for k, v in shares.items()))
        out["profile"] = shares
    return out


def kind_of(op: str) -> str:
    """The kind of an aten or ldtune op (name without ``aten::``) for the profile's summary."""
    if "conv" in op:
        return "conv"
    if "batch_norm" in op:  # ldtune::batch_norm_train_forward / _backward too
        return "batch norm"
    if op.startswith(("relu", "threshold", "clamp")):
        return "relu"
    if op in ("mm", "addmm", "bmm"):
        return "gemm"
    if op.startswith("add"):
        return "add"
    return "other"


def profile(steps, cuda: bool) -> tuple[dict[str, float], float]:
    """Share of self time by kind of op over ``steps()``, and the total (microseconds; on CUDA the
    kernels' time). Aten and ldtune ops only: autograd and optimizer wrappers are left out, and the ops
    they call are counted themselves."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        steps()
    totals = dict.fromkeys(["conv", "batch norm", "relu", "add", "gemm", "other"], 0.0)
    for e in prof.key_averages():
        if e.key.startswith(("aten::", "ldtune::")):
            totals[kind_of(e.key.split("::", 1)[1])] += e.self_device_time_total if cuda else e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}, whole


if __name__ == "__main__":
    main()
