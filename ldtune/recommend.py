"""Default hyperparameters for a dataset nobody has tuned for, from the studies of other datasets.

Units that transfer: a hyperparameter counted in epochs (``unit == "epochs"``, e.g.
``warmup_epochs``) becomes a fraction of training (``warmup_fraction = warmup_epochs / epochs``);
fractions (``t0``), probabilities (``p``) and the rest stay as they are.

The robust choice, per strategy and model:

1. every configuration one of the strategy's trials ran (in transferable units) is a candidate;
2. on every studied dataset, a candidate's accuracy delta and time saved are estimated by
   smoothing over that dataset's trials of the strategy: a Gaussian kernel on the distance
   between configurations (numbers scaled by the range the trials span, a different category
   counts as the whole range), bandwidth ``BANDWIDTH`` of that range. A trial that ran but
   ``diverged`` counts as 100 points of accuracy lost and no time saved; ``error`` trials (the
   infrastructure failed) are left out;
3. candidates whose estimated drop stays within the limit on *every* dataset are feasible; the
   recommendation is the feasible one with the best worst-case time saved (ties: the better
   worst-case accuracy). If none is feasible, the one with the best worst-case accuracy is shown,
   marked as not holding; a feasible one that saves no time in the worst case is shown as such.
   Only recommendations that hold and save time go into the study-spec snippet.

``evaluate`` scores this leave-one-dataset-out: recommend from the other datasets, then compare,
on the held-out dataset's own study, the recommendation's (smoothed) accuracy drop and time
saved with the best the study itself found: the most time saved by any of its configs within the
same limit, judged by the same smoothed estimates (so a noisy lucky trial does not count as the
best, and recommending exactly the study's best config gives no regret), or 0 (the baseline's)
if none held. The difference is the regret; it is negative where the recommendation broke the
limit to save more, so the per-strategy summary averages it over the folds where the user stayed
within the limit. A fold where no config held with time saved on the other datasets (``recommend`` leaves the
strategy out of its spec) is scored as what the user then runs, the baseline: no time saved,
within the limit, regret the held-out study's best.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import UserError
from .pareto import check_drop, within_drop
from .text import format_value

BANDWIDTH = 0.1  # kernel width, as a fraction of each hyperparameter's range over the trials
DEFAULT_DROP = 1.0  # percentage points of accuracy against the baseline median


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter, as it transfers."""
    name: str  # the strategy's hyperparameter
    column: str  # the transferable column (``warmup_fraction`` for ``warmup_epochs``)
    numeric: bool
    per_epoch: bool  # counted in epochs in the strategy: stored here as a fraction of training


@dataclass
class Recommendation:
    strategy: str
    model: str
    config: dict  # transferable units (column -> value)
    held: bool  # estimated within the drop limit on every dataset
    per_dataset: pd.DataFrame  # dataset, accuracy_delta, time_saved (estimates), trials
    dims: list = field(default_factory=list)
    fixed: dict = field(default_factory=dict)  # non-default settings every trial ran with, unsearched (eval_scale)

    @property
    def useful(self) -> bool:
        """Held the limit everywhere and saves time in the worst case."""
        return self.held and self.worst_saved > 0

    @property
    def worst_saved(self) -> float:
        return float(self.per_dataset["time_saved"].min())

    @property
    def worst_delta(self) -> float:
        return float(self.per_dataset["accuracy_delta"].min())

    def config_text(self) -> str:
        """``config`` as tables print it: ``warmup_fraction=0.6 scale_lr=true`` (a value that is
        not a fraction of training as the strategy takes it; categories are held as text)."""
        from .strategies import REGISTRY
        specs = REGISTRY[self.strategy].hparams if self.strategy in REGISTRY else {}
        parts = []
        for d in self.dims:
            v = self.config[d.column]
            if not d.per_epoch and d.name in specs:
                v = specs[d.name].check(d.name, v, self.strategy)
            parts.append(f"{d.column}={format_value(v)}")
        return " ".join(parts)

    def hparams(self, epochs: int) -> dict:
        """The strategy's own hyperparameters for a run of ``epochs`` epochs (a fraction of training
        becomes whole epochs, at least the hyperparameter's lower bound and at most the largest
        value that still acts in ``epochs`` epochs)."""
        from .strategies import REGISTRY
        specs = REGISTRY[self.strategy].hparams if self.strategy in REGISTRY else {}
        out = {}
        for d in self.dims:
            v = self.config[d.column]
            spec = specs.get(d.name)
            if d.per_epoch:
                low = int(spec.low) if spec is not None and spec.low is not None else 0
                v = max(min(int(round(v * epochs)), spec.largest_acting(epochs) if spec else epochs - 1), low)
            out[d.name] = _plain(spec.check(d.name, v, self.strategy)) if spec is not None else _plain(v)
        return {**self.fixed, **out}


