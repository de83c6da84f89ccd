"""``ldtune recommend DIR --model M [--dataset NEW]``: robust default hyperparameters per strategy,
printed as a study spec (comments say why); ``--confirm`` runs that spec as a short study on NEW
and reports which recommendations held. ``ldtune recommend --evaluate DIR``: leave-one-dataset-out
scores of the recommendations (see :mod:`ldtune.recommend`)."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import yaml

from ..errors import UserError
from ..text import json_records, plural
from . import import_study_plugins, read_spec


def configure(p) -> None:
    p.add_argument("dir", metavar="DIR", help="results directory with studies of several datasets")
    p.add_argument("--model", default=None, help="the model to recommend for (required unless --evaluate)")
    p.add_argument("--dataset", default=None, metavar="NEW",
                   help="the new dataset (its own studies in DIR, if any, are left out)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="PP",
                   help="accuracy drop allowed against the baseline median, in percentage points (default 1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the new runs (default: those of the studies in DIR); fractions of training "
                        "become epochs with it")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="training images of the new runs (default: those of the studies in DIR)")
    p.add_argument("--strategy", action="append", default=None, metavar="S",
                   help="only this strategy (repeat for several; default: every strategy in DIR)")
    p.add_argument("--trials", type=int, default=None, help="trials per recommended strategy in the spec (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="baseline repeats in the spec (default 3)")
    p.add_argument("--confirm", action="store_true",
                   help="run the spec as a short study on NEW (plus baseline) and report which held (every trial ok, "
                        "within the accuracy limit, time saved on average); exit status 1 if any did not hold")
    p.add_argument("--output", default=None, metavar="OUT",
                   help="results directory of the --confirm study (default: DIR/../confirm)")
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster for --confirm (as in ldtune run)")
    p.add_argument("--evaluate", action="store_true", help="leave-one-dataset-out evaluation of DIR")
    p.add_argument("--format", choices=["table", "json"], default=None,
                   help="--evaluate output (default table); a recommendation is always a study spec")


# ------------------------------------------------------------------------------------- helpers
def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _pp(v: float) -> str:
    return f"{100 * v:+.2f} pp"


def source_spec(directory, model: str, studies=None, dataset: str | None = None) -> dict:
    """``workload`` and ``test_subset`` of a study of ``model`` under ``directory`` (at any depth, as
    ``ldtune pareto`` finds them; only those named in ``studies``, if given) that saved its
    ``study.yaml`` (the runner does), and ``path``, that file; ``{"workload": {"model": model}}`` if
    none did. A study on ``dataset`` comes first (its workload is the one chosen for that data: its
    subset, batch size, lr), then the first by path."""
    from ..pareto import study_name
    root = Path(directory)
    found = []
    for path in sorted(root.rglob("study.yaml")):
        if studies is not None and study_name(path.parent, root) not in studies:
            continue
        spec = read_spec(path)
        if spec is None:
            continue
        w = spec.get("workload") or {}
        if w.get("model") == model:
            found.append({"workload": dict(w), "test_subset": spec.get("test_subset"), "path": path})
    found.sort(key=lambda f: dataset is None or f["workload"].get("dataset") != dataset)  # stable: by path within
    return found[0] if found else {"workload": {"model": model}}


def build_spec(recs, model: str, dataset: str, epochs: int, source: dict, trials: int, repeats: int = 3,
               subset: int | None = None) -> dict:
    """A study spec holding each useful recommendation at its values (in epochs of this run);
    ``subset``: training images (default: the source study's)."""
    w = {**source["workload"], "model": model, "dataset": dataset, "epochs": epochs}
    if subset is not None:
        w["subset"] = subset
    strategies = {r.strategy: {"trials": trials, "search": r.hparams(epochs)} for r in recs if r.useful}
    spec = {"name": f"recommend_{model}_{dataset}".replace(":", "_").replace("/", "_"), "workload": w}
    streamed = dataset == "imagenette" or dataset.startswith("imagefolder:")  # no test_subset for these
    if source.get("test_subset") is not None and not streamed:
        spec["test_subset"] = source["test_subset"]
    return {**spec, "baseline": {"repeats": repeats}, "strategies": strategies}


def _check_spec(spec: dict, trials_here: bool) -> None:
    """The spec's fields, and its data as :func:`ldtune.study.check_data` checks it; errors name the
    option that sets the field."""
    from ..study import check_data, from_dict
    try:
        check_data(from_dict(spec), trials_here=trials_here)
    except UserError as e:
        field = {"workload.dataset": "--dataset", "workload.epochs": "--epochs", "workload.subset": "--subset"}
        raise UserError(field.get(e.field, e.field), e.message) from None


def explain(recs, datasets, model, target, epochs, limit, failed=()) -> list[str]:
    from ..text import format_value
    lines = [f"# ldtune recommend: {model} for {target}, from {plural(len(datasets), 'dataset')} ({', '.join(datasets)}),",
             f"# accuracy drop limit {limit:g} pp against each study's baseline median. Per strategy: of the",
             "# configs its trials ran, the one with the best worst-case time saved among those within the",
             "# limit on every dataset (kernel-smoothed over neighbouring configs); epochs as fractions of training."]
    for strategy, why in failed:
        lines.append(f"# {strategy}: no recommendation; {why}")
    for r in recs:
        cfg = r.config_text()
        own = " ".join(f"{k}={format_value(v)}" for k, v in r.hparams(epochs).items() if k not in r.fixed)
        own = f" -> {own} at {plural(epochs, 'epoch')}" if any(d.per_epoch for d in r.dims) else ""
        own += " (as its trials ran: " + " ".join(f"{k}={format_value(v)}" for k, v in r.fixed.items()) + ")" if r.fixed else ""
        verdict = ("held on every dataset" if r.useful else
                   "within the limit but saves no time in the worst case (left out)" if r.held else
                   "NOT within the limit everywhere (the safest config; left out)")
        lines.append(f"# {r.strategy}: {cfg}{own}; {verdict};"
                     f" worst case {_pct(r.worst_saved)} time saved, {_pp(r.worst_delta)}")
        for x in r.per_dataset.itertuples():
            lines.append(f"#   {x.dataset:<16} {_pct(x.time_saved):>7} saved  {_pp(x.accuracy_delta):>10}  ({plural(x.trials, 'trial')})")
    return lines


def _why_none(g) -> str:
    """Why a strategy's trials ``g`` gave no recommendation: none finished ok, or those that did have
    no time saved (no baseline on their device)."""
    ok = int((g["status"] == "ok").sum())
    if ok:
        return (f"its {plural(ok, 'ok trial')} here have no time saved: no baseline finished ok on their device "
                "(see left out)")
    error = g["error"].dropna().iloc[-1] if g["error"].notna().any() else None
    return f"none of its {plural(len(g), 'trial')} here finished ok" + (f" (last error: {error})" if error else "")


def measured(trials, directory):
    """The trials of the studies with an ``ok`` baseline (time saved and the accuracy delta are
    measured against it), and one comment line per study left out for want of one."""
    from ..pareto import baselined, unbaselined_devices
    based = baselined(trials)
    if not based:
        raise UserError(str(directory), "no study here has a baseline trial that finished ok; time saved and "
                                        "accuracy are measured against it")
    notes = [f"study {s} ({', '.join(sorted(g['dataset'].unique()))}): no baseline trial finished ok"
             for s, g in trials[~trials["study"].isin(based)].groupby("study", sort=True)]
    return trials[trials["study"].isin(based)], notes + unbaselined_devices(trials)


# ------------------------------------------------------------------------------------- commands
def main(a) -> int:
    from ..pareto import load
    from .. import recommend as rec

    trials = load(a.dir)
    import_study_plugins(a.dir)  # a plugin strategy's search space and units, as for a built-in one
    if a.model is not None:
        rec.check_model(trials, a.model)
    ran = trials
    trials, left_out = measured(trials, a.dir)
    if a.model is not None and not (trials["model"] == a.model).any():  # it has trials, none measured
        raise UserError("--model", f"no study of {a.model} here has a baseline trial that finished ok; time saved "
                                   "and accuracy are measured against it")
    if a.evaluate:
        return _evaluate(trials, a, left_out)
    if a.format is not None:
        raise UserError("--format", "applies to --evaluate; a recommendation prints a study spec (YAML)")
    if a.model is None:
        raise UserError("--model", "required (or use --evaluate)")
    if a.epochs is not None and a.epochs < 1:
        raise UserError("--epochs", f"must be an integer >= 1, got {a.epochs}")
    for flag, v in (("--trials", a.trials), ("--repeats", a.repeats), ("--subset", a.subset)):
        if v is not None and v < 1:
            raise UserError(flag, f"must be an integer >= 1, got {v}")
    if a.confirm and a.dataset is None:
        raise UserError("--dataset", "--confirm needs the new dataset")
    other = lambda t: (t["model"] == a.model) & (t["dataset"] != a.dataset)
    if not other(trials).any() and other(ran).any():  # trials on other datasets, none measured
        raise UserError("--dataset", f"no study of {a.model} on a dataset other than {a.dataset!r} has a baseline "
                                     "trial that finished ok; time saved and accuracy are measured against it")
    recs = rec.recommend(trials, a.model, a.dataset, a.max_accuracy_drop)
    used = trials[(trials["model"] == a.model) & (trials["dataset"] != a.dataset)]
    if a.strategy:  # one with trials but no recommendation is explained below, as without --strategy
        known = sorted(set(used["strategy"]) - {"baseline"})
        for s in a.strategy:
            if s not in known:
                raise UserError("--strategy", f"no recommendation for {s!r} (strategies with trials: {', '.join(known)})")
        recs = [r for r in recs if r.strategy in a.strategy]
    # the header names the datasets the printed strategies' evidence comes from
    shown = used[used["strategy"].isin(a.strategy)] if a.strategy else used
    datasets = sorted(shown["dataset"].unique())
    source = source_spec(a.dir, a.model, set(trials["study"]), a.dataset)
    epochs = a.epochs or int(source["workload"].get("epochs") or used["epochs"].median())
    dataset = a.dataset or source["workload"].get("dataset") or datasets[0]
    spec = build_spec(recs, a.model, dataset, epochs, source, a.trials or 1, a.repeats or 3, a.subset)
    from ..runner import local_instance
    # missing data stops only a --confirm run here; a printed spec may be run where its data is
    _check_spec(spec, trials_here=a.confirm and local_instance(a.address))
    if a.confirm and not spec["strategies"]:
        raise UserError("--confirm", "no recommendation held the accuracy-drop limit: nothing to confirm")
    out = _confirm_output(spec, a) if a.confirm else None  # checked before anything is printed
    target = a.dataset or f"a new dataset (the spec below names {dataset}: set workload.dataset to yours)"
    done = {r.strategy for r in recs}
    failed = [(name, _why_none(g)) for name, g in used[used["strategy"] != "baseline"].groupby("strategy", sort=True)
              if name not in done and (not a.strategy or name in a.strategy)]
    lines = explain(recs, datasets, a.model, target, epochs, a.max_accuracy_drop, failed)
    lines += [f"# left out: {n}" for n in left_out]
    if not spec["strategies"] and not a.confirm:
        why = ("no strategy's recommendation held the accuracy-drop limit with time saved" if recs
               else "no strategy's trials here finished ok with time saved" if failed
               else f"no strategy but the baseline has trials of {a.model} on the datasets it learns from")
        warnings.warn(f"{why}; the spec below runs the baseline only", stacklevel=2)
    if "path" in source:  # say where lr, batch size, width, ... come from
        mine = "dataset, epochs and subset" if a.subset else "dataset and epochs"
        lines.append(f"# workload: as in {source['path']}, with this run's {mine}")
    text = "\n".join(lines)
    print(text + "\n" + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None).rstrip())
    if a.confirm:
        return _confirm(spec, out, a)
    return 0


