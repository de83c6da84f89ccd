"""Study results as Parquet: ``trials.parquet``, ``epochs.parquet``, ``pareto.parquet``.

Columns (the DESIGN.md contract):

* trials: ``TRIAL_COLUMNS``, then one column per hyperparameter of the registered strategies
  (the strategy's defaults where the spec set none; null where a strategy has none);
* epochs: ``EPOCH_COLUMNS``, then any further keys of the epoch records (``cache_tier``,
  ``layer_scores``, ...), null where a record has none;
* pareto: the trials columns plus ``front`` (a strategy's name for its own front, ``all`` for the
  global one), from :func:`ldtune.pareto.fronts`.

``time_saved = 1 - T/T_base``, ``speedup = T_base/T`` and ``accuracy_delta = acc - acc_base`` are
against the median of the study's ``ok`` baseline trials on the same ``device_name``, and are
recomputed from the raw columns at every write. Files are written whole, to a temporary file then
renamed, so a reader (or a killed driver) never sees half a file; ``epochs`` is written before
``trials``, so every trial row has its epochs. ``load`` and ``pareto`` (queries over a results
directory) live in :mod:`ldtune.pareto` and are re-exported here.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import strategies
from .pareto import fronts, load, pareto, read_table
from .text import is_missing

TRIAL_COLUMNS = {  # name -> Arrow type
    "study": pa.string(), "trial_id": pa.string(), "strategy": pa.string(), "model": pa.string(),
    "dataset": pa.string(), "epochs": pa.int64(), "seed": pa.int64(),
    "status": pa.string(),  # 'ok' | 'error' | 'diverged'
    "error": pa.string(),
    "test_accuracy": pa.float64(),  # fraction of the test set, after the last epoch
    "train_time_s": pa.float64(),  # seconds of training (device synchronized), evaluation excluded
    "train_flops": pa.int64(),  # FLOPs the run executed (cost table)
    "flops_saved": pa.float64(),  # 1 - train_flops / FLOPs of a baseline run of the same workload
    "time_saved": pa.float64(),  # 1 - T / T_base (fraction)
    "speedup": pa.float64(),  # T_base / T
    "accuracy_delta": pa.float64(),  # acc - acc_base (fraction; x100 for percentage points)
    "device_name": pa.string(),
}
EPOCH_COLUMNS = {
    "trial_id": pa.string(), "epoch": pa.int64(), "test_accuracy": pa.float64(), "train_loss": pa.float64(),
    "epoch_time_s": pa.float64(), "epoch_flops": pa.int64(), "trainable_params": pa.int64(),
    "active_blocks": pa.int64(),
    "study": pa.string(),  # after the contract's columns: epochs of several studies read together stay apart
}
CONTRACT_HPARAMS = ("warmup_epochs", "p", "s", "kappa", "t0", "schedule", "scale_lr")  # listed first
_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
FILES = ("trials.parquet", "epochs.parquet", "pareto.parquet")


def hparam_columns() -> dict[str, pa.DataType]:
    """One column per hyperparameter of every registered strategy; kinds that disagree across
    strategies widen (int and float to float, anything else to string)."""
    kinds: dict[str, set] = {}
    for cls in strategies.REGISTRY.values():
        for name, hp in cls.hparams.items():
            kinds.setdefault(name, set()).add(hp.kind)
    for name in CONTRACT_HPARAMS:
        kinds.setdefault(name, {float} if name in ("p", "kappa", "t0") else
                         {int} if name in ("warmup_epochs", "s") else {bool} if name == "scale_lr" else {str})
    order = [n for n in CONTRACT_HPARAMS] + sorted(set(kinds) - set(CONTRACT_HPARAMS))
    out = {}
    for name in order:
        k = kinds[name]
        kind = k.pop() if len(k) == 1 else float if k <= {int, float} else str
        out[name] = _ARROW.get(kind, pa.string())
    return out


def recorded_hparams(df: pd.DataFrame) -> list[str]:
    """The hyperparameter columns a trials frame holds: every registered strategy's that it has,
    then any other column beyond the contract's (a plugin's that is not imported here)."""
    known = [n for n in hparam_columns() if n in df.columns]
    return known + sorted(c for c in df.columns if c not in TRIAL_COLUMNS and c not in known)


def trials_schema() -> pa.Schema:
    return pa.schema(list(TRIAL_COLUMNS.items()) + list(hparam_columns().items()))


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Fill ``time_saved``, ``speedup``, ``accuracy_delta`` against the median ok baseline per device;
    a trial that did not finish ok saved nothing, so its ``flops_saved`` is null too."""
    df = df.copy()
    for col in ("time_saved", "speedup", "accuracy_delta"):
        df[col] = float("nan")
    if df.empty:
        return df
    base = df[(df["strategy"] == "baseline") & (df["status"] == "ok")]
    ref = base.groupby("device_name")[["train_time_s", "test_accuracy"]].median()
    t_base = df["device_name"].map(ref["train_time_s"]).astype(float)
    a_base = df["device_name"].map(ref["test_accuracy"]).astype(float)
    # a run cut short (diverged) took less time by stopping, which is no saving
    t = df["train_time_s"].astype(float).where(df["status"] == "ok")
    if "flops_saved" in df.columns:
        df["flops_saved"] = df["flops_saved"].astype(float).where(df["status"] == "ok")
    df["time_saved"] = 1.0 - t / t_base
    df["speedup"] = t_base / t
    df["accuracy_delta"] = df["test_accuracy"].astype(float) - a_base
    return df