def _plain(v):
    """numpy scalars to Python ones (for YAML and JSON)."""
    return v.item() if hasattr(v, "item") else v


def strategy_dims(strategy: str, trials: pd.DataFrame) -> list[Dim]:
    """The strategy's searched hyperparameters that its trials recorded."""
    from .strategies import REGISTRY
    if strategy in REGISTRY:
        specs = {n: h for n, h in REGISTRY[strategy].hparams.items() if h.search is not None}
    else:  # a strategy this install does not know (a plugin not imported here): every recorded hyperparameter
        from .results import recorded_hparams
        specs = {n: None for n in recorded_hparams(trials)}
    dims = []
    for name, spec in specs.items():
        if name not in trials.columns or trials[name].isna().all():
            continue
        per_epoch = spec is not None and spec.unit == "epochs"
        numeric = spec.kind in (int, float) if spec is not None else pd.api.types.is_numeric_dtype(trials[name])
        column = (name[: -len("_epochs")] if name.endswith("_epochs") else name) + "_fraction" if per_epoch else name
        dims.append(Dim(name, column, bool(numeric), per_epoch))
    return dims


def fixed_settings(strategy: str, trials: pd.DataFrame, dims: list[Dim]) -> dict:
    """The strategy's other hyperparameters that every one of its trials ran at one non-default
    value (a study's held setting, e.g. Depth Dropout's ``eval_scale``): the recommendation keeps them."""
    from .strategies import REGISTRY
    if strategy not in REGISTRY:
        return {}
    searched, out = {d.name for d in dims}, {}
    for name, hp in REGISTRY[strategy].hparams.items():
        if name in searched or name not in trials.columns or trials[name].isna().any():
            continue
        values = trials[name].unique()
        if len(values) != 1:
            continue
        try:
            v = hp.check(name, _plain(values[0]), strategy)
        except UserError:  # a value this version no longer takes: leave it to the strategy's default
            continue
        if v != hp.default:
            out[name] = v
    return out


def transferable(trials: pd.DataFrame, dims: list[Dim]) -> pd.DataFrame:
    """``trials`` with one column per dim in transferable units."""
    out = trials.copy()
    for d in dims:
        if d.per_epoch:
            out[d.column] = out[d.name].astype(float) / out["epochs"].astype(float)
        elif d.numeric:
            out[d.column] = out[d.name].astype(float)
        else:
            out[d.column] = out[d.name].astype(str)
    return out


def _observations(t: pd.DataFrame) -> pd.DataFrame:
    """ok trials as they are; diverged ones as a total loss; error trials left out."""
    ok = t[t["status"] == "ok"].dropna(subset=["accuracy_delta", "time_saved"])
    div = t[t["status"] == "diverged"].assign(accuracy_delta=-1.0, time_saved=0.0)
    return pd.concat([ok, div], ignore_index=True)


