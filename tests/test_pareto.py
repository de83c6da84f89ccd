"""Pareto sort (property tests against brute force), fronts, load, and the ``ldtune pareto`` CLI."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ldtune.cli import main as cli
from ldtune.errors import UserError
from ldtune.pareto import fronts, load, nondominated, pareto


def brute_nondominated(acc, saved):
    """The definition, one pair at a time: j dominates i if >= on both and > on one; NaN never counts."""
    pts = list(zip(acc, saved))
    ok = [not (math.isnan(a) or math.isnan(s)) for a, s in pts]
    keep = []
    for i, (a, s) in enumerate(pts):
        keep.append(ok[i] and not any(ok[j] and b >= a and t >= s and (b > a or t > s) for j, (b, t) in enumerate(pts)))
    return np.array(keep, dtype=bool)


# few distinct values, so ties on one objective and exact duplicates are common; some NaN and inf
coord = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, -0.0, float("inf"), -float("inf")]),
                  st.floats(-1, 1, allow_nan=False), st.just(float("nan")))
points = st.lists(st.tuples(coord, coord), max_size=40)


@settings(max_examples=400, deadline=None)
@given(points)
def test_nondominated_matches_brute_force(pts):
    acc = np.array([a for a, _ in pts], dtype=float)
    saved = np.array([s for _, s in pts], dtype=float)
    assert nondominated(acc, saved).tolist() == brute_nondominated(acc, saved).tolist()


@settings(max_examples=200, deadline=None)
@given(points, st.randoms(use_true_random=False))
def test_nondominated_is_order_free_and_keeps_every_duplicate(pts, rnd):
    acc = np.array([a for a, _ in pts] * 2, dtype=float)  # every point twice
    saved = np.array([s for _, s in pts] * 2, dtype=float)
    keep = nondominated(acc, saved)
    n = len(pts)
    assert keep[:n].tolist() == keep[n:].tolist()  # duplicates share their fate
    perm = list(range(2 * n))
    rnd.shuffle(perm)
    assert nondominated(acc[perm], saved[perm]).tolist() == keep[perm].tolist()
    finite = ~(np.isnan(acc) | np.isnan(saved))
    if finite.any():  # a non-empty set always has a front, and the best accuracy is on it
        assert keep.any()
        best = np.nanmax(np.where(finite, acc, np.nan))
        assert keep[finite & (acc == best)].any()


def test_nondominated_small_cases():
    assert nondominated([], []).tolist() == []
    assert nondominated([0.9], [0.1]).tolist() == [True]
    # (0.9, 0.1) twice, one dominated point, one tie on accuracy with less saving, one trade-off point
    acc = [0.9, 0.9, 0.8, 0.9, 0.7]
    saved = [0.1, 0.1, 0.05, 0.0, 0.3]
    assert nondominated(acc, saved).tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError):
        nondominated([1.0, 2.0], [1.0])


def trial(tid, strategy, acc, saved, flops, study="quick", model="resnet20", dataset="fashion_mnist", status="ok",
          epochs=4, **hp):
    row = dict(study=study, trial_id=tid, strategy=strategy, model=model, dataset=dataset, epochs=epochs, seed=0,
               status=status, error=None if status == "ok" else "boom", test_accuracy=acc, train_time_s=10 * (1 - saved),
               train_flops=1e9 * (1 - flops), flops_saved=flops, time_saved=saved, speedup=1 / (1 - saved),
               accuracy_delta=acc - 0.85, device_name="cpu", warmup_epochs=None, p=None, s=None, kappa=None, t0=None,
               schedule=None, scale_lr=None)
    row.update(hp)
    return row


def write_study(root, name, rows):
    d = root / name
    d.mkdir(parents=True)
    df = pd.DataFrame(rows)
    df["warmup_epochs"] = df["warmup_epochs"].astype("Int64")
    df["s"] = df["s"].astype("Int64")
    df["scale_lr"] = df["scale_lr"].astype("boolean")
    df.to_parquet(d / "trials.parquet")
    epochs = pd.DataFrame([dict(trial_id=r["trial_id"], epoch=e, test_accuracy=r["test_accuracy"], train_loss=1.0 / (e + 1),
                                epoch_time_s=1.0, epoch_flops=1e8, trainable_params=1000, active_blocks=10)
                           for r in rows for e in range(2)])
    epochs.to_parquet(d / "epochs.parquet")
    return d


@pytest.fixture
def results(tmp_path):
    write_study(tmp_path, "quick", [
        trial("b0", "baseline", 0.85, 0.00, 0.0),
        trial("b1", "baseline", 0.86, -0.01, 0.0),
        trial("f1", "freezing", 0.84, 0.20, 0.25, warmup_epochs=1),
        trial("f2", "freezing", 0.85, 0.10, 0.12, warmup_epochs=2),
        trial("f3", "freezing", 0.83, 0.05, 0.06, warmup_epochs=3),  # dominated by f1 and f2
        # keep_first is not searched and at its default: not shown; resample is off its default: shown
        trial("l1", "layerdropback", 0.80, 0.30, 0.30, p=0.5, s=2, kappa=1.0, keep_first=4, resample="step"),
        trial("l2", "layerdropback", 0.99, 0.90, 0.90, status="error", p=0.9, s=1, kappa=2.0),  # failed: ignored
        trial("z1", "freezeout", 0.83, 0.15, 0.20, t0=0.5, schedule="cubic", scale_lr=True),
    ])
    write_study(tmp_path, "other", [  # same workload in a second study, plus another dataset
        trial("b0", "baseline", 0.85, 0.0, 0.0, study="other"),
        trial("z2", "freezeout", 0.84, 0.15, 0.20, study="other", t0=0.8, schedule="linear", scale_lr=False),
        trial("m0", "baseline", 0.97, 0.0, 0.0, study="other", dataset="digits"),
        trial("m1", "depth_dropout", 0.97, 0.05, 0.10, study="other", dataset="digits", p=0.25),
    ])
    return tmp_path


def run_cli(capsys, *argv):
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


GOLDEN_ALL = """\
other: resnet20 / digits, global front (1 trial)
strategy       hyperparameters  accuracy %  acc delta pp  time saved %  FLOPs saved %  trial
depth_dropout  p=0.25                97.00        +12.00           5.0           10.0  m1

