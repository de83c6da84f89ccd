"""Benchmark: the baseline and some strategies on ONE workload, in ONE process, interleaved.

``bench(workload, [(name, hparams), ...], repeats)`` loads the data once, warms up untimed (on a
CPU one epoch of the baseline: allocator, thread pool and kernel caches; on CUDA one whole round of
every run, because cuDNN autotunes each new convolution shape on first use, for seconds, and
would bill the new shapes of a strategy, such as Depth Dropout's shortcuts or LayerDropBack's
larger DROP-epoch batches, to its first timed run), then ``repeats`` rounds, on seed
``workload.seed + round``. Each round runs the baseline and every strategy once, taken in turn
(``interleave``):

- ``"step"`` (the default on a CPU): one training step of each run, then the next step of each,
  the order rotated by one every turn, each run's clock stopped while the others step. A shared
  machine's noise, which comes and goes within a second, then falls on every run alike: the time
  ratio of two identical baseline runs varied by sd 0.010-0.014 this way against 0.073-0.106 for
  whole runs in turn, in the same noisy minutes (``scripts/interleave_ab.py``, BENCHMARKS.md).
- ``"epoch"`` (the default on CUDA): an epoch of each run in turn. Stopping the clock between
  steps would mean a device synchronization after every step, which changes what a GPU step
  costs; between epochs the loop synchronizes anyway.
- ``"run"``: each run whole, one after another (the order rotated by one each round).

The runs of a round are in memory together; each draws only from its own seeded generators, so a
run gives the same result in any of the three modes.

Per strategy it reports the mean train time over the rounds, ``time_saved = 1 - T / T_base``
against the baseline's mean, the counted ``flops_saved`` (cost table, against a baseline run of
the same workload, over the same rounds), their ratio ``efficiency = time_saved / flops_saved``
(did the FLOP saving become time?) and the accuracy delta against the median baseline accuracy.
Both savings are pooled over the same rounds: where a seed changes what a strategy skips
(Learn&Drop's scores choose its prefix), medians of the two could come from different rounds,
and their ratio would be no round's efficiency. ``round_time_saved`` pairs
each round's run with that round's baseline run; ``time_saved_spread``, half the range of those,
is how far this machine's noise moved the saving, and a ``time_saved`` within it is not resolved
(``within_noise``). ``baseline_spread``, half the range of the baseline's times over their median,
says how noisy the machine was (None for one repeat); drifts that are slow against a round cancel in the pairs.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import torch

from . import models, strategies
from .data import trim_test_set, warn_beyond_test_set
from .errors import UserError
from .train import MAX_SEED, PAUSES, Workload, fit, load_data, training
from .text import format_or_dash, plural, subset_text

MIN_SAVING = 0.05  # fraction of FLOPs: below this, efficiency is noise over noise and is not reported
INTERLEAVES = PAUSES + ("run",)  # how the runs of a round take turns (module docstring)


def bench(w: Workload, runs: list[tuple[str, dict]], repeats: int = 2, data=None, test_subset: int | None = None,
          warmup: bool = True, progress: Callable[[str, dict], None] | None = None,
          interleave: str | None = None) -> dict:
    """Run the baseline and each ``(strategy name, hparams)`` ``repeats`` times, interleaved."""
    w.validate()
    cuda = torch.device(w.resolved_device()).type == "cuda"
    interleave = interleave or ("epoch" if cuda else "step")
    if interleave not in INTERLEAVES:
        raise UserError("interleave", f"{interleave!r}, not one of {', '.join(INTERLEAVES)}")
    if w.seed + repeats - 1 > MAX_SEED:  # round r trains with seed + r
        raise UserError("seed", f"must be at most {MAX_SEED - repeats + 1} for {repeats} rounds, got {w.seed}")
    runs = [("baseline", {})] + [r for r in runs if r[0] != "baseline"]
    for name, hp in runs:  # every bad name or value fails here, before any training
        strategies.create(name, **hp).warn_never_acting(hp, w.epochs)  # as `train` warns
    data = data if data is not None else load_data(w)
    warn_beyond_test_set(data, test_subset, w.dataset, "test_subset", "the bench evaluates")
    data = trim_test_set(data, test_subset, w.seed)
    if warmup and cuda:
        for name, hp in runs:
            fit(w, strategies.create(name, **hp), data=data)
    elif warmup:
        fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)
    results: dict[int, list] = {i: [] for i in range(len(runs))}
    for r in range(repeats):
        wr = dataclasses.replace(w, seed=w.seed + r)

        def done(i, res, r=r):
            results[i].append(res)
            if progress is not None:
                progress(runs[i][0], {"repeat": r, "train_time_s": res.train_time_s, "flops_saved": res.flops_saved,
                                      "test_accuracy": res.test_accuracy, "status": res.status})

        if interleave == "run":
            for i in rotated(list(range(len(runs))), r):  # rotated: no strategy always runs first
                done(i, fit(wr, strategies.create(runs[i][0], **runs[i][1]), data=data))
        else:
            in_turn({i: training(wr, strategies.create(name, **hp), data=data, pause=interleave)
                     for i, (name, hp) in enumerate(runs)}, done, turn=r)
    base = results[0]
    times = [x.train_time_s for x in base]
    t_base = statistics.mean(times)
    spread = timing_spread(times) if repeats > 1 else None  # one repeat: no estimate of the noise
    acc_base = statistics.median(x.test_accuracy for x in base)
    rows = []
    for i, (name, hp) in enumerate(runs):
        rs = results[i]
        t = statistics.mean(x.train_time_s for x in rs)
        baseline_flops = sum(x.baseline_flops for x in rs)
        flops_saved = 1.0 - sum(x.train_flops for x in rs) / baseline_flops if baseline_flops else 0.0
        time_saved = 1.0 - t / t_base if t_base > 0 else 0.0
        acc = statistics.median(x.test_accuracy for x in rs)
        paired = [1.0 - x.train_time_s / b.train_time_s if b.train_time_s > 0 else 0.0 for x, b in zip(rs, base)]
        noise = (max(paired) - min(paired)) / 2 if repeats > 1 else None
        finished = all(x.status == "ok" for x in rs)
        if not finished:  # a run cut short (diverged) took less time by stopping: no saving to state
            flops_saved = time_saved = noise = None
            paired = [None] * len(rs)
        rows.append({
            "strategy": name, "hparams": strategies.create(name, **hp).hp, "runs": len(rs),
            "train_time_s": t,  # mean over the rounds, seconds
            "train_times_s": [x.train_time_s for x in rs],
            "flops_saved": flops_saved, "time_saved": time_saved,
            "round_time_saved": paired,  # per round, against that round's baseline run
            "round_flops_saved": [x.flops_saved for x in rs],  # per round (a seed may change what is skipped)
            "time_saved_spread": noise,  # half the range of round_time_saved (None for one repeat)
            "efficiency": time_saved / flops_saved if finished and flops_saved >= MIN_SAVING else None,
            "within_noise": i > 0 and noise is not None and abs(time_saved) <= noise,  # not resolved from noise
            "test_accuracy": acc, "accuracy_delta": acc - acc_base,
            "cache_tier": rs[0].epochs[-1]["cache_tier"] if rs[0].epochs else "none",  # where cached maps lived
            "status": "ok" if finished else ",".join(sorted({x.status for x in rs})),
        })
    width = w.width if w.model in models.CIFAR_RESNETS else None  # other nets have one width
    return {"model": w.model, "dataset": w.dataset, "width": width, "subset": w.subset, "epochs": w.epochs,
            "batch_size": w.batch_size, "seed": w.seed, "repeats": repeats, "interleave": interleave,
            "baseline_spread": spread,
            "test_images": _test_count(data), "device_name": base[0].device_name,
            "threads": torch.get_num_threads(), "rows": rows}


def in_turn(paused: dict, done: Callable[..., None], turn: int = 0) -> None:
    """Take paused runs (``{key: generator}``, as :func:`ldtune.train.training` makes them) one turn
    each until all have finished, the order rotated by one every turn; ``done(key, FitResult)`` as
    each finishes."""
    live = list(paused)
    while live:
        for k in rotated(live, turn):
            try:
                next(paused[k])
            except StopIteration as end:
                live.remove(k)
                done(k, end.value)
        turn += 1


def rotated(keys: list, by: int) -> list:
    """``keys`` rotated left by ``by`` (modulo their number): who goes first in turn ``by``."""
    by %= len(keys)
    return keys[by:] + keys[:by]


def _test_count(data) -> int | None:
    return int(data.test_x.shape[0]) if hasattr(data, "test_x") else None


def timing_spread(times) -> float:
    """Half the range of repeated training times over their median: how noisy the machine was
    (a study's baseline repeats; a bench's baseline rounds)."""
    t = statistics.median(times)
    return (max(times) - min(times)) / 2 / t if t else 0.0


def format_table(report: dict) -> str:
    width = f" (width {report['width']})" if report["width"] else ""
    head = (f"{report['model']}{width} on {report['dataset']} ({subset_text(report['subset'])}), "
            f"{plural(report['epochs'], 'epoch')}, {plural(report['repeats'], 'repeat')} interleaved by "
            f"{report.get('interleave', 'run')}, "
            f"{report['device_name']}; "
            + (f"baseline times' half-range ±{report['baseline_spread']:.1%} of their median" if report["repeats"] > 1
               else "one repeat: no estimate of the timing noise"))
    lines = [head, f"{'strategy':<18}{'flops_saved':>12}{'time_saved':>12}{'±rounds':>9}{'efficiency':>12} "
             f"{'accuracy':>10}{'acc_delta':>11}{'time_s':>9}"]
    for r in report["rows"]:
        eff = (f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-") + ("*" if r["within_noise"] else " ")
        noise = r.get("time_saved_spread")
        noise = f"{noise:.1%}" if noise is not None and r["strategy"] != "baseline" else "-"
        lines.append(f"{r['strategy']:<18}{format_or_dash(r['flops_saved'], '.1%'):>12}"
                     f"{format_or_dash(r['time_saved'], '.1%'):>12}{noise:>9}{eff:>13}"
                     f"{r['test_accuracy']:>10.4f}{r['accuracy_delta']:>+11.4f}{r['train_time_s']:>9.2f}"
                     + ("" if r["status"] == "ok" else f"  ({r['status']})")
                     + ("" if r["cache_tier"] == "none" else f"  cache: {r['cache_tier']}"))
    lines.append(f"efficiency = time_saved / flops_saved; '-' where under {MIN_SAVING:.0%} of FLOPs is saved; "
                 "±rounds: half the range of the rounds' savings, each against its round's baseline")
    if any(r["within_noise"] for r in report["rows"]):
        lines.append("* time_saved within ±rounds: this run does not resolve it from noise")
    for r in report["rows"][1:]:
        if r["status"] == "ok" and r["flops_saved"] < MIN_SAVING:  # often a default meant for longer runs
            hp = ", ".join(f"{k}={v}" for k, v in r.get("hparams", {}).items())
            did = (f"cost {-r['flops_saved']:.1%} more FLOPs than the baseline" if r["flops_saved"] < 0
                   else f"skipped little ({r['flops_saved']:.1%} of FLOPs)")
            lines.append(f"{r['strategy']} {did} in "
                         f"{plural(report['epochs'], 'epoch')} with {hp}: a short run or these settings leave it little to skip; "
                         f"`ldtune strategies {r['strategy']}` suggests values (--set {r['strategy']}.KEY=VALUE)")
    return "\n".join(lines)