def _confirm_output(spec: dict, a) -> Path:
    """The --confirm study's results directory: writable, and not holding that study already."""
    try:
        from ..runner import check_output_dir
    except ImportError:
        raise UserError("--confirm", "this install has no study runner (ldtune.runner)") from None
    out = Path(a.output) if a.output else Path(a.dir).resolve().parent / "confirm"
    check_output_dir(out)
    if (out / spec["name"]).is_dir() and any((out / spec["name"]).iterdir()):
        raise UserError("--output", f"{out / spec['name']} already holds a confirmation study; "
                        "choose another --output, or remove it")
    return out


def _confirm(spec: dict, out: Path, a) -> int:
    from ..pareto import load, within_drop
    from ..runner import run_study
    from ..study import from_dict
    run_study(from_dict(spec), out, address=a.address, stream=sys.stderr)  # stdout stays one YAML document
    got = load(out / spec["name"])
    print(f"\n# confirmation study on {spec['workload']['dataset']}: {out / spec['name']}")
    held_all = True
    for strategy, g in got[got["strategy"] != "baseline"].groupby("strategy", sort=True):
        ok = g[g["status"] == "ok"]
        delta = ok["accuracy_delta"].mean() if len(ok) else float("nan")
        saved = ok["time_saved"].mean() if len(ok) else float("nan")
        # held: every trial ran, each within the accuracy limit, and on average it saved time
        held = len(ok) == len(g) and bool(within_drop(ok["accuracy_delta"], a.max_accuracy_drop).all()) and saved > 0
        held_all &= held
        print(f"# {strategy:<17} {'held' if held else 'did NOT hold':<13} accuracy {_pp(delta)}, time saved {_pct(saved)}"
              f" ({len(ok)}/{len(g)} trials ok)")
    return 0 if held_all else 1