other: resnet20 / fashion_mnist, global front (2 trials)
strategy   hyperparameters                        accuracy %  acc delta pp  time saved %  FLOPs saved %  trial
baseline   -                                           85.00         +0.00           0.0            0.0  b0
freezeout  t0=0.8 schedule=linear scale_lr=false       84.00         -1.00          15.0           20.0  z2

quick: resnet20 / fashion_mnist, global front (4 trials)
strategy       hyperparameters                  accuracy %  acc delta pp  time saved %  FLOPs saved %  trial
baseline       -                                     86.00         +1.00          -1.0            0.0  b1
freezing       warmup_epochs=2                       85.00         +0.00          10.0           12.0  f2
freezing       warmup_epochs=1                       84.00         -1.00          20.0           25.0  f1
layerdropback  p=0.5 s=2 kappa=1 resample=step       80.00         -5.00          30.0           30.0  l1
"""


def test_cli_table_golden(results, capsys):
    code, out, err = run_cli(capsys, "pareto", str(results))
    assert (code, err) == (0, "")
    assert out == GOLDEN_ALL


def test_cli_by_strategy_and_filters(results, capsys):
    code, out, _ = run_cli(capsys, "pareto", str(results), "--by", "strategy", "--dataset", "fashion_mnist",
                           "--max-accuracy-drop", "1", "--study", "quick")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "quick: resnet20 / fashion_mnist, front of each strategy (4 trials)"
    rows = [ln.split()[:2] for ln in lines[2:]]
    # baseline: b1 (0.86, -0.01) and b0 (0.85, 0.0) trade off; z1, f3 (2 pp down) and l1 (5 pp down)
    # are over the limit; study "other" is filtered out
    assert rows == [["baseline", "-"]] * 2 + [["freezing", "warmup_epochs=2"], ["freezing", "warmup_epochs=1"]]
    code, out, _ = run_cli(capsys, "pareto", str(results), "--strategy", "freezing", "--format", "csv")
    df = pd.read_csv(io.StringIO(out))
    assert code == 0 and set(df["trial_id"]) == {"f1", "f2"} and set(df["front"]) == {"all"}
    assert list(df.columns[:3]) == ["study", "model", "dataset"] and set(df["study"]) == {"quick"}
    code, out, _ = run_cli(capsys, "pareto", str(results), "--strategy", "freezing")
    assert code == 0 and out.splitlines()[0] == "quick: resnet20 / fashion_mnist, front of freezing (2 trials)"


def test_cli_keeps_studies_apart_each_against_its_own_baseline(tmp_path, capsys):
    """Two studies of one model and dataset on different subsets: their accuracies do not compare,
    and each one's time saved is against its own baseline, so each gets its own front."""
    write_study(tmp_path, "small", [trial("b0", "baseline", 0.70, 0.0, 0.0, study="small"),
                                    trial("f1", "freezing", 0.69, 0.20, 0.25, study="small", warmup_epochs=1)])
    write_study(tmp_path, "large", [trial("b0", "baseline", 0.90, 0.0, 0.0, study="large"),
                                    trial("f1", "freezing", 0.89, 0.10, 0.12, study="large", warmup_epochs=1)])
    code, out, err = run_cli(capsys, "pareto", str(tmp_path), "--format", "json")
    got = sorted((r["study"], r["trial_id"]) for r in json.loads(out))
    # pooled, small's baseline would fall off the front, beaten by large's on the very same terms
    assert (code, err) == (0, "") and got == [("large", "b0"), ("large", "f1"), ("small", "b0"), ("small", "f1")]
    pooled = pareto(load(tmp_path), by=("model", "dataset"))  # at the caller's word: one front across both
    with pytest.raises(UserError) as e:  # a limit given as text is refused, not a TypeError
        pareto(load(tmp_path), max_accuracy_drop="1")
    assert e.value.field == "--max-accuracy-drop"
    top = pooled[pooled["front"] == "all"]
    assert sorted(top["study"] + "/" + top["trial_id"]) == ["large/b0", "large/f1", "small/f1"]