def trials_table(rows: list[dict]) -> pa.Table:
    schema = trials_schema()
    df = derive(pd.DataFrame(rows, columns=[f.name for f in schema]))
    return _table(df.to_dict("records"), schema)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {}
    for f in schema:
        vals = [r.get(f.name) for r in rows]
        vals = [None if is_missing(v) else v for v in vals]
        if pa.types.is_string(f.type):
            vals = [None if v is None else str(v) for v in vals]
        elif pa.types.is_integer(f.type):
            vals = [None if v is None else int(v) for v in vals]
        elif pa.types.is_floating(f.type):
            vals = [None if v is None else float(v) for v in vals]
        cols[f.name] = pa.array(vals, type=f.type)
    return pa.table(cols, schema=schema)


def epochs_table(records: list[dict]) -> pa.Table:
    """Contract columns first, then every other record key (types inferred; all-null -> string)."""
    extra = list(dict.fromkeys(k for r in records for k in r if k not in EPOCH_COLUMNS))
    base = _table(records, pa.schema(list(EPOCH_COLUMNS.items())))
    if not extra:
        return base
    for name in extra:
        vals = [r.get(name) for r in records]
        try:
            col = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # values of mixed types: keep them as JSON text
            col = pa.array([None if v is None else json.dumps(v) for v in vals], type=pa.string())
        if pa.types.is_null(col.type):
            col = col.cast(pa.string())
        base = base.append_column(name, col)
    return base


WRITING = threading.RLock()  # held while the three files are rewritten: one writer at a time, and none cut short


def write(study_dir: str | Path, trial_rows: list[dict], epoch_rows: list[dict]) -> pd.DataFrame:
    """Write the three files atomically; return the trials frame as written (derived columns filled)."""
    with WRITING:
        return _write(Path(study_dir), trial_rows, epoch_rows)


def _write(study_dir: Path, trial_rows: list[dict], epoch_rows: list[dict]) -> pd.DataFrame:
    trials = trials_table(trial_rows)
    study_of = {r["trial_id"]: r.get("study") for r in trial_rows}
    epoch_rows = [{**r, "study": r.get("study") or study_of.get(r["trial_id"])} for r in epoch_rows]
    _atomic(epochs_table(epoch_rows), study_dir / "epochs.parquet")
    _atomic(trials, study_dir / "trials.parquet")
    df = trials.to_pandas()
    front = fronts(df)
    schema = trials.schema.append(pa.field("front", pa.string()))
    _atomic(_table(front.to_dict("records"), schema), study_dir / "pareto.parquet")
    return df


def _atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_rows(study_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The raw trial rows and epoch records of an earlier (interrupted) run, for ``--resume``.
    Epoch records of trials without a row are dropped (that trial runs again)."""
    study_dir = Path(study_dir)
    if not (study_dir / "trials.parquet").is_file():
        return [], []
    trials = read_table(study_dir / "trials.parquet", ("trial_id", "status"), "trials").to_pylist()
    ids = {r["trial_id"] for r in trials}
    epochs = []
    if (study_dir / "epochs.parquet").is_file():
        epochs = [r for r in read_table(study_dir / "epochs.parquet", ("trial_id",), "epochs").to_pylist()
                  if r["trial_id"] in ids]
    return trials, epochs


__all__ = ["TRIAL_COLUMNS", "EPOCH_COLUMNS", "CONTRACT_HPARAMS", "FILES", "hparam_columns", "recorded_hparams", "trials_schema", "derive", "write",
           "read_rows", "trials_table", "epochs_table", "load", "pareto", "fronts"]