def _distance2(a: pd.DataFrame, b: pd.DataFrame, dims: list[Dim], spans: dict) -> np.ndarray:
    d2 = np.zeros((len(a), len(b)))
    for d in dims:
        x, y = a[d.column].to_numpy(), b[d.column].to_numpy()
        if d.numeric:
            diff = (x.astype(float)[:, None] - y.astype(float)[None, :]) / spans[d.column]
        else:
            diff = (x[:, None] != y[None, :]).astype(float)
        d2 += diff ** 2
    return d2


def estimate(configs: pd.DataFrame, obs: pd.DataFrame, dims: list[Dim], spans: dict,
             bandwidth: float = BANDWIDTH) -> pd.DataFrame:
    """Kernel-smoothed ``accuracy_delta`` and ``time_saved`` of each config from one dataset's trials.
    Weights are relative to the nearest trial, so a config far from every trial gets its nearest
    trial's values (not 0/0)."""
    d2 = _distance2(configs, obs, dims, spans)
    w = np.exp(-0.5 * (d2 - d2.min(axis=1, keepdims=True)) / bandwidth ** 2)
    total = w.sum(axis=1)
    return pd.DataFrame({"accuracy_delta": w @ obs["accuracy_delta"].to_numpy(float) / total,
                         "time_saved": w @ obs["time_saved"].to_numpy(float) / total,
                         "nearest": np.sqrt(d2.min(axis=1))})  # distance to the nearest trial, in ranges


def _spans(t: pd.DataFrame, dims: list[Dim]) -> dict:
    spans = {}
    for d in dims:
        if d.numeric:
            v = t[d.column].astype(float)
            spans[d.column] = float(v.max() - v.min()) or 1.0
    return spans


def recommend_strategy(trials: pd.DataFrame, strategy: str, max_accuracy_drop: float = DEFAULT_DROP,
                       bandwidth: float = BANDWIDTH) -> Recommendation | None:
    """The robust configuration of ``strategy`` over the datasets in ``trials`` (one model)."""
    t = trials[trials["strategy"] == strategy]
    dims = strategy_dims(strategy, t)
    t = transferable(t, dims)
    obs = _observations(t)
    if not len(obs) or not dims:
        return None
    cols = [d.column for d in dims]
    cands = obs[obs["status"] == "ok"][cols].drop_duplicates().reset_index(drop=True)
    if not len(cands):
        return None
    spans = _spans(obs, dims)
    datasets = sorted(obs["dataset"].unique())
    est = {ds: estimate(cands, obs[obs["dataset"] == ds], dims, spans, bandwidth) for ds in datasets}
    delta = np.column_stack([est[ds]["accuracy_delta"] for ds in datasets])
    saved = np.column_stack([est[ds]["time_saved"] for ds in datasets])
    feasible = within_drop(delta, max_accuracy_drop).all(axis=1)
    worst_saved, worst_delta = saved.min(axis=1), delta.min(axis=1)
    # lexsort: last key first; ties beyond both go to the first candidate in a stable order
    if feasible.any():
        order = np.lexsort((-worst_delta, -worst_saved, ~feasible))
    else:
        order = np.lexsort((-worst_saved, -worst_delta))
    i = int(order[0])
    per = pd.DataFrame({"dataset": datasets, "accuracy_delta": delta[i], "time_saved": saved[i],
                        "trials": [int((obs["dataset"] == ds).sum()) for ds in datasets]})
    model = str(t["model"].iloc[0]) if "model" in t.columns else ""
    config = {c: _plain(cands.loc[i, c]) for c in cols}
    return Recommendation(strategy, model, config, bool(feasible[i]), per, dims,
                          fixed_settings(strategy, t, dims))


def check_model(trials: pd.DataFrame, model: str) -> None:
    """A model with no trials in ``trials`` is the user's to mend (``--model``)."""
    models = sorted(trials["model"].dropna().unique())
    if model not in models:
        raise UserError("--model", f"no trials with model {model!r} (present: {', '.join(models) or 'none'})")


