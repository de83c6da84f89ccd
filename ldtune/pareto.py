"""Pareto fronts of study results: (max ``test_accuracy``, max ``time_saved``).

``nondominated`` is the vectorized sort; ``load`` reads the Parquet files of every study under a
directory; ``pareto`` filters trials and returns their fronts (``fronts`` is the
``pareto.parquet`` contract: one copy per strategy front plus the global front ``all``).
``ldtune.results`` re-exports ``load`` and ``pareto``.

The dominance rule: point j dominates point i when it is at least as good on both objectives and
strictly better on one. So exact duplicates never dominate each other: every copy of a
non-dominated point is kept, and every copy of a dominated point is dropped. A point with a
missing (NaN) objective is never on a front and dominates nothing.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .text import plural

GROUP_KEYS = ("study", "model", "dataset")


def nondominated(acc, saved) -> np.ndarray:
    """Boolean mask of the points not dominated by another one (maximize both ``acc`` and ``saved``).

    O(n log n): sort by accuracy, then time saved, both descending. A point is dominated if some
    point with strictly higher accuracy saves at least as much time (the running maximum of
    ``saved`` over the earlier accuracy groups), or if a point with the same accuracy saves
    strictly more (the first point of its own accuracy group).
    """
    acc = np.asarray(acc, dtype=float)
    saved = np.asarray(saved, dtype=float)
    if acc.shape != saved.shape or acc.ndim != 1:
        raise ValueError("acc and saved must be 1-D arrays of one length")
    keep = np.zeros(acc.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(acc) | np.isnan(saved)))
    if valid.size == 0:
        return keep
    order = valid[np.lexsort((-saved[valid], -acc[valid]))]
    a, s = acc[order], saved[order]
    new_group = np.r_[True, a[1:] != a[:-1]]
    start = np.maximum.accumulate(np.where(new_group, np.arange(a.size), 0))  # index of each group's first point
    running = np.maximum.accumulate(s)
    beaten = (start > 0) & (s <= running[np.maximum(start - 1, 0)])  # by a point of higher accuracy
    keep[order] = ~beaten & (s >= s[start])
    return keep


# columns every reader of a table relies on (of DESIGN.md's contract)
_TRIALS = ["trial_id", "strategy", "model", "dataset", "epochs", "status", "test_accuracy", "time_saved",
           "accuracy_delta"]
REQUIRED = {"trials": _TRIALS, "pareto": _TRIALS + ["front"], "epochs": ["trial_id", "epoch"]}
# the kinds of the contract's columns a reader computes on (``study`` is the directory's name); a row
# is named by its keys, so they hold a value in every row
_NUMBERS = {"epochs", "seed", "test_accuracy", "train_time_s", "train_flops", "flops_saved", "time_saved", "speedup",
            "accuracy_delta", "epoch", "train_loss", "epoch_time_s", "epoch_flops", "trainable_params", "active_blocks"}
_TEXT = {"trial_id", "strategy", "model", "dataset", "status", "error", "device_name", "front"}
_KEYS = {"trial_id", "strategy", "model", "dataset", "status", "front", "epoch"}


def _is_string_view(kind) -> bool:  # pyarrow >= 16 writes text this way too; older ones have no such type
    import pyarrow as pa
    return getattr(pa.types, "is_string_view", lambda _: False)(kind)


def read_table(path: Path, needs, table: str):
    """An ldtune Parquet file as an Arrow table; a truncated or foreign one, or one without the
    columns ``needs``, is the user's to mend (exit 2, naming the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        t = pq.read_table(path)
    except Exception as e:  # a truncated or foreign file
        raise UserError(str(path), f"cannot read Parquet ({type(e).__name__}: {e})") from None
    missing = [c for c in needs if c not in t.column_names]
    if missing:
        raise UserError(str(path), f"missing column {missing[0]!r}: not an ldtune {table} table")
    for c in t.column_names:  # every reader computes on these kinds: text where numbers go is a foreign table
        kind = t.schema.field(c).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        want = "numbers" if c in _NUMBERS else "text" if c in _TEXT else None
        fits = (pa.types.is_null(kind) or want is None
                or (pa.types.is_integer(kind) or pa.types.is_floating(kind) if want == "numbers"
                    else pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_string_view(kind)))
        if not fits:
            raise UserError(str(path), f"column {c!r} holds {kind} values, not {want}: not an ldtune {table} table")
        if c in needs and c in _KEYS and t.column(c).null_count:
            raise UserError(str(path), f"column {c!r} has {t.column(c).null_count} empty "
                                       f"value{'s' * (t.column(c).null_count > 1)}: not an ldtune {table} table")
    return t


