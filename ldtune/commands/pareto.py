"""``ldtune pareto DIR``: the accuracy-vs-time-saved fronts of every study under DIR.

Trials are grouped by (model, dataset) across studies. ``--by all`` (the default) prints the
global front of each group, ``--by strategy`` every strategy's own front. Accuracy and time/FLOPs
saved are printed in percent, the accuracy delta in percentage points against the baseline median.
"""
from __future__ import annotations

import json
import math
import sys

from ..text import plural

# pandas and pyarrow load when the command runs, not when the CLI is built: `ldtune bench` and
# `ldtune train` must work where only PyTorch is installed (scripts/gpu_figures.sh).

OUT_COLUMNS = ("model", "dataset", "front", "strategy", "hyperparameters", "test_accuracy", "accuracy_delta",
               "time_saved", "flops_saved", "speedup", "study", "trial_id")


def hparam_columns(df) -> list[str]:
    """Hyperparameter columns present in ``df``: DESIGN.md's, plus any a registered strategy declares."""
    from ..results import hparam_columns as all_columns
    return [n for n in all_columns() if n in df.columns]


def _isnull(v) -> bool:
    import pandas as pd
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def hparams_text(row, columns) -> str:
    """``key=value`` pairs of a row's hyperparameters, e.g. ``p=0.5 s=2``; ``-`` if none. For a
    registered strategy: the ones it searches, and any other held at a value not its default."""
    from ..pareto import format_value
    specs = _registry().get(row["strategy"])
    specs = specs.hparams if specs is not None else None
    parts = []
    for c in columns:
        v = row[c]
        if _isnull(v) or specs is not None and c not in specs:
            continue
        if specs is not None and specs[c].search is None and _same(v, specs[c].default):
            continue
        parts.append(f"{c}={format_value(v)}")
    return " ".join(parts) or "-"


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
                   help="all: the global front per (model, dataset); strategy: each strategy's own front")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--strategy", default=None, help="only this strategy (and its front)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="PP",
                   help="only trials within PP percentage points of the baseline median accuracy")


def front_table(a):
    """The rows to print (a pandas frame with OUT_COLUMNS), from the parsed arguments."""
    from ..pareto import load, pareto
    trials = load(a.dir)
    hp = hparam_columns(trials)
    res = pareto(trials, by=("model", "dataset"), model=a.model, dataset=a.dataset, strategy=a.strategy,
                 max_accuracy_drop=a.max_accuracy_drop)
    res = res[res["front"] != "all"] if a.by == "strategy" else res[res["front"] == "all"]
    res = res.sort_values(["model", "dataset", "front", "time_saved", "test_accuracy"],
                          ascending=[True, True, True, True, False], kind="stable", ignore_index=True)
    res["hyperparameters"] = [hparams_text(r, hp) for _, r in res.iterrows()]
    for c in OUT_COLUMNS:
        if c not in res.columns:
            res[c] = None
    return res[list(OUT_COLUMNS)]


def render_table(res, by: str, strategy: str | None = None) -> str:
    """Fixed-width text: one section per (model, dataset), best accuracy first within a front.
    With ``strategy`` (``--strategy``) the one front is that strategy's."""
    title = ("front of each strategy" if by == "strategy" else f"front of {strategy}" if strategy
             else "global front")
    heads = ["strategy", "hyperparameters", "accuracy %", "acc delta pp", "time saved %", "FLOPs saved %"]
    lines = []
    for (model, dataset), g in res.groupby(["model", "dataset"], sort=True):
        rows = [[r.strategy, r.hyperparameters, f"{100 * r.test_accuracy:.2f}", _pp(r.accuracy_delta),
                 _pct(r.time_saved), _pct(r.flops_saved)] for r in g.itertuples()]
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(heads)]
        if lines:
            lines.append("")
        lines.append(f"{model} / {dataset}: {title} ({plural(len(rows), 'trial')})")
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        lines.append(fmt(heads).rstrip())
        lines.extend(fmt(x).rstrip() for x in rows)
    return "\n".join(lines) if lines else "no trials on any front (after filters)"


def _pp(v) -> str:
    return "-" if _isnull(v) else f"{100 * v:+.2f}"


def _pct(v) -> str:
    return "-" if _isnull(v) else f"{100 * v:.1f}"


def main(a) -> int:
    res = front_table(a)
    if a.format == "csv":
        sys.stdout.write(res.to_csv(index=False))
    elif a.format == "json":
        records = [{k: (None if _isnull(v) else v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                   for r in res.to_dict("records")]
        print(json.dumps(records, indent=1))
    else:
        print(render_table(res, a.by, a.strategy))
    return 0
