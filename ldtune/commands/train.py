"""``ldtune train``: one training run; ``--json`` ends with one JSON object (the contract)."""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from ..errors import UserError
from ..text import format_or_dash

FIELDS_ARE_FLAGS = True  # a workload field's error names the flag that set it (cli)


def add_workload_args(p, epochs: int = 3) -> None:
    """Workload flags shared by ``train`` and ``bench``."""
    p.add_argument("--model", default="resnet20", help="model name (see ldtune.models.MODELS)")
    p.add_argument("--dataset", default="fashion_mnist", help="dataset name, or imagefolder:<path>")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs")
    p.add_argument("--subset", type=int, default=None, help="training images (seeded, class-balanced)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=0.05, help="base SGD learning rate")
    p.add_argument("--schedule", default="cosine", help="cosine, step or constant")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="CIFAR ResNet stem channels (16 in the paper)")
    p.add_argument("--image-size", type=int, default=None, help="zero-pad images to this side (pixels)")
    p.add_argument("--data-root", default=None, help="directory for torchvision datasets "
                   "(default: $LDTUNE_DATA, else ~/.cache/ldtune/data)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop/flip (default: on for CIFAR/Imagenette, off for MNIST-likes and digits)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first, as a study's `plugins` list does (a strategy of your own; repeat for several)")


def workload_from_args(a):
    """The workload of the flags (``--plugin`` modules imported first, so strategy names resolve)."""
    from ..strategies import import_plugins
    from ..train import Workload
    import_plugins(a.plugin, field="--plugin")
    return Workload(model=a.model, dataset=a.dataset, epochs=a.epochs, subset=a.subset, device=a.device,
                    batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, weight_decay=a.weight_decay,
                    seed=a.seed, width=a.width, image_size=a.image_size, data_root=a.data_root,
                    augment=a.augment).validate()


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError("--set", f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k in out:  # the last one winning silently would run what the user did not mean
            raise UserError("--set", f"{k} given twice")
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k] = v
    return out


def configure(p) -> None:
    add_workload_args(p)
    p.add_argument("--strategy", default="baseline", help="strategy name (ldtune strategies lists them)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a strategy hyperparameter")
    p.add_argument("--test-subset", type=int, default=None,
                   help="test images used for accuracy (class-balanced, seeded; default: the whole test set)")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout")


def main(a) -> int:
    from .. import strategies
    from ..data import trim_test_set, warn_beyond_test_set
    from ..train import fit, load_data, set_threads

    w = workload_from_args(a)
    if a.test_subset is not None and a.test_subset < 1:
        raise UserError("--test-subset", f"must be an integer >= 1, got {a.test_subset}")
    given = parse_sets(a.set)
    strategy = strategies.create(a.strategy, **given)
    strategy.warn_never_acting(given, w.epochs)
    set_threads()

    def progress(rec):
        print(f"epoch {rec['epoch'] + 1}/{w.epochs}  loss {rec['train_loss']:.4f}  acc {rec['test_accuracy']:.4f}"
              f"  time {rec['epoch_time_s']:.2f}s  active blocks {rec['active_blocks']}", file=sys.stderr)

    data = None
    if a.test_subset is not None:
        data = load_data(w)
        if not hasattr(data, "test_x"):
            raise UserError("--test-subset", f"only for datasets held as tensors, not the streamed {w.dataset}")
        warn_beyond_test_set(data, a.test_subset, w.dataset, "--test-subset", "the run evaluates")
        data = trim_test_set(data, a.test_subset, w.seed)
    r = fit(w, strategy, callback=progress, data=data)
    out = {"strategy": a.strategy, "model": w.model, "dataset": w.dataset, "epochs": w.epochs,
           "status": r.status, "test_accuracy": r.test_accuracy, "train_time_s": r.train_time_s,
           "eval_time_s": r.eval_time_s, "train_flops": r.train_flops, "baseline_flops": r.baseline_flops,
           "flops_saved": r.flops_saved, "device_name": r.device_name, "hparams": strategy.hp,
           "subset": w.subset, "test_subset": a.test_subset, "seed": w.seed}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.strategy} on {w.model}/{w.dataset}: accuracy {r.test_accuracy:.4f}, train time "
              f"{r.train_time_s:.1f}s, flops saved {format_or_dash(r.flops_saved, '.1%')}"
              + (" (it did not finish)" if r.flops_saved is None else "") + f" ({r.status})")
    return 0 if r.status == "ok" else 1