def test_a_renamed_copy_of_a_study_is_a_study_of_its_own(tmp_path, capsys):
    """The folder names the study: a copy kept under a new name (its trials.parquet still saying
    "quick") is not merged into the original, and its epochs join its own trials only."""
    rows = [trial("b0", "baseline", 0.85, 0.0, 0.0), trial("f1", "freezing", 0.84, 0.20, 0.25, warmup_epochs=1)]
    write_study(tmp_path, "quick", rows)
    write_study(tmp_path, "quick-old", rows)
    trials, epochs = load(tmp_path), load(tmp_path, "epochs")
    assert sorted(set(trials["study"])) == sorted(set(epochs["study"])) == ["quick", "quick-old"]
    assert len(trials) == 4 and len(epochs) == 8
    assert set(load(tmp_path / "quick-old")["study"]) == {"quick-old"}
    from ldtune.plots import _epochs_with_trials
    assert len(_epochs_with_trials(tmp_path, trials)) == 8  # (study, trial_id) is a key: no row doubled
    code, out, _ = run_cli(capsys, "pareto", str(tmp_path))
    assert code == 0 and [ln for ln in out.splitlines() if "front" in ln] == [
        "quick: resnet20 / fashion_mnist, global front (2 trials)",
        "quick-old: resnet20 / fashion_mnist, global front (2 trials)"]


