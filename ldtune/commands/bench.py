"""``ldtune bench``: the baseline and named strategies on one workload, in one process, interleaved.

Each round takes the runs in turn, a step of each at a time on a CPU and an epoch at a time on
CUDA (``--interleave``; ``ldtune.bench`` says why). Prints per strategy ``flops_saved`` and
``time_saved`` (against the baseline, pooled over the rounds), ``efficiency = time_saved /
flops_saved`` and the accuracy delta; ``--json`` ends with one JSON object. The defaults
(ResNet-20 at width 8, 2,048 Fashion-MNIST images, 4 epochs, 2 repeats) fit a 2-core CPU in a
few minutes.
"""
from __future__ import annotations

import json
import sys

from ..errors import UserError
from ..text import format_or_dash
from .train import add_workload_args, parse_sets, workload_from_args

FIELDS_ARE_FLAGS = True  # a workload field's error names the flag that set it (cli)


def configure(p) -> None:
    add_workload_args(p, epochs=4)
    p.set_defaults(subset=2048)  # and width 8 for a CIFAR ResNet (main)
    p.add_argument("--strategies", default=None,
                   help="comma-separated strategy names (default: every registered one); the baseline always runs")
    p.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                   help="a hyperparameter of one benchmarked strategy, e.g. depth_dropout.p=0.5")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (each runs every strategy once)")
    p.add_argument("--interleave", default=None, metavar="{step,epoch,run}",
                   help="how the runs of a round take turns: a step of each (default on a CPU), an epoch of each "
                        "(default on CUDA, where pausing between steps would add a device sync), or whole runs")
    p.add_argument("--test-subset", type=int, default=2000,
                   help="test images used for accuracy (class-balanced; 0: the whole test set)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op CPU threads (0: every core, or LDTUNE_THREADS); 1 times steadiest on a busy machine")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout")


def parse_runs(names: str | None, sets: list[str]) -> list[tuple[str, dict]]:
    """``--strategies`` and ``--set strategy.key=value`` -> [(name, hparams)]; bad input raises UserError."""
    from .. import strategies
    if names is None:
        chosen = [n for n in sorted(strategies.REGISTRY) if n != "baseline"]
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        if not chosen:
            raise UserError("--strategies", "names no strategy")
        for i, n in enumerate(chosen):
            if n not in strategies.REGISTRY:
                raise strategies.unknown("--strategies", n)
            if n in chosen[:i]:
                raise UserError("--strategies", f"{n!r} named twice (one row per strategy; --repeats repeats runs)")
    hps: dict[str, dict] = {n: {} for n in chosen}
    for key, value in parse_sets(sets).items():
        name, dot, hp = key.partition(".")
        if not dot or not hp:
            raise UserError("--set", f"expected strategy.key=value, got {key!r}")
        if name not in hps:
            raise UserError("--set", f"{name!r} is not among the benchmarked strategies ({', '.join(chosen)})")
        hps[name][hp] = value
    return [(n, hps[n]) for n in chosen]


def main(a) -> int:
    from ..bench import bench, format_table
    from ..train import set_threads

    if a.repeats < 1:
        raise UserError("repeats", f"must be an integer >= 1, got {a.repeats}")
    if a.test_subset < 0:
        raise UserError("test_subset", f"must be >= 0, got {a.test_subset}")
    from ..models import CIFAR_RESNETS
    if a.width is None and a.model in CIFAR_RESNETS:
        a.width = 8
    w = workload_from_args(a)
    runs = parse_runs(a.strategies, a.set)
    if a.threads < 0:
        raise UserError("threads", f"must be >= 0, got {a.threads}")
    set_threads()
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)

    def progress(name, info):
        print(f"round {info['repeat'] + 1}/{a.repeats}  {name:<18} time {info['train_time_s']:.2f}s  "
              f"flops saved {format_or_dash(info['flops_saved'], '.1%')}  "
              f"acc {info['test_accuracy']:.4f}  {info['status']}",
              file=sys.stderr)

    report = bench(w, runs, repeats=a.repeats, test_subset=a.test_subset or None, progress=progress,
                   interleave=a.interleave)
    print(format_table(report), file=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps(report))
    return 0 if all(r["status"] == "ok" for r in report["rows"]) else 1