def recommend(trials: pd.DataFrame, model: str, exclude_dataset: str | None = None,
              max_accuracy_drop: float = DEFAULT_DROP, bandwidth: float = BANDWIDTH) -> list[Recommendation]:
    """One recommendation per strategy (baseline aside) for ``model``, from every dataset but ``exclude_dataset``."""
    check_drop(max_accuracy_drop)
    check_model(trials, model)
    t = trials[trials["model"] == model]
    if exclude_dataset is not None:
        t = t[t["dataset"] != exclude_dataset]
    if not len(t):
        raise UserError("--dataset", f"no trials of {model} on any dataset other than {exclude_dataset!r}")
    recs = []
    for strategy in sorted(set(t["strategy"]) - {"baseline"}):
        r = recommend_strategy(t, strategy, max_accuracy_drop, bandwidth)
        if r is not None:
            recs.append(r)
    return recs


def evaluate(trials: pd.DataFrame, max_accuracy_drop: float = DEFAULT_DROP, bandwidth: float = BANDWIDTH) -> pd.DataFrame:
    """Leave-one-dataset-out: one row per (model, held-out dataset, strategy)."""
    check_drop(max_accuracy_drop)  # before any fold: a bad limit is named even where no fold can run
    rows = []
    for model, tm in trials.groupby("model", sort=True):
        datasets = sorted(tm["dataset"].unique())
        if len(datasets) < 2:
            continue
        for held_out in datasets:
            for r in recommend(tm, model, held_out, max_accuracy_drop, bandwidth):
                own = transferable(tm[(tm["dataset"] == held_out) & (tm["strategy"] == r.strategy)], r.dims)
                obs = _observations(own)
                if not len(obs):
                    continue
                spans = _spans(transferable(tm[tm["strategy"] == r.strategy], r.dims), r.dims)
                cfg = pd.DataFrame([r.config])
                e = estimate(cfg, obs, r.dims, spans, bandwidth).iloc[0]
                # the held-out study's best, judged the same way: its own configs, smoothed
                cols = [d.column for d in r.dims]
                own_cfgs = obs[obs["status"] == "ok"][cols].drop_duplicates().reset_index(drop=True)
                e_own = estimate(own_cfgs, obs, r.dims, spans, bandwidth)
                inside = e_own[within_drop(e_own["accuracy_delta"], max_accuracy_drop)]
                best = max(float(inside["time_saved"].max()) if len(inside) else 0.0, 0.0)
                # what the user gets: the config where it was recommended, else the baseline
                delta, saved = (float(e["accuracy_delta"]), float(e["time_saved"])) if r.useful else (0.0, 0.0)
                rows.append(dict(model=model, held_out=held_out, strategy=r.strategy,
                                 recommended=r.useful, config=r.config_text() if r.useful else None,
                                 candidate=r.config_text(), accuracy_delta=delta, time_saved=saved,
                                 best_time_saved=best, regret=best - saved,
                                 held=bool(r.useful and within_drop(delta, max_accuracy_drop)),
                                 within_limit=bool(not r.useful or within_drop(delta, max_accuracy_drop))))
    # held: a recommendation was made and held; within_limit: what the user ran held (a refusal does)
    return pd.DataFrame(rows, columns=["model", "held_out", "strategy", "recommended", "config", "candidate",
                                       "accuracy_delta", "time_saved", "best_time_saved", "regret", "held",
                                       "within_limit"])


def summarize(ev: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: in how many folds a config was recommended and how often it held the drop
    limit, and the mean and largest regret over the folds where the user stayed within the limit:
    those where the recommendation held, and those where none was made (the baseline: regret is
    the held-out study's best). NaN if none. A fold that broke the limit is a failure, not a
    saving: its negative regret must not make the mean look better."""
    g = ev.groupby("strategy", sort=True)
    within = ev[ev["within_limit"]].groupby("strategy")["regret"]
    return pd.DataFrame({"held_out_datasets": g.size(), "recommended": g["recommended"].sum(),
                         "held": g["held"].sum(), "mean_regret": within.mean(),
                         "max_regret": within.max()}).reset_index()