def test_a_study_read_from_its_own_directory_as_dot_keeps_its_name(tmp_path, capsys, monkeypatch):
    rows = [trial("b0", "baseline", 0.85, 0.0, 0.0), trial("f1", "freezing", 0.84, 0.20, 0.25, warmup_epochs=1)]
    monkeypatch.chdir(write_study(tmp_path, "quick", rows))
    assert set(load(".")["study"]) == {"quick"}
    (tmp_path / "latest").symlink_to(tmp_path / "quick")  # a link keeps its own name
    assert set(load(tmp_path / "latest")["study"]) == {"latest"}
    code, out, _ = run_cli(capsys, "pareto", ".", "--study", "quick", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("quick,")


def test_a_study_yaml_that_is_no_spec_is_skipped_with_a_warning(results, capsys):
    """The Parquet files answer a query; a damaged ``study.yaml`` beside them costs only what it held
    (its plugins; recommend's workload), and says so instead of failing with a traceback."""
    spec = results / "quick" / "study.yaml"
    for text in (b"- a\n", b"workload: resnet20\n", b"\xff\xfe\x00binary", b"plugins: 5\n"):
        spec.write_bytes(text)
        code, out, err = run_cli(capsys, "pareto", str(results))
        assert code == 0 and out == GOLDEN_ALL
        assert err == ("" if text != b"plugins: 5\n" else
                       f"ldtune: warning: {spec}: plugins is not a list of module names; skipped\n")
        code, out, err = run_cli(capsys, "recommend", str(results), "--model", "resnet20", "--dataset", "digits")
        assert code == 0 and "workload:" in out
        if text != b"plugins: 5\n":
            assert err.startswith(f"ldtune: warning: {spec}: ") and "; skipped" in err.splitlines()[0]


def test_ok_trials_with_no_baseline_on_their_device_are_named_not_dropped(results, tmp_path, capsys, monkeypatch):
    """time_saved is against the same device's baselines: a trial that ran on a node without the
    fused BatchNorm (``cpu:aten-bn``) has none. It is on no front, and every reader says so."""
    write_study(results, "mixed", [trial("b0", "baseline", 0.85, 0.0, 0.0, study="mixed"),
                                   trial("f1", "freezing", 0.86, float("nan"), 0.25, study="mixed", warmup_epochs=1,
                                         device_name="cpu:aten-bn", accuracy_delta=float("nan"))])
    note = ("mixed: resnet20 / fashion_mnist: 1 ok trial on cpu:aten-bn on no front: no baseline trial finished ok "
            "on that device, and time saved is measured against the same device's baseline")
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "mixed")
    assert (code, err) == (0, "") and out.endswith("\n\n" + note + "\n") and "freezing" not in out
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "mixed", "--format", "csv")
    assert code == 0 and err == f"ldtune: note: {note}\n"
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "quick")
    assert (code, err) == (0, "") and "on no front" not in out
    import matplotlib
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # titles as text in the SVG
    code, out, err = run_cli(capsys, "plot", str(results / "mixed"), "-o", str(tmp_path / "x.svg"))
    assert code == 0 and err == f"ldtune: warning: {note}\n"
    assert "accuracy vs time saved (1 trials, 1 with no baseline on their device and not drawn)" in (tmp_path / "x.svg").read_text()
    code, out, err = run_cli(capsys, "recommend", str(results), "--model", "resnet20", "--dataset", "digits")
    assert code == 0 and f"# left out: {note}" in out


def test_a_study_without_an_ok_baseline_says_so(results, tmp_path, capsys):
    """Time saved is measured against the study's ok baselines: with none, the study has no front,
    and every reader says why (not "no trial finished ok", which is false)."""
    write_study(results, "nobase", [trial("b0", "baseline", 0.85, float("nan"), 0.0, study="nobase", status="error"),
                                    trial("f1", "freezing", 0.84, float("nan"), 0.25, study="nobase", warmup_epochs=1)])
    note = ("nobase: resnet20 / fashion_mnist: no front: its 1 baseline trial did not finish ok, "
            "and time saved is measured against the baseline")
    code, out, err = run_cli(capsys, "pareto", str(results))
    assert (code, err) == (0, "") and out == GOLDEN_ALL + "\n" + note + "\n"
    code, out, err = run_cli(capsys, "pareto", str(results), "--format", "csv")
    assert code == 0 and err == f"ldtune: note: {note}\n" and "nobase" not in out
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "nobase")
    assert (code, out, err) == (0, note + "\n", "")
    code, out, err = run_cli(capsys, "plot", str(results / "nobase"), "-o", str(tmp_path / "x.png"))
    assert (code, out) == (2, "") and err == (f"ldtune: error: {results / 'nobase'}: no baseline trial finished ok, "
                                              "so no time saved is known: nothing to plot\n")
    assert not (tmp_path / "x.png").exists()
    code, out, err = run_cli(capsys, "plot", str(results), "-o", str(tmp_path / "y.png"))  # the others still draw
    assert (code, out) == (0, f"{tmp_path / 'y.png'}\n") and err == (
        "ldtune: warning: nobase: resnet20 / fashion_mnist: not drawn: no baseline trial finished ok, so no time "
        "saved is known\n")


