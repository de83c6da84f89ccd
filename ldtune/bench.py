"""Benchmark: the baseline and some strategies on ONE workload, in ONE process, interleaved.

``bench(workload, [(name, hparams), ...], repeats)`` loads the data once, warms up untimed (on a
CPU one epoch of the baseline: allocator, thread pool and kernel caches; on CUDA one whole round of
every run, because cuDNN autotunes each new convolution shape on first use, for seconds, and
would bill the new shapes of a strategy, such as Depth Dropout's shortcuts or LayerDropBack's
larger DROP-epoch batches, to its first timed run), then ``repeats`` rounds; each
round runs the baseline and every strategy once, in turn (the order rotated by one each round),
on seed ``workload.seed + round``, so slow drifts of a shared machine hit every strategy alike.
Per strategy it reports the median train time, ``time_saved = 1 - T / T_base`` against the
median baseline time, the counted ``flops_saved`` (cost table, against a baseline run of the same
workload), their ratio ``efficiency = time_saved / flops_saved`` (did the FLOP saving become
time?) and the accuracy delta against the median baseline accuracy. ``baseline_spread`` is half
the range of the baseline's times over their median: a time_saved within it is within this
machine's noise.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import torch

from . import models, strategies
from .data import trim_test_set
from .train import Workload, fit, load_data
from .text import plural, subset_text

MIN_SAVING = 0.05  # fraction of FLOPs: below this, efficiency is noise over noise and is not reported


def bench(w: Workload, runs: list[tuple[str, dict]], repeats: int = 2, data=None, test_subset: int | None = None,
          warmup: bool = True, progress: Callable[[str, dict], None] | None = None) -> dict:
    """Run the baseline and each ``(strategy name, hparams)`` ``repeats`` times, interleaved."""
    w.validate()
    runs = [("baseline", {})] + [r for r in runs if r[0] != "baseline"]
    for name, hp in runs:  # every bad name or value fails here, before any training
        strategies.create(name, **hp)
    data = trim_test_set(data if data is not None else load_data(w), test_subset, w.seed)
    if warmup and torch.device(w.resolved_device()).type == "cuda":
        for name, hp in runs:
            fit(w, strategies.create(name, **hp), data=data)
    elif warmup:
        fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)
    results: dict[int, list] = {i: [] for i in range(len(runs))}
    for r in range(repeats):
        wr = dataclasses.replace(w, seed=w.seed + r)
        order = list(range(len(runs)))
        order = order[r % len(runs):] + order[:r % len(runs)]  # rotate: no strategy always runs first
        for i in order:
            name, hp = runs[i]
            res = fit(wr, strategies.create(name, **hp), data=data)
            results[i].append(res)
            if progress is not None:
                progress(name, {"repeat": r, "train_time_s": res.train_time_s, "flops_saved": res.flops_saved,
                                "test_accuracy": res.test_accuracy, "status": res.status})
    base = results[0]
    times = [x.train_time_s for x in base]
    t_base = statistics.median(times)
    spread = timing_spread(times)
    acc_base = statistics.median(x.test_accuracy for x in base)
    rows = []
    for i, (name, hp) in enumerate(runs):
        rs = results[i]
        t = statistics.median(x.train_time_s for x in rs)
        flops_saved = statistics.median(x.flops_saved for x in rs)
        time_saved = 1.0 - t / t_base if t_base > 0 else 0.0
        acc = statistics.median(x.test_accuracy for x in rs)
        rows.append({
            "strategy": name, "hparams": strategies.create(name, **hp).hp, "runs": len(rs),
            "train_time_s": t,  # median over repeats, seconds
            "train_times_s": [x.train_time_s for x in rs],
            "flops_saved": flops_saved, "time_saved": time_saved,
            "efficiency": time_saved / flops_saved if flops_saved >= MIN_SAVING else None,
            "within_noise": i > 0 and repeats > 1 and abs(time_saved) <= spread,  # not resolved from noise
            "test_accuracy": acc, "accuracy_delta": acc - acc_base,
            "cache_tier": rs[0].epochs[-1]["cache_tier"] if rs[0].epochs else "none",  # where cached maps lived
            "status": "ok" if all(x.status == "ok" for x in rs) else ",".join(sorted({x.status for x in rs})),
        })
    width = w.width if w.model in models.CIFAR_RESNETS else None  # other nets have one width
    return {"model": w.model, "dataset": w.dataset, "width": width, "subset": w.subset, "epochs": w.epochs,
            "batch_size": w.batch_size, "seed": w.seed, "repeats": repeats, "baseline_spread": spread,
            "test_images": _test_count(data), "device_name": base[0].device_name,
            "threads": torch.get_num_threads(), "rows": rows}


def _test_count(data) -> int | None:
    return int(data.test_x.shape[0]) if hasattr(data, "test_x") else None


def timing_spread(times) -> float:
    """Half the range of repeated training times over their median: a time_saved smaller than this
    is not resolved from the machine's noise."""
    t = statistics.median(times)
    return (max(times) - min(times)) / 2 / t if t else 0.0


def format_table(report: dict) -> str:
    width = f" (width {report['width']})" if report["width"] else ""
    head = (f"{report['model']}{width} on {report['dataset']} ({subset_text(report['subset'])}), "
            f"{plural(report['epochs'], 'epoch')}, {plural(report['repeats'], 'interleaved repeat')}, "
            f"{report['device_name']}; "
            + (f"baseline times within ±{report['baseline_spread']:.1%} of their median" if report["repeats"] > 1
               else "one repeat: no estimate of the timing noise"))
    lines = [head, f"{'strategy':<18}{'flops_saved':>12}{'time_saved':>12}{'efficiency':>12} {'accuracy':>10}"
             f"{'acc_delta':>11}{'time_s':>9}"]
    for r in report["rows"]:
        eff = (f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-") + ("*" if r["within_noise"] else " ")
        lines.append(f"{r['strategy']:<18}{r['flops_saved']:>12.1%}{r['time_saved']:>12.1%}{eff:>13}"
                     f"{r['test_accuracy']:>10.4f}{r['accuracy_delta']:>+11.4f}{r['train_time_s']:>9.2f}"
                     + ("" if r["status"] == "ok" else f"  ({r['status']})")
                     + ("" if r["cache_tier"] == "none" else f"  cache: {r['cache_tier']}"))
    lines.append(f"efficiency = time_saved / flops_saved; '-' where under {MIN_SAVING:.0%} of FLOPs is saved")
    if any(r["within_noise"] for r in report["rows"]):
        lines.append("* time_saved within the baseline's spread: this run does not resolve it from noise")
    for r in report["rows"][1:]:
        if r["flops_saved"] < MIN_SAVING and r["status"] == "ok":  # often a default meant for longer runs
            hp = ", ".join(f"{k}={v}" for k, v in r.get("hparams", {}).items())
            lines.append(f"{r['strategy']} skipped little ({r['flops_saved']:.1%} of FLOPs) in "
                         f"{plural(report['epochs'], 'epoch')} with {hp}: a short run or these settings leave it little to skip; "
                         f"`ldtune strategies {r['strategy']}` suggests values (--set {r['strategy']}.KEY=VALUE)")
    return "\n".join(lines)