def _evaluate(trials, a, left_out=()) -> int:
    from .. import recommend as rec

    for flag, v in (("--dataset", a.dataset), ("--confirm", a.confirm or None), ("--strategy", a.strategy),
                    ("--epochs", a.epochs), ("--subset", a.subset), ("--trials", a.trials), ("--repeats", a.repeats),
                    ("--output", a.output), ("--address", a.address)):
        if v is not None:
            raise UserError(flag, "does not apply to --evaluate (it holds out each dataset in DIR in turn)")
    if a.model is not None:
        trials = trials[trials["model"] == a.model]
    ev = rec.evaluate(trials, a.max_accuracy_drop)
    if not len(ev):
        raise UserError(str(a.dir), "leave-one-dataset-out needs studies of one model on at least two datasets")
    summary = rec.summarize(ev)
    if a.format == "json":
        print(json.dumps({"max_accuracy_drop_pp": a.max_accuracy_drop, "folds": json_records(ev.to_dict("records")),
                          "summary": json_records(summary.to_dict("records")),
                          "left_out": list(left_out)}, indent=1, allow_nan=False))
        return 0
    print(f"leave-one-dataset-out, accuracy drop limit {a.max_accuracy_drop:g} pp: the recommendation from the other"
          " datasets, scored on the held-out study (kernel-smoothed), against the most time saved by that study's own"
          " configs within the limit (smoothed alike; 0 if none: the baseline); where no config held with time saved"
          " on the other datasets, none is recommended and the user runs the baseline")
    heads = ["model", "held out", "strategy", "recommended", "acc delta", "time saved", "best in limit", "regret", "held"]
    rows = [[r.model, r.held_out, r.strategy, r.config if r.recommended else "none (baseline)", _pp(r.accuracy_delta),
             _pct(r.time_saved), _pct(r.best_time_saved), f"{100 * r.regret:+.1f} pp",
             ("yes" if r.held else "NO") if r.recommended else "-"] for r in ev.itertuples()]
    print(_table(heads, rows))
    print("\nper strategy:")
    srows = [[s.strategy, str(s.held_out_datasets), str(s.recommended), f"{s.held}/{s.recommended}",
              _regret(s.mean_regret), _regret(s.max_regret)] for s in summary.itertuples()]
    print(_table(["strategy", "held-out datasets", "recommended", "limit held", "mean regret within limit",
                  "max regret within limit"], srows))
    for n in left_out:
        print(f"left out: {n}")
    return 0


def _regret(v) -> str:
    return "-" if v != v else f"{100 * v:+.1f} pp"  # NaN: the limit held nowhere


def _table(heads, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [heads, *rows])