def test_cli_json_reads_back(results, capsys):
    code, out, _ = run_cli(capsys, "pareto", str(results), "--format", "json", "--by", "strategy")
    recs = json.loads(out)
    assert code == 0
    got = {(r["study"], r["dataset"], r["front"], r["trial_id"]) for r in recs}
    assert got == {("other", "digits", "baseline", "m0"), ("other", "digits", "depth_dropout", "m1"),
                   ("other", "fashion_mnist", "baseline", "b0"), ("other", "fashion_mnist", "freezeout", "z2"),
                   ("quick", "fashion_mnist", "baseline", "b0"), ("quick", "fashion_mnist", "baseline", "b1"),
                   ("quick", "fashion_mnist", "freezing", "f1"), ("quick", "fashion_mnist", "freezing", "f2"),
                   ("quick", "fashion_mnist", "freezeout", "z1"), ("quick", "fashion_mnist", "layerdropback", "l1")}


def test_json_of_a_trial_with_an_infinite_speedup_reads_back(tmp_path, capsys):
    """A trial whose training time was recorded as 0 has speedup T_base/0 = inf: JSON has no
    infinity, so the cell is null (as the CSV's is 'inf'), not a traceback."""
    rows = [trial("b0", "baseline", 0.85, 0.0, 0.0, study="q"), trial("f1", "freezing", 0.84, 0.99, 0.25, study="q",
                                                                        warmup_epochs=1, speedup=float("inf"))]
    write_study(tmp_path, "q", rows)
    code, out, err = run_cli(capsys, "pareto", str(tmp_path), "--format", "json")
    assert (code, err) == (0, "")
    recs = {r["trial_id"]: r for r in json.loads(out)}
    assert recs["f1"]["speedup"] is None and recs["f1"]["time_saved"] == 0.99 and recs["b0"]["speedup"] == 1.0


def test_csv_and_json_carry_each_hyperparameter_at_full_precision(tmp_path, capsys):
    """The table rounds (t0=0.123); a machine reading the front must be able to rerun its trials."""
    write_study(tmp_path, "q", [trial("b0", "baseline", 0.87, 0.0, 0.0, study="q"),
                                trial("z1", "freezeout", 0.86, 0.2, 0.2, study="q", t0=0.123456789, schedule="cubic",
                                      scale_lr=True),
                                trial("f1", "freezing", 0.84, 0.3, 0.3, study="q", warmup_epochs=3),
                                trial("l1", "layerdropback", 0.83, 0.4, 0.4, study="q", p=0.5, s=2, kappa=2.0,
                                      keep_first=4)])
    code, out, _ = run_cli(capsys, "pareto", str(tmp_path))
    assert code == 0 and "t0=0.123 schedule=cubic scale_lr=true" in out
    code, out, _ = run_cli(capsys, "pareto", str(tmp_path), "--format", "json")
    recs = {r["trial_id"]: r for r in json.loads(out)}
    assert recs["z1"]["hparams"] == {"t0": 0.123456789, "schedule": "cubic", "scale_lr": True}
    assert recs["f1"]["hparams"] == {"warmup_epochs": 3} and recs["b0"]["hparams"] == {}
    # keep_first is not searched and at its default: the table leaves it out, the machine output does not
    assert recs["l1"]["hyperparameters"] == "p=0.5 s=2 kappa=2"
    assert recs["l1"]["hparams"] == {"p": 0.5, "s": 2, "kappa": 2.0, "keep_first": 4}
    code, out, _ = run_cli(capsys, "pareto", str(tmp_path), "--format", "csv")
    df = pd.read_csv(io.StringIO(out)).set_index("trial_id")
    assert set(df.columns[-8:]) == {"t0", "schedule", "scale_lr", "warmup_epochs", "p", "s", "kappa", "keep_first"}
    assert df.loc["z1", "t0"] == 0.123456789 and df.loc["f1", "warmup_epochs"] == 3 and pd.isna(df.loc["b0", "t0"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg11_bn"], "ldtune: error: --model: no trials with model 'vgg11_bn' (present: resnet20)\n"),
    (["--strategy", "nope"], "ldtune: error: --strategy: no trials with strategy 'nope'"),
    (["--dataset", "cifar10"], "ldtune: error: --dataset: no trials with dataset 'cifar10'"),
    (["--study", "quik"], "ldtune: error: --study: no trials with study 'quik' (present: other, quick)\n"),
    (["--max-accuracy-drop", "-1"], "ldtune: error: --max-accuracy-drop: must be"),
    (["--max-accuracy-drop", "nan"], "ldtune: error: --max-accuracy-drop: must be"),
])
def test_cli_bad_filters_exit_2(results, capsys, argv, message):
    code, out, err = run_cli(capsys, "pareto", str(results), *argv)
    assert (code, out) == (2, "") and err.startswith(message) and err.count("\n") == 1


