"""Training-step throughput and the share of step time spent waiting for data (BENCHMARKS.md).

    python scripts/throughput.py --model resnet18 --image-size 32 --batch-size 256 --device cuda

Runs ``ldtune.train.fit`` with the baseline twice per round, interleaved, so the timed step is
exactly the one every study trains with (bf16 autocast and channels last on CUDA):

* ``pipeline``: batches drawn from the dataset as in any run (shuffle, gather, augmentation);
* ``one batch``: the same number of steps on one batch drawn once and kept in place, so no time
  goes to data.

Per run it takes the median epoch time over epochs after the first (the first pays cuDNN's
autotuning and the allocator's growth). ``images/s = images per epoch / epoch time`` of the
pipeline run, and ``data wait = 1 - one-batch time / pipeline time``: the part of a real step that
is not the step itself. It also times drawing an epoch's batches alone (device synchronized).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from ldtune import strategies
from ldtune.data import epoch_slices
from ldtune.train import Sync, Workload, device_name, fit, load_data


class OneBatch:
    """A dataset view whose every training batch is the first batch of ``data``, drawn once."""

    def __init__(self, data, batch_size: int, gen: torch.Generator):
        self.data = data
        self.batch = next(iter(data.train_batches(batch_size, gen)))

    def __getattr__(self, name):  # everything but train_batches is the real dataset's
        return getattr(self.data, name)

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True, images: int | None = None):
        for _ in epoch_slices(self.data.num_train, batch_size, images):  # as many steps as the real epoch
            yield self.batch


def epoch_time(w: Workload, data) -> float:
    """Median training-epoch time in seconds, the first epoch left out."""
    res = fit(w, strategies.create("baseline"), data=data)
    if res.status != "ok":
        raise RuntimeError(res.error)
    return statistics.median(e["epoch_time_s"] for e in res.epochs[1:])


def draw_time(w: Workload, data) -> float:
    """Seconds to draw one epoch's batches alone, the device synchronized at the end."""
    sync = Sync(torch.device(w.resolved_device()))
    gen = torch.Generator().manual_seed(w.seed)
    sync()
    t = time.perf_counter()
    for _ in data.train_batches(w.batch_size, gen):
        pass
    sync()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--width", type=int, default=None, help="stem channels (None: the model's default)")
    ap.add_argument("--image-size", type=int, default=32, help="zero-pad images to this side (pixels)")
    ap.add_argument("--subset", type=int, default=None, help="training images (None: all)")
    ap.add_argument("--batch-size", type=int, default=256, help="images per step")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--json", action="store_true", help="end with one JSON object on stdout")
    a = ap.parse_args(argv)
    if a.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is not counted)")
    w = Workload(model=a.model, dataset=a.dataset, width=a.width, image_size=a.image_size, subset=a.subset,
                 batch_size=a.batch_size, epochs=a.epochs, device=a.device).validate()
    data = load_data(w)
    one = OneBatch(data, w.batch_size, torch.Generator().manual_seed(w.seed))
    fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)  # untimed warm-up
    t_pipe, t_one, t_draw = [], [], []
    for r in range(a.rounds):
        runs = [(t_pipe, data), (t_one, one)]
        for times, d in runs[r % 2:] + runs[:r % 2]:
            times.append(epoch_time(w, d))
        t_draw.append(draw_time(w, data))
    images = data.steps_per_epoch(w.batch_size) * w.batch_size
    tp, to, td = statistics.median(t_pipe), statistics.median(t_one), statistics.median(t_draw)
    out = {"model": w.model, "dataset": w.dataset, "image_size": data.image_size, "batch_size": w.batch_size,
           "images_per_epoch": images, "device_name": device_name(torch.device(w.resolved_device())),
           "epoch_time_s": tp, "one_batch_epoch_time_s": to, "draw_time_s": td,
           "images_per_s": images / tp, "step_ms": tp / (images / w.batch_size) * 1e3,
           "data_wait_share": 1 - to / tp, "draw_share": td / tp}
    print(f"{w.model} on {w.dataset} at {data.image_size}x{data.image_size}, batch {w.batch_size}, "
          f"{out['device_name']}; median of {a.rounds} rounds")
    print(f"  training step: {out['images_per_s']:,.0f} images/s ({out['step_ms']:.2f} ms a step)")
    print(f"  data wait: {out['data_wait_share']:.1%} of step time (one-batch epoch {to:.3f} s vs {tp:.3f} s); "
          f"drawing batches alone: {out['draw_share']:.1%}")
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
