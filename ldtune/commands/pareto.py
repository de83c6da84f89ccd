"""``ldtune pareto DIR``: the accuracy-vs-time-saved fronts of every study under DIR.

Trials are grouped by (study, model, dataset), as in ``pareto.parquet``: time saved and the
accuracy delta are against each study's own baseline, and two studies' workloads (subset, epochs,
batch size) may differ. ``--by all`` (the default) prints the global front of each group, ``--by
strategy`` every strategy's own front. Accuracy and time/FLOPs saved are printed in percent, the
accuracy delta in percentage points against the baseline median; the last column is the trial's
id, its key in ``trials.parquet`` and ``epochs.parquet``. A group with no ``ok`` baseline
has no front (its time saved is unknown): the table says so, csv and json on stderr.
"""
from __future__ import annotations

import json
import sys

from ..text import is_missing, json_records, json_value, plural
from . import import_study_plugins

# pandas and pyarrow load when the command runs, not when the CLI is built: `ldtune bench` and
# `ldtune train` must work where only PyTorch is installed (scripts/gpu_figures.sh).

OUT_COLUMNS = ("study", "model", "dataset", "front", "strategy", "hyperparameters", "test_accuracy", "accuracy_delta",
               "time_saved", "flops_saved", "speedup", "trial_id")
KEYS = ["study", "model", "dataset"]


def hparams_shown(row, columns, every: bool = False) -> dict:
    """A row's hyperparameters at full precision (an int one as an int: pandas reads an integer
    column with nulls as floats). For a registered strategy: its own, and unless ``every`` only the
    ones it searches and any other held at a value not its default (what a table shows); for
    another strategy, every one its row has."""
    specs = _registry().get(row["strategy"])
    specs = specs.hparams if specs is not None else None
    shown = {}
    for c in columns:
        v = json_value(row[c])
        if v is None or specs is not None and c not in specs:
            continue
        if not every and specs is not None and specs[c].search is None and _same(v, specs[c].default):
            continue
        if specs is not None and specs[c].kind is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        shown[c] = v
    return shown


def hparams_text(shown: dict) -> str:
    """``key=value`` pairs, e.g. ``p=0.5 s=2`` (floats to 3 significant digits); ``-`` if none."""
    from ..text import format_value
    return " ".join(f"{k}={format_value(v)}" for k, v in shown.items()) or "-"


def _same(v, default) -> bool:
    try:
        return bool(v == default)
    except (TypeError, ValueError):
        return False


def _registry() -> dict:
    try:
        from ..strategies import REGISTRY
    except ImportError:  # the registry needs torch; the Parquet query does not
        return {}
    return REGISTRY


def configure(p) -> None:
    p.add_argument("dir", metavar="DIR", help="results directory (DIR/<study>/trials.parquet) or one study's directory")
    p.add_argument("--by", choices=["all", "strategy"], default="all",
                   help="all: the global front per (study, model, dataset); strategy: each strategy's own front")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="csv and json also carry each trial's hyperparameters at full precision (csv: a column "
                        "each; json: the object 'hparams'; 'hyperparameters' is the table's rounded text)")
    p.add_argument("--study", default=None, help="only this study (its directory under DIR, as the table names it)")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--strategy", default=None, help="only this strategy (and its front)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="PP",
                   help="only trials within PP percentage points of the baseline median accuracy")


def front_table(a):
    """The rows to print (a pandas frame with OUT_COLUMNS), from the parsed arguments, and the notes
    on groups that have no front for want of an ``ok`` baseline, and the recorded hyperparameter
    columns. ``hparams`` holds each row's own hyperparameters, every one it recorded, at full
    precision (a dict), for csv and json; ``hyperparameters`` is the table's text of them."""
    from ..pareto import load, pareto
    from ..results import recorded_hparams
    trials = load(a.dir)
    import_study_plugins(a.dir)  # a plugin strategy's hyperparameters print as a built-in one's
    hp = recorded_hparams(trials)
    res = pareto(trials, by=KEYS, study=a.study, model=a.model, dataset=a.dataset, strategy=a.strategy,
                 max_accuracy_drop=a.max_accuracy_drop)
    res = res[res["front"] != "all"] if a.by == "strategy" else res[res["front"] == "all"]
    res = res.sort_values([*KEYS, "front", "time_saved", "test_accuracy"],
                          ascending=[True, True, True, True, True, False], kind="stable", ignore_index=True)
    res["hyperparameters"] = [hparams_text(hparams_shown(r, hp)) for _, r in res.iterrows()]
    every = [hparams_shown(r, hp, every=True) for _, r in res.iterrows()]
    for c in OUT_COLUMNS:
        if c not in res.columns:
            res[c] = None
    res = res[list(OUT_COLUMNS)].assign(hparams=every)
    return res, no_baseline(trials, a), hp