def test_cli_bad_format_exit_2(results, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["pareto", str(results), "--format", "xml"])
    assert exc.value.code == 2 and "--format" in capsys.readouterr().err


def test_cli_missing_or_empty_dir_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pareto", str(tmp_path / "absent"))
    assert code == 2 and err == f"ldtune: error: {tmp_path / 'absent'}: no such directory\n"
    (tmp_path / "afile").write_text("")
    code, _, err = run_cli(capsys, "pareto", str(tmp_path / "afile"))
    assert code == 2 and err == f"ldtune: error: {tmp_path / 'afile'}: a file, not a results directory\n"
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "pareto", str(tmp_path / "empty"))
    assert code == 2 and err.startswith(f"ldtune: error: {tmp_path / 'empty'}: no study results")
    bad = tmp_path / "bad" / "s"
    bad.mkdir(parents=True)
    (bad / "trials.parquet").write_bytes(b"not parquet")
    code, _, err = run_cli(capsys, "pareto", str(tmp_path / "bad"))
    assert code == 2 and err.startswith(f"ldtune: error: {bad / 'trials.parquet'}: cannot read Parquet")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "bad", "empty", "s", "trials.parquet"]  # nothing written


@pytest.mark.parametrize("argv", [["pareto"], ["plot", "-o", "PNG"], ["recommend", "--model", "resnet20"]])
def test_every_reader_names_a_foreign_parquet_file(tmp_path, capsys, argv):
    """Parquet that is not an ldtune trials table: every command that reads results exits 2 naming it."""
    study = tmp_path / "foreign" / "s"
    study.mkdir(parents=True)
    pd.DataFrame({"a": [1, 2]}).to_parquet(study / "trials.parquet")
    argv = [str(tmp_path / "f.png") if a == "PNG" else a for a in argv]
    code, out, err = run_cli(capsys, argv[0], str(tmp_path / "foreign"), *argv[1:])
    assert (code, out) == (2, "")
    assert err == f"ldtune: error: {study / 'trials.parquet'}: missing column 'trial_id': not an ldtune trials table\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["foreign", "s", "trials.parquet"]


@pytest.mark.parametrize("argv", [["pareto"], ["pareto", "--format", "csv"], ["plot", "-o", "PNG"],
                                  ["recommend", "--model", "resnet20"]])
