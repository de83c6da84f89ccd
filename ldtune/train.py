"""The training loop: SGD over a BlockNet, obeying a strategy's plans.

``fit(workload, strategy)`` trains one run and returns a :class:`FitResult`. The loop asks the
strategy, per epoch and per step, which blocks are frozen or cached, which branches and weights
run, each block's LR and the batch size; it never names a strategy. Per epoch it measures train
time with the device synchronized, evaluates the whole net (timed apart) and calls ``callback``
with the epoch record; where the strategy's plan asks, it first recomputes BatchNorm's running
statistics for the net as evaluated (timed and counted as training). A non-finite loss ends the
run with status ``diverged``.
``training(...)`` is the same run as a generator that pauses, its clock stopped, after each step
or epoch: ``ldtune bench`` takes several runs in turn through it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterator

import torch
import torch.nn.functional as F

from . import batchnorm
from . import data as data_mod
from . import models
from .cache import FeatureCache
from .cost import CostTable
from .errors import UserError, env_number
from .strategies import Context, Strategy


MAX_SEED = 2 ** 63 - 1  # the trials table's seed column is int64 (torch's generators take 64 bits)


@dataclass
class Workload:
    model: str = "resnet20"
    dataset: str = "fashion_mnist"
    epochs: int = 3  # epochs
    batch_size: int = 64  # images per step
    lr: float = 0.05  # base learning rate (SGD, per step)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 coefficient, applied to every trained weight
    schedule: str = "cosine"  # 'cosine' (to 0 at the end), 'step' (x0.1 at 50% and 75%) or 'constant'
    label_smoothing: float = 0.0  # fraction of target mass spread over all classes
    seed: int = 0  # data subset, init, shuffle and strategy draws; 0 to MAX_SEED
    device: str = "cpu"  # 'cpu', 'cuda' or 'auto'
    subset: int | None = None  # training images (seeded, class-balanced); None: all
    width: int | None = None  # CIFAR ResNet stem channels (16 in the paper); None: the model's default
    image_size: int | None = None  # zero-pad small images to this side in pixels (e.g. 32); None: as stored
    data_root: str | None = None  # where torchvision keeps downloaded datasets
    # random crop/flip; None: the dataset's default (on for CIFAR/Imagenette, off for MNIST-likes)
    augment: bool | None = None

    SCHEDULES = ("cosine", "step", "constant")

    def validate(self) -> "Workload":
        if self.model not in models.MODELS:
            raise UserError("model", f"unknown model {self.model!r}; known: {', '.join(models.MODELS)}")
        if not (self.dataset in data_mod.DATASETS or self.dataset.startswith("imagefolder:")):
            raise UserError("dataset", f"unknown dataset {self.dataset!r}; known: {', '.join(data_mod.DATASETS)}")
        for name, lo in (("epochs", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise UserError(name, f"must be an integer >= {lo}, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise UserError("seed", f"must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise UserError(name, f"must be a finite number >= 0, got {v!r}")
        if self.schedule not in self.SCHEDULES:
            raise UserError("schedule", f"must be one of {list(self.SCHEDULES)}, got {self.schedule!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise UserError("device", f"must be cpu, cuda or auto, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device", "cuda requested but no CUDA device is available")
        for name in ("subset", "width", "image_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UserError(name, f"must be a positive integer, got {v!r}")
        if self.width is not None and self.model not in models.CIFAR_RESNETS:
            raise UserError("width", f"sets a CIFAR ResNet's channels ({', '.join(models.CIFAR_RESNETS)}); "
                            f"{self.model} has one width")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise UserError("augment", f"must be true, false or null, got {self.augment!r}")
        return self  # data_root is checked where the data is loaded: a cluster's nodes may hold it

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass
class FitResult:
    status: str  # 'ok' | 'diverged'
    test_accuracy: float
    train_time_s: float
    eval_time_s: float
    train_flops: int
    baseline_flops: int  # what a baseline run of the same workload would cost, from the cost table
    flops_saved: float | None  # None for a run that did not finish (diverged): it saved nothing
    device_name: str
    epochs: list[dict] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def lr_schedule(kind: str, t: float) -> float:
    """Multiplier of the base LR at fraction ``t`` of training."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if kind == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def device_name(device: torch.device) -> str:
    """What a run's time is measured on: trials share a baseline only where this is equal."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # runs whose BatchNorm differs do not time alike, so they do not share a baseline: where the
    # fused kernel could not be built (no compiler on that node), the name says so
    fallback = "" if batchnorm.available() else ":aten-bn"
    return f"cpu:{cpu_model()}:{torch.get_num_threads()}t{fallback}"


def cpu_model() -> str:
    """This CPU's model, so that a cluster's differing CPUs do not share a baseline: Linux's model
    name with its family and model numbers (a VM may name only the vendor's line, "AMD EPYC", for
    CPUs of different generations), else the architecture."""
    import platform
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break  # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    numbers = [f"{label} {fields[k]}" for k, label in (("cpu family", "family"), ("model", "model")) if fields.get(k)]
    return f"{name} ({', '.join(numbers)})" if numbers else name


class Sync:
    """Calling it waits for the device's queued work (CUDA); a no-op on a CPU, whose ops return done."""

    def __init__(self, device):
        self.device = device

    def __call__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def autocast_for(dev: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The context every training step runs in: bf16 autocast on CUDA, plain float32 elsewhere."""
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext


def load_data(w: Workload, download: bool = True):
    if w.data_root is not None and not Path(w.data_root).is_dir():
        raise UserError("data_root", f"no such directory: {w.data_root}")
    return data_mod.load(w.dataset, subset=w.subset, seed=w.seed, device=w.resolved_device(), root=w.data_root,
                         image_size=w.image_size, augment=w.augment, download=download)


def build_model(w: Workload, data) -> models.BlockNet:
    return models.build(w.model, data.in_channels, data.num_classes, width=w.width, image_size=data.image_size)


def check_batch_size(w: Workload, cost: CostTable) -> None:
    """BatchNorm in training needs more than one value per channel: a 1-image step on a net whose maps
    reach 1x1 (VGG, ResNet-18 on small images) would stop at the first step."""
    if w.batch_size == 1 and cost.fewest_norm_values == 1:
        raise UserError("batch_size", f"1 image a step leaves one value per channel to BatchNorm, where {w.model}'s "
                        "maps reach 1x1 at this image size; give at least 2")


def check_batch_size_for(w: Workload, data) -> None:
    """:func:`check_batch_size` before any trial: the net built for ``data``'s images on the meta
    device (no memory; the cost table only walks shapes there)."""
    if w.batch_size != 1:
        return
    with torch.device("meta"):
        net = build_model(w, data)
        check_batch_size(w, CostTable(net, (data.in_channels, data.image_size, data.image_size),
                                      torch.device("meta")))


PAUSES = ("step", "epoch")  # where a run made by `training` pauses


def fit(w: Workload, strategy: Strategy, callback: Callable[[dict], None] | None = None, data=None,
        workdir: str | Path | None = None) -> FitResult:
    """Train one run of workload ``w`` with ``strategy``; see the module docstring."""
    return finish(training(w, strategy, callback, data, workdir))


def finish(run: Iterator[None]) -> FitResult:
    """Run the rest of a run made by :func:`training` and return its result."""
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def training(w: Workload, strategy: Strategy, callback: Callable[[dict], None] | None = None, data=None,
             workdir: str | Path | None = None, pause: str = "epoch") -> Generator[None, None, FitResult]:
    """:func:`fit` as a generator that returns the :class:`FitResult`. It pauses, with its clock
    stopped, after every training step (``pause="step"``) or after every epoch, once the epoch is
    evaluated and reported (``"epoch"``). ``ldtune bench`` takes several runs in turn through it,
    so that a shared machine's noise falls on each of them alike. Every random draw of a run comes
    from its own seeded generators, so a run taken in turn with others gives exactly the result
    it gives alone (tested)."""
    if pause not in PAUSES:
        raise ValueError(f"pause: {pause!r}, not one of {PAUSES}")
    w.validate()
    dev = torch.device(w.resolved_device())
    if dev.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(w.seed)
    data = data if data is not None else load_data(w)
    model = build_model(w, data).to(dev)
    shape = tuple(data.train_x.shape[1:]) if hasattr(data, "train_x") else (data.in_channels, data.image_size,
                                                                          data.image_size)
    # the baseline's cost comes from the net as built, before a strategy may change it (e.g. new shortcuts)
    base_cost, before = CostTable(model, shape, dev), [id(m) for m in model.modules()]
    strategy.prepare_model(model)
    model.to(dev)
    cost = base_cost if [id(m) for m in model.modules()] == before else CostTable(model, shape, dev)
    check_batch_size(w, cost)
    cuda = dev.type == "cuda"
    # NHWC on every device: on a CPU, oneDNN's NCHW input-gradient kernel is 3-5x slower for narrow
    # (8-channel) maps, which made narrow nets' early stages cost far more time per FLOP than late ones
    model = model.to(memory_format=torch.channels_last)
    if dev.type == "cpu":
        batchnorm.use_fused(model)  # the same function, in fewer passes over memory (ldtune/batchnorm.py)
    if cuda:
        torch.backends.cudnn.benchmark = True
    autocast = autocast_for(dev)
    tmp = None
    if workdir is None:
        tmp = workdir = tempfile.mkdtemp(prefix="ldtune-run-")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    # one param group per block, and one for the head: per-block LR and freezing by group
    groups = [list(b.parameters()) for b in model.blocks] + [list(model.head.parameters())]
    opt = sgd([{"params": g, "block": i} for i, g in enumerate(groups) if g], dev, lr=w.lr, momentum=w.momentum,
              weight_decay=w.weight_decay)
    steps = data.steps_per_epoch(w.batch_size)
    if steps < 1:
        raise UserError("batch_size", f"{w.batch_size} is larger than the training set ({data.num_train})")
    gen = torch.Generator(device="cpu").manual_seed(w.seed)
    bn_gen = torch.Generator(device="cpu").manual_seed(w.seed + 2)  # BatchNorm recalibration's own draws
    ctx = Context(model=model, epochs=w.epochs, steps_per_epoch=steps, batch_size=w.batch_size, lr=w.lr,
                  device=dev, seed=w.seed, rng=torch.Generator().manual_seed(w.seed + 1), cost=cost,
                  workdir=workdir, extra={"data": data})
    strategy.setup(ctx)
    sync = Sync(dev)
    cache = FeatureCache(dev, workdir=workdir)  # tiers: device, pinned host, memmap file in workdir
    frozen = cached = 0
    train_flops = 0
    records: list[dict] = []
    status, err = "ok", None
    acc, train_time, eval_time = 0.0, 0.0, 0.0
    baseline = base_cost.full_step() * steps * w.batch_size * w.epochs
    try:
        for epoch in range(w.epochs):
            plan = strategy.epoch_start(epoch)
            sync()
            t0 = time.perf_counter()
            epoch_flops = 0
            if plan.frozen < frozen or plan.cached > plan.frozen or plan.cached < cached:
                raise RuntimeError(f"{strategy.name}: the frozen/cached prefix may only grow "
                                   f"(frozen {frozen}->{plan.frozen}, cached {cached}->{plan.cached})")
            if plan.frozen > frozen:
                _freeze(model, opt, frozen, plan.frozen)
                frozen = plan.frozen
            if plan.cached > cached:
                if cached == 0:
                    cache.build(model.blocks, data, plan.cached, autocast=autocast)
                else:
                    cache.advance(model.blocks, plan.cached, autocast=autocast)
                epoch_flops += cost.forward(cached, plan.cached) * cache.num_samples
                cached = plan.cached
            # every epoch trains the baseline epoch's images, also at another batch size (the last
            # batch short then), so that images left out never count as a saving
            bs = plan.batch_size or w.batch_size
            images = steps * w.batch_size
            n_steps = len(data_mod.epoch_slices(images, bs, images))  # the steps the batches below take
            batches = cache.batches(bs, gen, images) if cached else data.train_batches(bs, gen, images=images)
            loss_sum = torch.zeros((), device=dev)
            for step, b in enumerate(batches):
                t = (epoch + step / max(n_steps, 1)) / w.epochs
                strategy.step_start(epoch, step, t)
                sched = lr_schedule(w.schedule, t)
                factors = strategy.lr_factors(t, sched)
                for g in opt.param_groups:
                    g["lr"] = w.lr * plan.lr_scale * (sched if factors is None else factors[g["block"]])
                x = channels_last(b.x)
                with autocast():
                    if cached < frozen:
                        with torch.no_grad():
                            for blk in model.blocks[cached:frozen]:
                                x = blk(x)
                    out = model.forward_from(x, frozen)
                    loss = F.cross_entropy(out, b.y, label_smoothing=w.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                strategy.after_backward(step)
                opt.step()
                loss_sum += loss.detach()
                epoch_flops += cost.step(cached, frozen) * b.x.shape[0]
                if pause == "step":  # the clock stops while other runs take their steps
                    sync()
                    paused = time.perf_counter()
                    yield
                    t0 += time.perf_counter() - paused
            if plan.recalibrate_bn:  # part of producing this epoch's net: timed and counted as training
                recal = data.train_batches(w.batch_size, bn_gen, images=min(plan.recalibrate_bn, data.num_train))
                with autocast():
                    n = batchnorm.recalibrate(model, (channels_last(b.x) for b in recal), frozen)
                epoch_flops += cost.forward() * n
            sync()
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            train_flops += epoch_flops
            train_loss = (loss_sum / max(n_steps, 1)).item()
            e0 = time.perf_counter()
            acc = evaluate(model, data, autocast, frozen)
            sync()
            eval_time += time.perf_counter() - e0
            rec = {"epoch": epoch, "test_accuracy": acc, "train_loss": train_loss, "epoch_time_s": epoch_time,
                   "epoch_flops": int(epoch_flops),
                   "trainable_params": sum(p.numel() for b in model.blocks[frozen:] for p in b.parameters())
                   + sum(p.numel() for p in model.head.parameters()),
                   "active_blocks": len(model.blocks) - frozen, "cache_tier": cache.tier if cached else "none",
                   "cache_bytes": cache.nbytes if cached else 0}
            rec.update(strategy.epoch_end(epoch))
            records.append(rec)
            if callback is not None:
                callback(dict(rec))
            if not math.isfinite(train_loss):
                status, err = "diverged", f"non-finite training loss in epoch {epoch}"
                break
            if pause == "epoch" and epoch + 1 < w.epochs:
                yield
    finally:
        strategy.teardown()
        cache.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return FitResult(status=status, test_accuracy=acc, train_time_s=train_time, eval_time_s=eval_time,
                     train_flops=int(train_flops), baseline_flops=int(baseline),
                     flops_saved=(1.0 - train_flops / baseline if baseline else 0.0) if status == "ok" else None,
                     device_name=device_name(dev),
                     epochs=records, error=err)


def sgd(params, device: torch.device, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD as training runs it. On a CPU it is the fused implementation, one kernel over every
    parameter instead of a Python loop: 0.26-0.57 ms instead of 1.0-1.4 ms a step for a width-8
    ResNet-20 (``scripts/sgd_ab.py``, BENCHMARKS.md). CUDA keeps PyTorch's default (foreach),
    which BENCHMARKS.md's GPU figures used. Parameters without a gradient are skipped either way.

    Fused SGD (torch 2.14) fails when a group's parameters get their first gradient at different
    steps, as a skipped branch's do: it makes momentum buffers only when no parameter has one. So
    every buffer starts at zero here. Without dampening, the first update ``0 * momentum + g`` is
    the ``g`` that PyTorch's lazy buffer starts with (``tests/test_train.py`` checks the match).
    The fused kernel also reads each gradient in its parameter's memory layout. Autograd makes
    gradients that way; a gradient set by hand in another layout would update the wrong elements."""
    fused = device.type == "cpu"
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)
    if fused and momentum:
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