def find_studies(root: Path) -> list[Path]:
    """The study directories under ``root`` (each holds a trials.parquet), or ``root`` itself."""
    return [root] if (root / "trials.parquet").is_file() else sorted({p.parent for p in root.rglob("trials.parquet")})


def study_name(study_dir: Path, root: Path) -> str:
    """A study's name under ``root``: its directory's path there, or its own name when it is ``root``
    (``.`` too; a symbolic link keeps its own name)."""
    return Path(os.path.abspath(study_dir)).name if study_dir == root else study_dir.relative_to(root).as_posix()


def baselined(trials: pd.DataFrame) -> set:
    """The studies in ``trials`` with an ``ok`` baseline trial: the ones whose ``time_saved`` and
    ``accuracy_delta`` are measured (against it)."""
    return set(trials.loc[(trials["strategy"] == "baseline") & (trials["status"] == "ok"), "study"])


def unbaselined_devices(trials: pd.DataFrame) -> list[str]:
    """One note per (study, model, dataset, device) whose ok trials have no time saved because no
    baseline finished ok on that device (``time_saved`` is against the same device's baselines, so
    a node that ran elsewhere, e.g. without the fused BatchNorm, has none): they are on no front."""
    need = ("study", "model", "dataset", "device_name", "status", "time_saved")
    if any(c not in trials.columns for c in need):
        return []
    t = trials[trials["study"].isin(baselined(trials)) & (trials["status"] == "ok") & trials["time_saved"].isna()]
    t = t.assign(device_name=t["device_name"].fillna("an unnamed device"))
    return [f"{study}: {model} / {dataset}: {plural(len(g), 'ok trial')} on {device} on no front: no baseline trial "
            "finished ok on that device, and time saved is measured against the same device's baseline"
            for (study, model, dataset, device), g in t.groupby(["study", "model", "dataset", "device_name"], sort=True)]


def load(directory, table: str = "trials") -> pd.DataFrame:
    """Every study's ``trials`` (or ``epochs``) table under ``directory`` as one pandas frame.

    ``directory`` is a results directory (``DIR/<study>/trials.parquet``, at any depth: the demo's
    ``results/demo-<time>/quickstart`` too) or one study's own directory. A study is named by its
    directory: its path under DIR (``quickstart``, ``demo-1/quickstart``), or its own name when DIR is
    that study. So two runs of one spec, or a renamed copy of a study, stay apart: their trial ids
    repeat, and each has its own baseline.
    """
    if table not in ("trials", "epochs", "pareto"):
        raise UserError("table", f"must be trials, epochs or pareto, got {table!r}")
    root = Path(directory)
    if not root.is_dir():
        raise UserError(str(root), "a file, not a results directory" if root.exists() else "no such directory")
    study_dirs = find_studies(root)
    if not study_dirs:
        raise UserError(str(root), "no study results here (expected DIR/<study>/trials.parquet)")
    frames = []
    for d in study_dirs:
        path = d / f"{table}.parquet"
        if not path.is_file():
            continue
        df = read_table(path, REQUIRED[table], table).to_pandas()
        if "study" in df.columns:
            df = df.drop(columns="study")
        df.insert(0, "study", study_name(d, root))
        frames.append(df)
    if not frames:
        raise UserError(str(root), f"no {table}.parquet in any study directory")
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)