@pytest.mark.parametrize("column, values, why", [
    ("test_accuracy", ["0.85", "0.84"], "holds string values, not numbers"),
    ("time_saved", ["0.0", "0.2"], "holds string values, not numbers"),
    ("epochs", ["four", "four"], "holds string values, not numbers"),
    ("model", [3, 3], "holds int64 values, not text"),
    ("strategy", [None, "freezing"], "has 1 empty value"),
])
def test_every_reader_names_a_column_of_the_wrong_type(tmp_path, capsys, argv, column, values, why):
    """A trials table with the columns but not their kinds (text where numbers go, an empty
    strategy): every reader exits 2 naming the file and the column, not a traceback."""
    d = write_study(tmp_path / "r", "s", [trial("b0", "baseline", 0.85, 0.0, 0.0, study="s"),
                                          trial("f1", "freezing", 0.84, 0.2, 0.25, study="s", warmup_epochs=1)])
    df = pd.read_parquet(d / "trials.parquet")
    df[column] = pd.Series(values, dtype=object)
    df.to_parquet(d / "trials.parquet")
    argv = [str(tmp_path / "f.png") if a == "PNG" else a for a in argv]
    code, out, err = run_cli(capsys, argv[0], str(tmp_path / "r"), *argv[1:])
    assert (code, out) == (2, "")
    assert err == f"ldtune: error: {d / 'trials.parquet'}: column {column!r} {why}: not an ldtune trials table\n"
    assert not (tmp_path / "f.png").exists()


def test_load_and_fronts_api(results):
    trials = load(results)
    assert len(trials) == 12 and set(trials["study"]) == {"quick", "other"}
    epochs = load(results, "epochs")
    assert set(epochs["study"]) == {"quick", "other"} and len(epochs) == 24
    one = load(results / "quick")  # a study's own directory works too
    assert set(one["study"]) == {"quick"}
    pf = fronts(trials)  # per (study, model, dataset): the pareto.parquet contract
    quick = pf[(pf["study"] == "quick")]
    assert set(quick.loc[quick["front"] == "all", "trial_id"]) == {"b1", "f2", "f1", "l1"}
    assert set(quick.loc[quick["front"] == "freezeout", "trial_id"]) == {"z1"}
    assert "l2" not in set(pf["trial_id"])
    pooled = pareto(trials, by=("model", "dataset"))  # pooled across studies: z2 (other) beats z1 (quick)
    assert set(pooled.loc[(pooled["front"] == "freezeout"), "trial_id"]) == {"z2"}
    dup = pareto(pd.concat([trials, trials]), by=("model", "dataset"), dataset="digits")
    assert sorted(dup.loc[dup["front"] == "all", "trial_id"]) == ["m1", "m1"]  # m1 dominates m0 (same accuracy, saves more)
    # a grouping key the frame lacks is the caller's mistake, not one front over everything
    with pytest.raises(UserError, match=r"^by: no column 'nope' to group by"):
        pareto(trials, by=("study", "nope"))
    by_name = pareto(trials, by="study")  # one key, as a string
    assert by_name.equals(pareto(trials, by=("study",))) and set(by_name["study"]) == {"quick", "other"}


def test_studies_deeper_under_the_directory_are_found_and_kept_apart(tmp_path, capsys):
    """The demo writes results/demo-<time>/quickstart: `ldtune pareto results` sees every run, and
    two runs of one spec (same study name, same trial ids) stay apart in the tables and the plot."""
    rows = [trial("b0", "baseline", 0.85, 0.0, 0.0), trial("f1", "freezing", 0.84, 0.20, 0.25, warmup_epochs=1)]
    for run in ("demo-1", "demo-2"):
        write_study(tmp_path / "results" / run, "quick", rows)
    trials, epochs = load(tmp_path / "results"), load(tmp_path / "results", "epochs")
    assert sorted(set(trials["study"])) == sorted(set(epochs["study"])) == ["demo-1/quick", "demo-2/quick"]
    assert len(trials) == 4 and len(epochs) == 8
    code, out, err = run_cli(capsys, "pareto", str(tmp_path / "results"), "--format", "json")
    assert (code, err) == (0, "")
    assert sorted((r["study"], r["trial_id"]) for r in json.loads(out)) == [
        ("demo-1/quick", "b0"), ("demo-1/quick", "f1"), ("demo-2/quick", "b0"), ("demo-2/quick", "f1")]
    png = tmp_path / "fronts.png"
    code, _, err = run_cli(capsys, "plot", str(tmp_path / "results"), "-o", str(png))
    assert code == 0 and png.stat().st_size > 0


