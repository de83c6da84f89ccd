"""Figures of study results (seaborn on matplotlib's Agg backend: no display needed).

``plot(DIR, out)`` writes ``out``: one row of three panels per (study, model, dataset):

1. test accuracy vs time saved, one colour per strategy, every ``ok`` trial as a dot, each
   strategy's Pareto front as a step line, the global front as a black dashed step with its
   points ringed, and the baseline spread (min to max accuracy of the baseline trials) as a grey
   band; the axis stops ``ZOOM_PP`` points below the worst baseline, and a note counts the
   trials below it;
2. training time per epoch (mean and standard deviation over the strategy's trials);
3. active (trained) blocks per epoch (the mean, and the range over the strategy's trials).

Learn&Drop's layer scores P_l per epoch (the paper's Fig. 1/3) go to a second file next to
``out``, ``<stem>_layer_scores.<suffix>``: for each (study, model, dataset), the ``learn_drop`` trial that
saved the most time (or, without learn_drop trials, any trial whose epochs carry ``layer_scores``,
e.g. ``freezing``), one curve per block coloured by depth, dotted lines where blocks left training.
Where the results have none, no such file is written, and one an earlier plot left there is removed.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .errors import UserError  # noqa: E402
from .pareto import find_studies, load, nondominated, unbaselined_devices  # noqa: E402

GROUP = ["study", "model", "dataset"]  # one row of panels each: time saved is against the study's baseline
ZOOM_PP = 15  # the trade-off panel shows accuracy down to this many points below the worst baseline


def palette(strategies) -> dict:
    """One fixed colour per strategy name (sorted), shared by every panel."""
    names = sorted(set(strategies))
    return dict(zip(names, sns.color_palette("tab10", max(len(names), 1))))


def _front_steps(ax, part: pd.DataFrame, rings: bool = False, **kw) -> None:
    f = part[nondominated(part["test_accuracy"], part["time_saved"])].sort_values("time_saved")
    if len(f):
        # the best accuracy reachable while saving at least x is the next front point's: steps 'pre'
        ax.step(100 * f["time_saved"], 100 * f["test_accuracy"], where="pre", **kw)
        if rings:  # a front of one point draws no step: ring the points
            ax.scatter(100 * f["time_saved"], 100 * f["test_accuracy"], s=90, facecolors="none",
                       edgecolors=kw.get("color", "black"), linewidths=1.0, zorder=3)


def _tradeoff_panel(ax, g: pd.DataFrame, colors: dict) -> None:
    base = g[g["strategy"] == "baseline"]
    if len(base):
        lo, hi = 100 * base["test_accuracy"].min(), 100 * base["test_accuracy"].max()
        ax.axhspan(lo - 0.02, hi + 0.02, color="0.85", zorder=0, label=f"baseline spread ({len(base)} trials)")
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)
    sns.scatterplot(data=g.assign(acc=100 * g["test_accuracy"], saved=100 * g["time_saved"]), x="saved", y="acc",
                    hue="strategy", palette=colors, ax=ax, s=30, edgecolor="white", linewidth=0.4)
    for name, part in g.groupby("strategy"):
        _front_steps(ax, part, color=colors[name], lw=1.4)
    _front_steps(ax, g, rings=True, color="black", lw=1.0, ls="--", label="global front (ringed)")
    if len(base):  # zoom on the useful range: trials far below the baseline are counted, not drawn
        floor = lo - ZOOM_PP
        below = int((100 * g["test_accuracy"] < floor).sum())
        if below:
            ax.set_ylim(floor, max(100 * g["test_accuracy"].max(), hi) + 1)
            ax.text(0.99, 0.01, f"{below} trial(s) below {floor:.1f}% not shown", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("time saved vs baseline (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="best")  # where it hides the fewest points


def _epoch_panel(ax, e: pd.DataFrame, y: str, label: str, colors: dict, errorbar="sd") -> None:
    if e is None or not len(e) or y not in e.columns:
        ax.text(0.5, 0.5, f"no {y} in epochs.parquet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    sns.lineplot(data=e.assign(epoch1=e["epoch"] + 1), x="epoch1", y=y, hue="strategy", palette=colors,
                 errorbar=errorbar, ax=ax, marker="o", markersize=3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)


def _epochs_with_trials(directory, trials: pd.DataFrame) -> pd.DataFrame | None:
    """The epoch rows of ``trials``, or None where no study saved any; a damaged epochs.parquet is
    the user's to mend (exit 2, naming it), not a figure with empty panels."""
    if not any((d / "epochs.parquet").is_file() for d in find_studies(Path(directory))):
        return None
    epochs = load(directory, "epochs")
    cols = ["study", "trial_id", "strategy", "model", "dataset", "status", "time_saved"]
    return epochs.drop(columns=[c for c in cols[2:] if c in epochs.columns]).merge(trials[cols], on=["study", "trial_id"])