def no_baseline(trials, a) -> list[str]:
    """One note per (study, model, dataset) of the filters whose trials have no ``ok`` baseline, and
    one per device of a study whose ok trials have none there."""
    from ..pareto import baselined, unbaselined_devices
    t = trials
    for col, v in (("study", a.study), ("model", a.model), ("dataset", a.dataset)):
        t = t[t[col] == v] if v is not None else t
    notes = []
    for (study, model, dataset), g in t[~t["study"].isin(baselined(t))].groupby(KEYS, sort=True):
        base = (g["strategy"] == "baseline").sum()
        why = f"its {plural(base, 'baseline trial')} did not finish ok" if base else "it has no baseline trial"
        notes.append(f"{_section(study, model, dataset)}: no front: {why}, and time saved is measured against the baseline")
    if a.strategy is not None:  # that strategy's trials, beside the baselines they are measured against
        t = t[t["strategy"].isin(["baseline", a.strategy])]
    return notes + unbaselined_devices(t)


def _section(study, model, dataset) -> str:
    return f"{study}: {model} / {dataset}"


def render_table(res, by: str, strategy: str | None = None, notes=()) -> str:
    """Fixed-width text: one section per (study, model, dataset), best accuracy first within a
    front, then the ``notes``. With ``strategy`` (``--strategy``) the one front is that strategy's."""
    title = ("front of each strategy" if by == "strategy" else f"front of {strategy}" if strategy
             else "global front")
    heads = ["strategy", "hyperparameters", "accuracy %", "acc delta pp", "time saved %", "FLOPs saved %", "trial"]
    text = (0, 1, len(heads) - 1)  # left-aligned: names; the figures between them right-aligned
    lines = []
    for (study, model, dataset), g in res.groupby(KEYS, sort=True):
        rows = [[r.strategy, r.hyperparameters, f"{100 * r.test_accuracy:.2f}", _pp(r.accuracy_delta),
                 _pct(r.time_saved), _pct(r.flops_saved), str(r.trial_id)] for r in g.itertuples()]
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(heads)]
        if lines:
            lines.append("")
        lines.append(f"{_section(study, model, dataset)}, {title} ({plural(len(rows), 'trial')})")
        fmt = lambda cells: "  ".join(c.ljust(w) if i in text else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        lines.append(fmt(heads).rstrip())
        lines.extend(fmt(x).rstrip() for x in rows)
    if notes:
        lines.extend(([""] if lines else []) + list(notes))
    return "\n".join(lines) if lines else "no trials on any front (after filters)"


def _pp(v) -> str:
    return "-" if is_missing(v) else f"{100 * v:+.2f}"


def _pct(v) -> str:
    return "-" if is_missing(v) else f"{100 * v:.1f}"


def main(a) -> int:
    res, notes, hp = front_table(a)
    if a.format != "table":
        for n in notes:
            print(f"ldtune: note: {n}", file=sys.stderr)
    if a.format == "csv":  # one column per hyperparameter shown, after the fixed ones
        import pandas as pd
        flat = pd.DataFrame(list(res["hparams"]), index=res.index, dtype=object)
        flat = flat[[c for c in hp if c in flat.columns]]  # the trials table's order, whatever the rows
        sys.stdout.write(pd.concat([res.drop(columns="hparams"), flat], axis=1).to_csv(index=False))
    elif a.format == "json":  # the hyperparameters as an object: their values keep their types
        print(json.dumps(json_records(res.to_dict("records")), indent=1, allow_nan=False))
    else:
        print(render_table(res, a.by, a.strategy, notes))
    return 0
