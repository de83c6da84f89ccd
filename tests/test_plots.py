"""``ldtune plot``: figures from real Parquet files written by the test; PNGs read back."""
from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ldtune.cli import main as cli
from ldtune.plots import palette

STRATEGIES = ["baseline", "freezing", "learn_drop", "layerdropback"]


def write_results(root, dataset="digits", blocks=4, epochs=5):
    """One study: 3 trials per strategy, with epochs (and layer scores for the score-based ones)."""
    rng = np.random.default_rng(0)
    trials, recs = [], []
    for k, strategy in enumerate(STRATEGIES):
        for i in range(3):
            tid = f"{strategy}_{i}"
            saved = 0.0 if strategy == "baseline" else 0.1 * k + 0.05 * i
            trials.append(dict(study="s", trial_id=tid, strategy=strategy, model="resnet20", dataset=dataset,
                               epochs=epochs, seed=i, status="ok", error=None,
                               test_accuracy=0.9 - 0.02 * k * i + 0.003 * rng.standard_normal(),
                               train_time_s=10 * (1 - saved), train_flops=1e9, flops_saved=saved,
                               time_saved=saved, speedup=1 / (1 - saved), accuracy_delta=0.0, device_name="cpu",
                               warmup_epochs=i + 1 if "drop" in strategy or strategy == "freezing" else None))
            for e in range(epochs):
                frozen = min(max(e - i - 1, 0), blocks - 1) if strategy in ("freezing", "learn_drop") else 0
                rec = dict(trial_id=tid, epoch=e, test_accuracy=0.5 + 0.08 * e, train_loss=1 / (e + 1),
                           epoch_time_s=1.0 - 0.1 * frozen, epoch_flops=1e8, trainable_params=100,
                           active_blocks=blocks - frozen, layer_scores=None, dropped_blocks=None)
                if strategy in ("freezing", "learn_drop"):
                    rec["layer_scores"] = [0.2 + 0.1 * b + 0.05 * e for b in range(blocks)]
                    rec["dropped_blocks"] = frozen
                recs.append(rec)
    d = root / "s"
    d.mkdir(parents=True)
    pd.DataFrame(trials).to_parquet(d / "trials.parquet")
    pd.DataFrame(recs).to_parquet(d / "epochs.parquet")
    return root


def share_of_colour(img: np.ndarray, rgb) -> float:
    return float((np.abs(img[..., :3] - np.asarray(rgb)).max(axis=-1) < 0.03).mean())


def test_plot_writes_both_figures_with_a_colour_per_strategy(tmp_path, capsys):
    results = write_results(tmp_path / "results")
    out = tmp_path / "fig.png"
    assert cli(["plot", str(results), "-o", str(out)]) == 0
    scores = tmp_path / "fig_layer_scores.png"
    assert capsys.readouterr().out.split() == [str(out), str(scores)]
    img = mpimg.imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 1000
    for strategy, rgb in palette(STRATEGIES).items():  # every strategy's colour is drawn
        assert share_of_colour(img, rgb) > 1e-4, strategy
    simg = mpimg.imread(scores)
    assert simg.shape[1] > 300
    viridis, axes = plt.get_cmap("viridis"), simg[:, : int(0.8 * simg.shape[1])]  # left of the colour bar
    for b in range(4):  # one curve per block, coloured by depth (far more pixels than its legend entry)
        assert share_of_colour(axes, viridis(b / 3)[:3]) > 1e-3, b


def test_plot_without_layer_scores_writes_one_file_and_removes_an_earlier_ones(tmp_path, capsys):
    """Plotting results without layer scores to where an earlier plot left FILE_layer_scores.png
    removes that file, saying so: beside the new figure it would pass for these results' scores."""
    results = write_results(tmp_path / "results")
    assert cli(["plot", str(results), "-o", str(tmp_path / "f.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f_layer_scores.png", "results"]
    capsys.readouterr()
    e = pd.read_parquet(results / "s" / "epochs.parquet").drop(columns=["layer_scores", "dropped_blocks"])
    e.to_parquet(results / "s" / "epochs.parquet")
    assert cli(["plot", str(results), "-o", str(tmp_path / "f.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "results"]
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "f.png")]
    assert err == (f"ldtune: warning: removed {tmp_path / 'f_layer_scores.png'}, an earlier plot's: these results "
                   "have no layer scores\n")


@pytest.mark.parametrize("target, message", [
    ("f.txt", "-o: "), ("nodir/f.png", "-o: "),
])
def test_plot_bad_output_exit_2(tmp_path, capsys, target, message):
    results = write_results(tmp_path / "results")
    assert cli(["plot", str(results), "-o", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldtune: error: " + message) and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_plot_that_cannot_write_a_figure_writes_none_and_keeps_the_old_ones(tmp_path, capsys):
    """-o onto a directory, or a layer-scores path that is one: exit 2 naming it, and the figures an
    earlier run wrote stay as they were (nothing half-written, no temporary file left)."""
    results = write_results(tmp_path / "results")
    (tmp_path / "old.png").mkdir()
    assert cli(["plot", str(results), "-o", str(tmp_path / "old.png")]) == 2
    assert capsys.readouterr().err == f"ldtune: error: -o: {tmp_path / 'old.png'}: a directory, not a file\n"
    (tmp_path / "fig.png").write_bytes(b"earlier figure")
    (tmp_path / "fig_layer_scores.png").mkdir()
    assert cli(["plot", str(results), "-o", str(tmp_path / "fig.png")]) == 2
    assert capsys.readouterr().err == f"ldtune: error: -o: {tmp_path / 'fig_layer_scores.png'}: a directory, not a file\n"
    assert (tmp_path / "fig.png").read_bytes() == b"earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig_layer_scores.png", "old.png", "results"]


def test_plot_names_a_damaged_epochs_file(tmp_path, capsys):
    """A truncated epochs.parquet is exit 2 naming it, not a figure whose epoch panels say "no data"."""
    results = write_results(tmp_path / "results")
    path = results / "s" / "epochs.parquet"
    path.write_bytes(path.read_bytes()[:300])
    assert cli(["plot", str(results), "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: error: {path}: cannot read Parquet") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_plot_missing_dir_exit_2(tmp_path, capsys):
    assert cli(["plot", str(tmp_path / "none"), "-o", str(tmp_path / "f.png")]) == 2
    assert capsys.readouterr().err == f"ldtune: error: {tmp_path / 'none'}: no such directory\n"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("")
    assert cli(["plot", str(tmp_path / "none"), "-o", str(tmp_path / "afile" / "f.png")]) == 2
    assert capsys.readouterr().err == f"ldtune: error: -o: {tmp_path / 'afile'}: a file, not a directory\n"
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_plot_titles_count_the_trials_not_drawn(tmp_path, capsys, monkeypatch):
    """A trial that failed has no point; the panel's title says how many there were."""
    import matplotlib
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # titles as text in the SVG
    results = write_results(tmp_path / "results")
    t = pd.read_parquet(results / "s" / "trials.parquet")
    t.loc[t["trial_id"] == "freezing_2", ["status", "error", "test_accuracy"]] = ["error", "boom", np.nan]
    t.to_parquet(results / "s" / "trials.parquet")
    out = tmp_path / "f.svg"
    assert cli(["plot", str(results), "-o", str(out)]) == 0
    assert "s: resnet20 / digits: accuracy vs time saved (11 trials, 1 not ok and not drawn)" in out.read_text()
