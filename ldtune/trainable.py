"""The Ray Tune function trainable: one trial = one ``ldtune.train.fit`` run.

It reads only its config (built by ``ldtune.runner``)::

    study, trial_id, strategy, hparams, seed (the trial's), data_seed (the study's: one data
    subset for every trial), test_subset, workload (Workload fields but seed), threads, plugins,
    env (the driver's LDTUNE_* variables, set here first: a cluster node's workers lack them)

and reports once per epoch with ``tune.report``. A report carries the epoch record under
``record`` and the trial's running totals; it is sent when the next epoch ends (or the run
returns), so the last one also carries the trial's outcome and ``final: True``. A training
error (an exception) ends the trial normally with ``status: 'error'``: retrying a deterministic
error would only repeat it. A dead worker or node is not an exception here: Tune retries the
trial (``max_failures``).
"""
from __future__ import annotations

import math
import time
import traceback

from ray import tune

_DATA: dict = {}  # one loaded dataset per worker process, reused by the trials it runs


def _plain(v):
    """Epoch-record values as plain Python (tensors and arrays become lists or numbers)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _data(w, data_seed: int, test_subset: int | None):
    """The study's data (training and test subsets seeded by the study, not the trial), loaded once
    per worker process. A fresh process first trains one untimed baseline epoch on it: the first
    epochs a process runs are slower (kernels, allocator, thread pool), and that must not land on
    whichever trial happens to come first (it would bias every time_saved)."""
    import dataclasses

    from . import strategies
    from .data import trim_test_set
    from .train import fit, load_data
    key = (w.dataset, w.subset, data_seed, w.resolved_device(), w.data_root, w.image_size, test_subset)
    if key not in _DATA:
        _DATA.clear()  # keep one: device memory is precious
        data = trim_test_set(load_data(dataclasses.replace(w, seed=data_seed)), test_subset, data_seed)
        fit(dataclasses.replace(w, epochs=1), strategies.create("baseline"), data=data)
        _DATA[key] = data
    return _DATA[key]


def trainable(config: dict) -> None:
    start, began = time.perf_counter(), time.time()  # began: this node's clock, to overlay trials run in parallel
    import os
    os.environ.update(config.get("env") or {})
    import ray
    import torch

    from . import strategies
    from .train import Workload, fit

    torch.set_num_threads(max(1, int(config["threads"])))
    node_id = ray.get_runtime_context().get_node_id()
    pending: dict | None = None
    totals = {"train_time_s": 0.0, "train_flops": 0}

    def on_epoch(rec: dict) -> None:
        nonlocal pending
        if pending is not None:
            tune.report(pending)
        totals["train_time_s"] += rec["epoch_time_s"]
        totals["train_flops"] += int(rec["epoch_flops"])
        pending = {"epoch": rec["epoch"], "test_accuracy": rec["test_accuracy"], **totals,
                   "status": "running", "record": _plain(rec), "node_id": node_id, "final": False}

    outcome: dict
    try:
        strategies.import_plugins(config.get("plugins", ()))
        w = Workload(**config["workload"], seed=config["seed"])
        strategy = strategies.create(config["strategy"], **config["hparams"])
        r = fit(w, strategy, callback=on_epoch, data=_data(w, config["data_seed"], config.get("test_subset")))
        outcome = {"status": r.status, "error": r.error, "test_accuracy": r.test_accuracy,
                   "train_time_s": r.train_time_s, "eval_time_s": r.eval_time_s, "train_flops": r.train_flops,
                   "baseline_flops": r.baseline_flops, "flops_saved": r.flops_saved, "device_name": r.device_name}
        if not math.isfinite(r.test_accuracy):
            outcome["status"] = "diverged"
    except Exception as e:  # a bug or bad value in training: a row with status 'error', not a retry
        last = traceback.extract_tb(e.__traceback__)[-1]
        outcome = {"status": "error", "error": f"{type(e).__name__}: {e} ({last.filename}:{last.lineno})",
                   "test_accuracy": None, "train_time_s": None, "train_flops": None, "flops_saved": None}
    report = dict(pending or {"epoch": -1, "record": None, "node_id": node_id})
    report.update(outcome, final=True, trial_time_s=time.perf_counter() - start, trial_span=(began, time.time()))
    tune.report(report)