def plot(directory, out) -> list[Path]:
    """Write the figures for the studies under ``directory``; returns the paths written."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError("-o", f"{out}: the file name must end in .png, .pdf or .svg")
    if not out.parent.is_dir():
        raise UserError("-o", f"{out.parent}: {'a file, not a directory' if out.parent.exists() else 'no such directory'}")
    if out.is_dir():
        raise UserError("-o", f"{out}: a directory, not a file")
    trials = load(directory)
    ok = trials[trials["status"] == "ok"]
    if not len(ok):
        raise UserError(str(directory), "no trial finished ok: nothing to plot")
    measured = ok.dropna(subset=["test_accuracy", "time_saved"])
    if not len(measured):  # time saved is against the study's ok baselines
        raise UserError(str(directory), "no baseline trial finished ok, so no time saved is known: nothing to plot")
    drawn = set(measured.groupby(GROUP).groups)
    for key in sorted(set(ok.groupby(GROUP).groups) - drawn):
        warnings.warn(f"{key[0]}: {key[1]} / {key[2]}: not drawn: no baseline trial finished ok, so no time saved "
                      "is known", stacklevel=2)
    for note in unbaselined_devices(trials):
        warnings.warn(note, stacklevel=2)
    ok = measured
    epochs = _epochs_with_trials(directory, trials)
    if epochs is not None:
        epochs = epochs[(epochs["status"] == "ok") & epochs["time_saved"].notna()]
    colors = palette(ok["strategy"])
    groups = list(ok.groupby(GROUP, sort=True))
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(groups), 3, figsize=(16, 4.6 * len(groups)), squeeze=False)
    for row, ((study, model, dataset), g) in zip(axes, groups):
        _tradeoff_panel(row[0], g, colors)
        ran = trials[(trials["study"] == study) & (trials["model"] == model) & (trials["dataset"] == dataset)]
        not_ok = int((ran["status"] != "ok").sum())
        unmeasured = len(ran) - len(g) - not_ok
        failed = (f", {not_ok} not ok" if not_ok else "") + (f", {unmeasured} with no baseline on their device" if unmeasured else "")
        failed += " and not drawn" if failed else ""
        row[0].set_title(f"{study}: {model} / {dataset}: accuracy vs time saved ({len(g)} trials{failed})")
        e = None if epochs is None else epochs[(epochs["study"] == study) & (epochs["model"] == model)
                                               & (epochs["dataset"] == dataset)]
        _epoch_panel(row[1], e, "epoch_time_s", "training time per epoch (s)", colors)
        row[1].set_title("time per epoch (mean ± sd over trials)")
        # a count: its band is the range over trials (mean ± sd would pass the net's block count)
        _epoch_panel(row[2], e, "active_blocks", "active (trained) blocks", colors, errorbar=("pi", 100))
        row[2].set_title("active blocks per epoch (mean, range over trials)")
    fig.tight_layout()
    figures = [(out, fig)]
    scores = out.with_name(f"{out.stem}_layer_scores{out.suffix}")
    if epochs is not None and (sfig := _layer_scores_figure(epochs)) is not None:
        figures.append((scores, sfig))
    _save_all(figures)
    if len(figures) == 1 and scores.is_file():  # beside the new figure it would pass for these results' scores
        scores.unlink()
        warnings.warn(f"removed {scores}, an earlier plot's: these results have no layer scores", stacklevel=2)
    return [path for path, _ in figures]


def _save_all(figures) -> None:
    """Each figure to a temporary file beside its path, then every one into place: a figure that
    cannot be written leaves no new file and every earlier one as it was."""
    temps = []
    try:
        for path, fig in figures:
            if path.is_dir():
                raise UserError("-o", f"{path}: a directory, not a file")
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temps.append(tmp)
            try:
                fig.savefig(tmp, dpi=110, format=path.suffix[1:].lower())
            except OSError as e:
                raise UserError("-o", f"{path.parent}: cannot write ({e.strerror or e})") from None
        for (path, _), tmp in zip(figures, temps):
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise UserError("-o", f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for _, fig in figures:
            plt.close(fig)


def _layer_scores_figure(epochs: pd.DataFrame):
    """The layer-scores figure, or None where no trial recorded scores."""
    if "layer_scores" not in epochs.columns:
        return None
    has = epochs[epochs["layer_scores"].map(lambda v: v is not None and len(v) > 0 if not isinstance(v, float) else False)]
    if not len(has):
        return None
    picks = []
    for (_, model, dataset), g in has.groupby(GROUP, sort=True):
        pref = g[g["strategy"] == "learn_drop"] if (g["strategy"] == "learn_drop").any() else g
        best = pref.sort_values(["time_saved", "trial_id"], ascending=[False, True]).iloc[0]
        picks.append((model, dataset, g[(g["study"] == best["study"]) & (g["trial_id"] == best["trial_id"])]))
    fig, axes = plt.subplots(1, len(picks), figsize=(6.5 * len(picks), 4.4), squeeze=False)
    for ax, (model, dataset, t) in zip(axes[0], picks):
        t = t.sort_values("epoch")
        scores = np.array([np.asarray(v, dtype=float) for v in t["layer_scores"]])
        x = t["epoch"].to_numpy() + 1
        cmap = plt.get_cmap("viridis")
        n = scores.shape[1]
        for b in range(n):
            ax.plot(x, scores[:, b], color=cmap(b / max(n - 1, 1)), lw=1.3, label=f"block {b}" if n <= 12 else None)
        if "dropped_blocks" in t.columns:
            d = t["dropped_blocks"].to_numpy()
            for ep, prev, cur in zip(x[1:], d[:-1], d[1:]):
                if cur != prev:
                    ax.axvline(ep, color="0.4", ls=":", lw=1)
                    ax.annotate(f"{int(cur)} out", (ep, 1), xycoords=("data", "axes fraction"), xytext=(-3, -3),
                                textcoords="offset points", ha="right", va="top", fontsize=7, color="0.3")
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n - 1))
        fig.colorbar(sm, ax=ax, label="block (input to output)")
        first = t.iloc[0]
        ax.set_title(f"{first['strategy']} layer scores P_l: {model} / {dataset}\ntrial {first['trial_id']} "
                     f"({first['study']}), time saved {100 * first['time_saved']:.1f}%", fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("P_l = 1 - |sum of grads| / sum of |grads| (Eq. 2)")
        ax.legend(fontsize=6, ncol=2, loc="best") if n <= 12 else None
    fig.tight_layout()
    return fig