def _freeze(model: models.BlockNet, opt: torch.optim.Optimizer, lo: int, hi: int) -> None:
    """Freeze blocks[lo:hi]: no grads, BatchNorm in eval, out of the optimizer (state dropped)."""
    for b in model.blocks[lo:hi]:
        b.eval()
        for p in b.parameters():
            p.requires_grad_(False)
            p.grad = None
            opt.state.pop(p, None)
    opt.param_groups[:] = [g for g in opt.param_groups if not lo <= g["block"] < hi]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images in the net's memory format (NHWC); anything else as it is."""
    return x.to(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.no_grad()
def evaluate(model: models.BlockNet, data, autocast=contextlib.nullcontext, frozen: int = 0,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of the whole net on the test set; restores train mode for unfrozen blocks."""
    model.eval()
    correct = total = 0
    for x, y in data.test_batches(batch_size):
        with autocast():
            out = model(channels_last(x))
        correct += (out.argmax(1) == y).sum()
        total += y.numel()
    model.train()
    for b in model.blocks[:frozen]:
        b.eval()
    return float(correct) / max(total, 1)


@functools.cache  # once per process
def reuse_freed_memory() -> None:
    """Keep freed activation buffers in this process's heap instead of returning them to the OS.

    glibc serves large allocations with fresh pages (mmap, or a heap it trims on free), so every
    step page-faults its activations in again: about 1,900 faults and 3 ms of kernel time per
    43 ms step of a width-8 ResNet-20 on one core. Raising the mmap and trim thresholds lets the
    heap reuse them. Process-wide, so it runs once; a no-op where libc has no ``mallopt``.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap, bytes
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: buffers under 32 MiB come from the heap, bytes
    except (OSError, AttributeError, TypeError):
        pass


def set_threads() -> None:
    """Use every core for intra-op work (Ray workers default to one thread)."""
    import os
    n = env_number("LDTUNE_THREADS") or os.cpu_count() or 1  # 0 or unset: every core
    torch.set_num_threads(n)


__all__ = ["Workload", "FitResult", "fit", "evaluate", "lr_schedule", "load_data", "build_model", "set_threads",
           "sgd", "Sync", "autocast_for"]