PLUGIN = '''
from ldtune.strategies import HParam, Strategy, register


@register
class Plug(Strategy):
    """Test-only plugin strategy: the baseline, with a hyperparameter to show."""
    name = "{name}"
    hparams = {{"x": HParam(float, 0.5, "unused: a value to print", low=0.0, high=1.0, search=(0.0, 1.0))}}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module on the path (as a study's ``plugins:`` needs it); unregistered afterwards."""
    import sys
    from ldtune.strategies import REGISTRY
    name = f"plug_{tmp_path.name[-12:].replace('-', '_')}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"ldtune_{name}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield name, f"ldtune_{name}"
    REGISTRY.pop(name, None)
    sys.modules.pop(f"ldtune_{name}", None)


def test_queries_import_the_plugins_a_study_names(results, plugin, capsys):
    """`ldtune pareto` on a study of a plugin strategy imports the plugin its study.yaml names, so
    the strategy's searched hyperparameter prints as a built-in one's does; a plugin that cannot
    be imported here is one warning, and the Parquet files still answer."""
    import yaml
    name, module = plugin
    d = write_study(results, "plugged", [trial("b0", "baseline", 0.85, 0.0, 0.0, study="plugged"),
                                         trial("x1", name, 0.84, 0.3, 0.3, study="plugged", x=0.25)])
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "plugged")
    assert (code, err) == (0, "") and f"{name}  x=0.25" in out  # not imported: every column it recorded
    from ldtune.strategies import REGISTRY
    assert name not in REGISTRY
    (d / "study.yaml").write_text(yaml.safe_dump({"name": "plugged", "plugins": [module]}))
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "plugged")
    assert (code, err) == (0, "") and f"{name}  x=0.25" in out and name in REGISTRY
    (d / "study.yaml").write_text(yaml.safe_dump({"name": "plugged", "plugins": ["ldtune_no_such_plugin"]}))
    code, out, err = run_cli(capsys, "pareto", str(results), "--study", "plugged")
    assert code == 0 and f"{name}  x=0.25" in out  # imported before, still registered
    assert err == (f"ldtune: warning: {d / 'study.yaml'}: plugins: cannot import 'ldtune_no_such_plugin': No module "
                   "named 'ldtune_no_such_plugin' (a plugin must be installed or on PYTHONPATH; for one in this "
                   "directory: PYTHONPATH=$PWD); its strategies show as their trials recorded them\n")


def test_a_plugin_registers_under_its_own_name_only(plugin):
    import importlib
    from ldtune.strategies import REGISTRY, Strategy, register
    name, module = plugin
    importlib.import_module(module)
    assert REGISTRY[name].__module__ == module and REGISTRY[name].hparams["x"].default == 0.5

    class Clash(Strategy):
        name = "freezeout"
    with pytest.raises(UserError, match="'freezeout' is a built-in strategy's"):
        register(Clash)
    assert REGISTRY["freezeout"].__module__ == "ldtune.strategies.freezeout"
    with pytest.raises(TypeError):
        register(object)


def test_a_plugin_hyperparameter_may_not_take_a_results_columns_name():
    from ldtune.commands.pareto import OUT_COLUMNS
    from ldtune.results import TRIAL_COLUMNS
    from ldtune.strategies import REGISTRY, RESERVED_HPARAMS, HParam, Strategy, register
    assert RESERVED_HPARAMS == set(TRIAL_COLUMNS) | set(OUT_COLUMNS)
    assert not any(set(cls.hparams) & RESERVED_HPARAMS for cls in REGISTRY.values())  # the built-ins' neither

    class Seeded(Strategy):
        name = "seeded_plugin"
        hparams = {"seed": HParam(int, 0, "a seed of its own (integer)")}
    with pytest.raises(UserError, match="hyperparameter 'seed' is the name of a results column"):
        register(Seeded)
    assert "seeded_plugin" not in REGISTRY


def test_a_plugin_strategy_may_not_be_named_all():
    from ldtune.strategies import REGISTRY, Strategy, register

    class Everything(Strategy):
        name = "all"
    with pytest.raises(UserError, match="'all' stands for every strategy"):  # a spec's key, the global front's label
        register(Everything)
    assert "all" not in REGISTRY