def check_drop(max_accuracy_drop) -> None:
    """An accuracy-drop limit is a finite number of percentage points >= 0 (not text, not a bool)."""
    number = isinstance(max_accuracy_drop, numbers.Real) and not isinstance(max_accuracy_drop, bool)
    try:
        finite = number and math.isfinite(max_accuracy_drop)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or max_accuracy_drop < 0:
        got = max_accuracy_drop if number else repr(max_accuracy_drop)
        raise UserError("--max-accuracy-drop", f"must be a number of percentage points >= 0, got {got}")


def within_drop(accuracy_delta, max_accuracy_drop: float):
    """``accuracy_delta >= -PP/100``, up to float rounding (0.84 - 0.85 is a drop of exactly 1 pp)."""
    return accuracy_delta >= -max_accuracy_drop / 100.0 - 1e-9


def _check_filter(df: pd.DataFrame, column: str, value: str | None, flag: str) -> pd.DataFrame:
    if value is None:
        return df
    known = sorted(df[column].dropna().astype(str).unique()) if column in df.columns else []
    if value not in known:
        raise UserError(flag, f"no trials with {column} {value!r} (present: {', '.join(known) or 'none'})")
    return df[df[column] == value]


def pareto(df: pd.DataFrame, by=GROUP_KEYS, *, study: str | None = None, model: str | None = None,
           dataset: str | None = None, strategy: str | None = None,
           max_accuracy_drop: float | None = None) -> pd.DataFrame:
    """The fronts of the ``ok`` trials in ``df``, per group of ``by`` (columns that exist): per study,
    model and dataset by default, as ``time_saved`` and ``accuracy_delta`` are against each study's
    own baseline (``by=("model", "dataset")`` pools studies of one workload, at the caller's word).

    Returns the front rows with a ``front`` column: the strategy name for that strategy's own
    front, ``all`` for the global front of the group (a row on both appears twice). Filters:
    ``study``/``model``/``dataset``/``strategy`` (an unknown value is a :class:`UserError`), and
    ``max_accuracy_drop`` in percentage points: only trials with ``accuracy_delta >= -PP/100``
    (the fronts of the rest are the unfiltered fronts cut at the limit). With ``strategy`` the
    global front is that strategy's front too.
    """
    for col in ("test_accuracy", "time_saved", "strategy", "status"):
        if col not in df.columns:
            raise UserError("trials", f"missing column {col!r}")
    df = _check_filter(df, "study", study, "--study")
    df = _check_filter(df, "model", model, "--model")
    df = _check_filter(df, "dataset", dataset, "--dataset")
    df = _check_filter(df, "strategy", strategy, "--strategy")
    df = df[df["status"] == "ok"]
    if max_accuracy_drop is not None:
        check_drop(max_accuracy_drop)
        if "accuracy_delta" not in df.columns:
            raise UserError("trials", "missing column 'accuracy_delta'")
        df = df[within_drop(df["accuracy_delta"], max_accuracy_drop)]
    if isinstance(by, str):
        by = (by,)
    missing = [k for k in by if k not in df.columns]
    if missing and tuple(by) != GROUP_KEYS:  # the default groups by the keys a frame has
        raise UserError("by", f"no column {missing[0]!r} to group by (columns: {', '.join(map(str, df.columns))})")
    keys = [k for k in by if k in df.columns]
    out = []
    for _, g in (df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]):
        for name, part in [("all", g), *g.groupby("strategy", sort=True)]:
            front = part[nondominated(part["test_accuracy"], part["time_saved"])]
            out.append(front.assign(front=name))
    if not out:
        return df.iloc[0:0].assign(front=pd.Series(dtype=str))
    res = pd.concat(out, ignore_index=True)
    return res.sort_values([*keys, "front", "time_saved", "test_accuracy"], ascending=[True] * len(keys) + [True, False, False],
                           kind="stable", ignore_index=True)


def fronts(trials: pd.DataFrame) -> pd.DataFrame:
    """``pareto.parquet``: per (study, model, dataset), every strategy's front and the global one."""
    return pareto(trials, by=GROUP_KEYS)
