"""``ldtune recommend``: robust, transferable defaults on a fixture whose right answer is known by construction."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from ldtune.cli import main as cli
from ldtune.pareto import load
from ldtune.recommend import evaluate, recommend, summarize

# dataset -> epochs: the same fraction of training is a different number of warm-up epochs on each
EPOCHS = {"fashion_mnist": 10, "mnist5k": 20, "digits": 5}


def freezing(ds, frac):
    """Time saved falls with the warm-up fraction. Too short a warm-up costs 3 points: below 0.4 of
    training on fashion_mnist and digits, below 0.6 on mnist5k. So 0.4 is best on those two, and only 0.6
    holds a 1-point limit everywhere: the robust answer is 0.6 (worst case: 20% saved)."""
    bad = frac < (0.6 if ds == "mnist5k" else 0.4) - 1e-9
    return (-0.03 if bad else -0.002), 0.5 * (1 - frac)


def freezeout(ds, t0, schedule):
    """cubic saves 10 points more than linear, but with t0 = 0.5 it costs 2 points on mnist5k: the robust
    answer is cubic with t0 = 0.7 (19% saved in the worst case; linear/0.5 saves 15%, cubic/0.5 breaks)."""
    bad = ds == "mnist5k" and schedule == "cubic" and t0 < 0.6
    return (-0.02 if bad else -0.001), 0.3 * (1 - t0) + (0.1 if schedule == "cubic" else 0.0)


def layerdropback(ds, p):
    """Saves 0.4 p everywhere, but p = 0.8 diverges on digits: the robust answer is p = 0.5."""
    return -0.001, 0.4 * p, "diverged" if (ds == "digits" and p == 0.8) else "ok"


def build(root, datasets=EPOCHS, ldb=layerdropback):
    rng = np.random.default_rng(1)
    for ds, epochs in datasets.items():
        rows = []

        def add(strategy, delta, saved, status="ok", **hp):
            acc = 0.9 + delta if status == "ok" else np.nan
            row = dict(study=f"transfer_{ds}", trial_id=f"{ds}_{len(rows)}", strategy=strategy, model="resnet20",
                       dataset=ds, epochs=epochs, seed=len(rows), status=status,
                       error=None if status == "ok" else "loss is nan", test_accuracy=acc,
                       train_time_s=10 * (1 - saved), train_flops=1e9, flops_saved=saved, time_saved=saved,
                       speedup=1 / (1 - saved), accuracy_delta=delta if status == "ok" else np.nan,
                       device_name="cpu", warmup_epochs=None, p=None, s=None, kappa=None, t0=None,
                       schedule=None, scale_lr=None)
            rows.append({**row, **hp})
        for _ in range(3):
            add("baseline", 0.001 * rng.standard_normal(), 0.01 * rng.standard_normal())
        for frac in (0.2, 0.4, 0.6, 0.8):
            delta, saved = freezing(ds, frac)
            add("freezing", delta + 0.0005 * rng.standard_normal(), saved + 0.002 * rng.standard_normal(),
                warmup_epochs=round(frac * epochs))
        for t0 in (0.5, 0.7, 0.9):
            for schedule in ("linear", "cubic"):
                delta, saved = freezeout(ds, t0, schedule)
                add("freezeout", delta, saved, t0=t0, schedule=schedule, scale_lr=True)
        for p in (0.2, 0.5, 0.8):
            delta, saved, status = ldb(ds, p)
            add("layerdropback", delta, saved, status=status, p=p, s=2, kappa=1.0)
        d = root / f"transfer_{ds}"
        d.mkdir(parents=True)
        df = pd.DataFrame(rows)
        for col in ("warmup_epochs", "s"):
            df[col] = df[col].astype("Int64")
        df["scale_lr"] = df["scale_lr"].astype("boolean")
        df.to_parquet(d / "trials.parquet")
    return root


@pytest.fixture
def results(tmp_path):
    return build(tmp_path / "results")


def test_recommend_picks_the_robust_config_in_transferable_units(results):
    recs = {r.strategy: r for r in recommend(load(results), "resnet20", max_accuracy_drop=1.0)}
    assert sorted(recs) == ["freezeout", "freezing", "layerdropback"]
    f = recs["freezing"]
    assert f.held and f.config == {"warmup_fraction": pytest.approx(0.6)}
    assert f.hparams(epochs=30) == {"warmup_epochs": 18} and f.hparams(epochs=4) == {"warmup_epochs": 2}
    assert f.worst_saved == pytest.approx(0.2, abs=0.01)
    assert list(f.per_dataset["dataset"]) == ["digits", "fashion_mnist", "mnist5k"]
    z = recs["freezeout"]
    assert z.held and (z.config["t0"], z.config["schedule"]) == (pytest.approx(0.7), "cubic")
    assert z.hparams(10) == {"t0": pytest.approx(0.7), "schedule": "cubic", "scale_lr": True}
    assert recs["layerdropback"].config["p"] == pytest.approx(0.5)  # 0.8 diverged on digits
    # a looser limit lets the faster configs in; a tighter one than anything achieved holds nowhere
    loose = {r.strategy: r for r in recommend(load(results), "resnet20", max_accuracy_drop=3.5)}
    assert loose["freezing"].config == {"warmup_fraction": pytest.approx(0.2)}
    tight = {r.strategy: r for r in recommend(load(results), "resnet20", max_accuracy_drop=0.05)}
    assert not tight["freezing"].held


@pytest.mark.parametrize("eval_scale, fixed", [([True] * 4, {"eval_scale": True}), ([True, False] * 2, {}),
                                               ([False] * 4, {})])
def test_a_setting_every_trial_held_is_kept(eval_scale, fixed):
    """Depth Dropout searched over p with eval_scale held true (as the quickstart does): the
    recommendation keeps eval_scale, or its confirmation would run another method. A setting the
    trials did not agree on, or the default, is left to the strategy."""
    from ldtune.recommend import recommend_strategy
    rows = [dict(trial_id=str(i), strategy="depth_dropout", model="resnet20", dataset=ds, epochs=4, status="ok",
                 test_accuracy=0.9, accuracy_delta=-0.001, time_saved=0.3 * p, p=p, eval_scale=e)
            for i, ((ds, p), e) in enumerate(zip([("digits", 0.2), ("digits", 0.5), ("mnist5k", 0.2), ("mnist5k", 0.5)],
                                                 eval_scale))]
    r = recommend_strategy(pd.DataFrame(rows), "depth_dropout")
    assert r.config == {"p": pytest.approx(0.5)} and r.fixed == fixed
    assert r.hparams(epochs=10) == {**fixed, "p": pytest.approx(0.5)}


def test_leave_one_dataset_out_regret(results):
    ev = evaluate(load(results), max_accuracy_drop=1.0).set_index(["held_out", "strategy"])
    assert len(ev) == 9
    # held out fashion_mnist: the others agree on 0.6; its own best within 1 point is 0.4 (30%): regret 10 points
    a = ev.loc[("fashion_mnist", "freezing")]
    assert a["config"] == "warmup_fraction=0.6" and a["held"]
    assert a["regret"] == pytest.approx(0.1, abs=0.01)
    # held out mnist5k: the others say 0.4, which costs 3 points on mnist5k: the limit does not hold
    b = ev.loc[("mnist5k", "freezing")]
    assert b["config"] == "warmup_fraction=0.4" and not b["held"]
    assert b["best_time_saved"] == pytest.approx(0.2, abs=0.01)
    s = summarize(ev.reset_index()).set_index("strategy")
    assert s.loc["freezing", "held"] == 2 and s.loc["freezing", "held_out_datasets"] == 3
    # the regret is averaged over the folds that held: mnist5k's fold saved more by breaking the limit
    assert b["regret"] < 0
    held = ev.xs("freezing", level="strategy").query("held")["regret"]
    assert s.loc["freezing", "mean_regret"] == pytest.approx(held.mean())
    assert s.loc["freezing", "max_regret"] == pytest.approx(held.max())
    # held out digits: the others say p = 0.8, which diverged on digits
    assert s.loc["layerdropback", "held"] == 2 and not ev.loc[("digits", "layerdropback")]["held"]


def test_cli_prints_a_valid_spec_snippet(results, tmp_path, capsys):
    code = cli(["recommend", str(results), "--model", "resnet20", "--dataset", "cifar10", "--epochs", "30"])
    out, err = capsys.readouterr()
    # this machine has no CIFAR-10; the spec may run where it is
    assert code == 0 and err.startswith("ldtune: warning: workload.data_root: cannot load cifar10") and err.count("\n") == 1
    snippet = yaml.safe_load(out)  # comments and all, the output is one YAML document
    strategies = snippet["strategies"]
    assert strategies["freezing"]["search"] == {"warmup_epochs": 18}
    assert strategies["freezeout"]["search"] == {"t0": 0.7, "schedule": "cubic", "scale_lr": True}
    assert snippet["workload"] == {"model": "resnet20", "dataset": "cifar10", "epochs": 30}
    assert "# freezing: warmup_fraction=0.6 -> warmup_epochs=18 at 30 epochs; held on every dataset" in out
    assert "# freezeout: t0=0.7 schedule=cubic scale_lr=true; held" in out  # true as YAML writes it, not True
    assert "for cifar10, from 3 datasets (digits, fashion_mnist, mnist5k)" in out
    (tmp_path / "rec.yaml").write_text(out)
    assert cli(["validate", str(tmp_path / "rec.yaml")]) == 0  # the study runner accepts it as it is
    assert capsys.readouterr().out.endswith("rec.yaml: ok\n")


def test_cli_evaluate(results, capsys):
    assert cli(["recommend", "--evaluate", str(results), "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert {r["strategy"] for r in recs["summary"]} == {"freezing", "freezeout", "layerdropback"}
    assert len(recs["folds"]) == 9
    # the CLI's JSON carries the figures the default limit (1 point) gives (test_leave_one_dataset_out_regret)
    summary = {r["strategy"]: r for r in recs["summary"]}
    assert (summary["freezing"]["held"], summary["freezing"]["held_out_datasets"]) == (2, 3)
    assert summary["layerdropback"]["held"] == 2
    fold = next(f for f in recs["folds"] if (f["held_out"], f["strategy"]) == ("fashion_mnist", "freezing"))
    assert fold["config"] == "warmup_fraction=0.6" and fold["regret"] == pytest.approx(0.1, abs=0.01)


def test_cli_evaluate_scores_a_fold_with_no_recommendation_as_the_baseline(results, capsys):
    """Where no config held on the other datasets, recommend leaves the strategy out and the user
    runs the baseline: the fold saves nothing, stays within the limit, and its regret is the
    held-out study's best (it is not scored as the config recommend refused)."""
    assert cli(["recommend", "--evaluate", str(results), "--max-accuracy-drop", "0.2", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    folds = {(f["held_out"], f["strategy"]): f for f in recs["folds"]}
    ev = evaluate(load(results), max_accuracy_drop=0.2).set_index(["held_out", "strategy"])
    refused = [k for k, f in folds.items() if not f["recommended"]]
    assert {s for _, s in refused} == {"freezing"} and len(refused) == 2  # only mnist5k's fold has a freezing config
    for k in refused:
        f = folds[k]
        assert f["config"] is None and f["candidate"] and (f["time_saved"], f["accuracy_delta"]) == (0.0, 0.0)
        assert f["best_time_saved"] > 0.15 and f["regret"] == pytest.approx(f["best_time_saved"])
        assert f["held"] is False and f["within_limit"] is True and ev.loc[k, "candidate"] == f["candidate"]
    summary = {r["strategy"]: r for r in recs["summary"]}["freezing"]
    assert (summary["recommended"], summary["held"]) == (1, 0)
    assert summary["mean_regret"] == pytest.approx(np.mean([folds[k]["regret"] for k in refused]))
    assert cli(["recommend", "--evaluate", str(results), "--max-accuracy-drop", "0.2"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if " freezing " in f" {ln} "]
    assert sum(ln[3:5] == ["none", "(baseline)"] and ln[-1] == "-" for ln in lines) == 2
    assert lines[-1][:4] == ["freezing", "3", "1", "0/1"]


def test_cli_evaluate_shows_no_regret_where_no_fold_stayed_within_the_limit(tmp_path, capsys):
    """Each dataset's recommendation breaks the limit on the other: no fold stayed within it, so
    there is no regret to average ("-"; null in JSON, since NaN is not JSON)."""
    def crossed(ds, p):  # on fashion_mnist p = 0.8 costs 3 points; on digits, 0.2 and 0.5 do
        bad = p == 0.8 if ds == "fashion_mnist" else p < 0.6
        return (-0.03 if bad else -0.001), 0.4 * p, "ok"
    results = build(tmp_path / "results", {"fashion_mnist": 10, "digits": 5}, ldb=crossed)
    assert cli(["recommend", "--evaluate", str(results), "--format", "json"]) == 0

    def refuse(name):
        raise ValueError(f"{name} in the JSON")
    recs = json.loads(capsys.readouterr().out, parse_constant=refuse)
    ldb = [f for f in recs["folds"] if f["strategy"] == "layerdropback"]
    assert [(f["recommended"], f["held"]) for f in ldb] == [(True, False), (True, False)]
    summary = {r["strategy"]: r for r in recs["summary"]}["layerdropback"]
    assert (summary["recommended"], summary["held"], summary["mean_regret"], summary["max_regret"]) == (2, 0, None, None)
    assert cli(["recommend", "--evaluate", str(results)]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("per strategy:"):].splitlines()[1:]
    assert summary[0].split() == ["strategy", "held-out", "datasets", "recommended", "limit", "held", "mean", "regret",
                                  "within", "limit", "max", "regret", "within", "limit"]
    assert next(ln for ln in summary if ln.startswith("layerdropback")).split()[1:] == ["2", "2", "0/2", "-", "-"]


def test_cli_a_recommendation_says_the_printed_dataset_is_a_placeholder(results, capsys):
    assert cli(["recommend", str(results), "--model", "resnet20"]) == 0
    out = capsys.readouterr().out
    dataset = yaml.safe_load(out)["workload"]["dataset"]
    assert f"for a new dataset (the spec below names {dataset}: set workload.dataset to yours)" in out


def test_cli_confirm_runs_a_short_study_on_the_new_dataset(results, tmp_path, capsys):
    # the workload of a source study (its study.yaml), made tiny; the new dataset is digits, so
    # digits' own study is left out of the recommendation
    (results / "transfer_fashion_mnist" / "study.yaml").write_text(yaml.safe_dump({"workload": {
        "model": "resnet20", "width": 4, "dataset": "fashion_mnist", "subset": 256, "epochs": 10, "batch_size": 64},
        "test_subset": 200}))
    out_dir = tmp_path / "confirm"
    argv = ["recommend", str(results), "--model", "resnet20", "--dataset", "digits", "--strategy", "freezing",
            "--epochs", "2", "--repeats", "1", "--confirm", "--output", str(out_dir)]
    code = cli(argv)
    out = capsys.readouterr().out
    study = out_dir / "recommend_resnet20_digits"
    trials = pd.read_parquet(study / "trials.parquet")
    assert sorted(trials["strategy"]) == ["baseline", "freezing"]
    f = trials[trials["strategy"] == "freezing"].iloc[0]
    # 0.6 of 2 epochs rounds to 1, which would select after the last epoch: the largest that acts is 0
    assert (f["dataset"], f["epochs"], f["warmup_epochs"]) == ("digits", 2, 0)
    assert list(trials["status"]) == ["ok", "ok"], trials["error"].tolist()  # both trained; the verdict is on accuracy
    # the strategy's own per-epoch columns land in epochs.parquet (read here by pyarrow itself)
    import pyarrow.parquet as pq
    epochs = pq.read_table(study / "epochs.parquet").to_pylist()
    mine = [e for e in epochs if e["trial_id"] == f["trial_id"]]
    assert [e["epoch"] for e in mine] == [0, 1]
    assert all(len(e["layer_scores"]) == 10 and e["drop_selected"] >= e["dropped_blocks"] for e in mine)
    assert mine[1]["dropped_blocks"] == mine[0]["drop_selected"]
    assert all(e["layer_scores"] is None for e in epochs if e["trial_id"] != f["trial_id"])  # the baseline has none
    held = f["accuracy_delta"] >= -0.01 - 1e-9 and f["time_saved"] > 0  # within the limit, and it saved time
    assert code == (0 if held else 1)
    assert f"# freezing          {'held' if held else 'did NOT hold'}" in out
    assert f"# workload: as in {results / 'transfer_fashion_mnist' / 'study.yaml'}, with this run's dataset and epochs\n" in out
    assert yaml.safe_load(out)["workload"] == {"model": "resnet20", "width": 4, "dataset": "digits", "subset": 256,
                                               "epochs": 2, "batch_size": 64}
    assert yaml.safe_load(out)["test_subset"] == 200
    # again into the same directory: refused before anything is printed, the first study untouched
    before = (study / "trials.parquet").read_bytes()
    assert cli(argv) == 2
    assert capsys.readouterr() == ("", f"ldtune: error: --output: {study} already holds a confirmation study; "
                                       "choose another --output, or remove it\n")
    assert (study / "trials.parquet").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg11_bn"], "ldtune: error: --model: no trials with model 'vgg11_bn'"),
    ([], "ldtune: error: --model: required"),
    (["--model", "resnet20", "--max-accuracy-drop", "-2"], "ldtune: error: --max-accuracy-drop: "),
    (["--model", "resnet20", "--epochs", "0"], "ldtune: error: --epochs: "),
    (["--model", "resnet20", "--dataset", "svhn"], "ldtune: error: --dataset: unknown dataset 'svhn'"),
    (["--model", "resnet20", "--strategy", "nope"], "ldtune: error: --strategy: no recommendation for 'nope'"),
    (["--model", "resnet20", "--confirm"], "ldtune: error: --dataset: --confirm needs"),
    (["--model", "resnet20", "--format", "json"], "ldtune: error: --format: applies to --evaluate"),
    # --evaluate holds out each dataset in turn: a flag of a recommendation is refused, not ignored
    (["--evaluate", "--dataset", "digits"], "ldtune: error: --dataset: does not apply to --evaluate"),
    (["--evaluate", "--confirm"], "ldtune: error: --confirm: does not apply to --evaluate"),
    (["--evaluate", "--trials", "5"], "ldtune: error: --trials: does not apply to --evaluate"),
    (["--evaluate", "--model", "nope"], "ldtune: error: --model: no trials with model 'nope' (present: resnet20)\n"),
    (["--model", "resnet20", "--dataset", "digits", "--subset", "0"], "ldtune: error: --subset: must be"),
    # the spec's data is loaded before it is printed
    (["--model", "resnet20", "--dataset", "digits", "--subset", "2000"],
     "ldtune: error: --subset: must be in 1..1438 for digits, got 2000\n"),
])
def test_cli_bad_input_exit_2(results, capsys, argv, message):
    assert cli(["recommend", str(results), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1


def test_a_bad_limit_is_named_before_anything_else(tmp_path, capsys):
    """From Python, text or a bool is no limit; in --evaluate a bad limit is named even where a
    single dataset means no fold could run."""
    from ldtune.errors import UserError
    results = build(tmp_path / "results", {"digits": 5})
    trials = load(results)
    for bad in ("1", True, float("inf"), -1):
        with pytest.raises(UserError) as e:
            evaluate(trials, max_accuracy_drop=bad)
        assert e.value.field == "--max-accuracy-drop"
    assert cli(["recommend", "--evaluate", str(results), "--max-accuracy-drop", "-1"]) == 2
    assert capsys.readouterr().err == ("ldtune: error: --max-accuracy-drop: must be a number of percentage points "
                                       ">= 0, got -1.0\n")


def test_a_recommendation_from_baselines_only_says_so(results, capsys):
    for d in results.iterdir():
        t = pd.read_parquet(d / "trials.parquet")
        t[t["strategy"] == "baseline"].to_parquet(d / "trials.parquet")
    assert cli(["recommend", str(results), "--model", "resnet20", "--dataset", "digits"]) == 0
    out, err = capsys.readouterr()
    assert err == ("ldtune: warning: no strategy but the baseline has trials of resnet20 on the datasets it learns "
                   "from; the spec below runs the baseline only\n")
    assert yaml.safe_load(out)["strategies"] == {}


def test_estimate_smooths_neighbours_and_falls_back_to_the_nearest_trial():
    from ldtune.recommend import Dim, estimate
    dims = [Dim("p", "p", True, False), Dim("schedule", "schedule", False, False)]
    obs = pd.DataFrame({"p": [0.2, 0.3, 0.9], "schedule": ["a", "a", "a"],
                        "accuracy_delta": [-0.01, -0.03, -0.5], "time_saved": [0.1, 0.3, 0.9]})
    cfg = pd.DataFrame({"p": [0.25, 0.25, 5.0, 0.2], "schedule": ["a", "b", "a", "a"]})
    e = estimate(cfg, obs, dims, {"p": 1.0}, bandwidth=0.1)
    assert e["time_saved"][0] == pytest.approx(0.2, abs=1e-3)  # halfway: the mean of its two neighbours
    assert e["accuracy_delta"][0] == pytest.approx(-0.02, abs=1e-3)
    assert e["time_saved"][1] == pytest.approx(e["time_saved"][0])  # every trial is as far in category
    assert e["time_saved"][2] == pytest.approx(0.9)  # far beyond every trial: the nearest one
    assert 0.1 < e["time_saved"][3] < 0.2  # on a trial, pulled a little toward its neighbour


def test_cli_leaves_out_what_did_not_hold(results, capsys):
    # nothing stays within 0.05 points everywhere: every strategy is explained, none is in the spec
    assert cli(["recommend", str(results), "--model", "resnet20", "--max-accuracy-drop", "0.05"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["strategies"] == {}
    assert out.count("NOT within the limit everywhere") == 3
    assert cli(["recommend", str(results), "--model", "resnet20", "--dataset", "digits", "--max-accuracy-drop",
                "0.05", "--confirm"]) == 2
    assert capsys.readouterr() == ("", "ldtune: error: --confirm: no recommendation held the accuracy-drop limit: "
                                       "nothing to confirm\n")


def test_cli_says_why_a_strategy_whose_trials_all_failed_has_no_recommendation(results, tmp_path, capsys):
    trials = pd.read_parquet(results / "transfer_digits" / "trials.parquet")
    failed = trials[trials["strategy"] == "freezing"].assign(strategy="stochastic_depth", status="error",
                                                             error="boom", accuracy_delta=np.nan)
    only = tmp_path / "only_failed" / "s"
    only.mkdir(parents=True)
    pd.concat([trials[trials["strategy"] == "baseline"], failed]).to_parquet(only / "trials.parquet")
    assert cli(["recommend", str(only.parent), "--model", "resnet20"]) == 0
    out, err = capsys.readouterr()
    assert err == "ldtune: warning: no strategy's trials here finished ok with time saved; the spec below runs the baseline only\n"
    assert yaml.safe_load(out)["strategies"] == {}
    n = len(failed)
    assert f"# stochastic_depth: no recommendation; none of its {n} trials here finished ok (last error: boom)" in out
    # trials that finished ok on a device with no baseline have no time saved: said so, not "none finished ok"
    elsewhere = trials[trials["strategy"] == "freezing"].assign(device_name="cpu:aten-bn", time_saved=np.nan,
                                                                accuracy_delta=np.nan)
    pd.concat([trials[trials["strategy"] == "baseline"], elsewhere]).to_parquet(only / "trials.parquet")
    assert cli(["recommend", str(only.parent), "--model", "resnet20"]) == 0
    out, err = capsys.readouterr()
    assert (f"# freezing: no recommendation; its {len(elsewhere)} ok trials here have no time saved: no baseline "
            "finished ok on their device (see left out)") in out
    assert f"# left out: s: resnet20 / digits: {len(elsewhere)} ok trials on cpu:aten-bn on no front" in out


def test_cli_leaves_out_a_study_without_an_ok_baseline_and_says_so(results, capsys):
    """Its trials have no time saved (it is measured against the baseline): the study is no
    evidence, its dataset is not one the recommendation held on, and its spec is no source."""
    d = results / "transfer_digits"
    trials = pd.read_parquet(d / "trials.parquet")
    base = trials["strategy"] == "baseline"
    trials.loc[base, ["status", "error", "test_accuracy"]] = ["error", "boom", np.nan]
    trials[["time_saved", "speedup", "accuracy_delta"]] = np.nan
    trials.to_parquet(d / "trials.parquet")
    (d / "study.yaml").write_text(yaml.safe_dump({"workload": {"model": "resnet20", "dataset": "digits", "lr": 0.3}}))
    assert cli(["recommend", str(results), "--model", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "from 2 datasets (fashion_mnist, mnist5k)" in out and "#   digits" not in out
    assert "# left out: study transfer_digits (digits): no baseline trial finished ok\n" in out
    assert "as in" not in out and yaml.safe_load(out)["workload"]["dataset"] != "digits"
    assert cli(["recommend", "--evaluate", str(results), "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["left_out"] == ["study transfer_digits (digits): no baseline trial finished ok"]
    assert {f["held_out"] for f in ev["folds"]} == {"fashion_mnist", "mnist5k"}
    for other in ("transfer_fashion_mnist", "transfer_mnist5k"):  # no study with a baseline: nothing to go on
        t = pd.read_parquet(results / other / "trials.parquet")
        t.loc[t["strategy"] == "baseline", "status"] = "error"
        t.to_parquet(results / other / "trials.parquet")
    assert cli(["recommend", str(results), "--model", "resnet20"]) == 2
    assert capsys.readouterr() == ("", f"ldtune: error: {results}: no study here has a baseline trial that finished ok; "
                                       "time saved and accuracy are measured against it\n")


def test_the_source_workload_is_found_as_deep_as_the_studies(tmp_path):
    from ldtune.commands.recommend import source_spec
    deep = tmp_path / "results" / "demo-1" / "quickstart"
    deep.mkdir(parents=True)
    (deep / "study.yaml").write_text(yaml.safe_dump({"workload": {"model": "resnet20", "lr": 0.1}, "test_subset": 500}))
    assert source_spec(tmp_path / "results", "resnet20") == {
        "workload": {"model": "resnet20", "lr": 0.1}, "test_subset": 500, "path": deep / "study.yaml"}
    assert source_spec(tmp_path / "results", "vgg11_bn") == {"workload": {"model": "vgg11_bn"}}
    # a study on the dataset the spec is for comes first: its subset and lr were chosen for that data
    own = tmp_path / "results" / "z_digits"
    own.mkdir()
    (own / "study.yaml").write_text(yaml.safe_dump({"workload": {"model": "resnet20", "dataset": "digits", "lr": 0.3}}))
    assert source_spec(tmp_path / "results", "resnet20")["path"] == deep / "study.yaml"
    assert source_spec(tmp_path / "results", "resnet20", dataset="digits")["path"] == own / "study.yaml"
    assert source_spec(tmp_path / "results", "resnet20", dataset="cifar10")["path"] == deep / "study.yaml"


def test_cli_header_names_the_datasets_of_the_strategies_asked_for(results, capsys):
    """With --strategy, the header's datasets are those the chosen strategies' evidence comes from."""
    d = results / "transfer_digits"
    trials = pd.read_parquet(d / "trials.parquet")
    trials[trials["strategy"] != "layerdropback"].to_parquet(d / "trials.parquet")
    assert cli(["recommend", str(results), "--model", "resnet20", "--strategy", "layerdropback"]) == 0
    out = capsys.readouterr().out
    assert "from 2 datasets (fashion_mnist, mnist5k)" in out and "#   digits" not in out
    assert cli(["recommend", str(results), "--model", "resnet20", "--strategy", "freezing"]) == 0
    assert "from 3 datasets (digits, fashion_mnist, mnist5k)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--model", "vgg11_bn"], ["--evaluate", "--model", "vgg11_bn"]])
def test_a_model_whose_studies_have_no_ok_baseline_is_named_as_such(results, capsys, argv):
    """vgg11_bn has trials here, but its study's baselines all failed: the error says that, not
    that there are no vgg11_bn trials (which is false and sends the user hunting for a typo)."""
    t = pd.read_parquet(results / "transfer_digits" / "trials.parquet").assign(model="vgg11_bn", study="vgg_digits")
    t.loc[t["strategy"] == "baseline", ["status", "error", "test_accuracy"]] = ["error", "boom", np.nan]
    t[["time_saved", "speedup", "accuracy_delta"]] = np.nan
    (results / "vgg_digits").mkdir()
    t.to_parquet(results / "vgg_digits" / "trials.parquet")
    assert cli(["recommend", str(results), *argv]) == 2
    assert capsys.readouterr() == ("", "ldtune: error: --model: no study of vgg11_bn here has a baseline trial that "
                                       "finished ok; time saved and accuracy are measured against it\n")


def test_cli_strategy_asked_for_whose_trials_all_failed_is_explained_not_refused(results, capsys):
    """--strategy S, where S ran here but no trial of it finished ok: the output says why S has no
    recommendation, as it does without --strategy, instead of an error listing the other strategies
    as the ones with trials (S has trials). A strategy with no trials at all is still refused."""
    d = results / "transfer_digits"
    trials = pd.read_parquet(d / "trials.parquet")
    failed = trials[trials["strategy"] == "freezing"].assign(strategy="stochastic_depth", status="error", error="boom",
                                                             accuracy_delta=np.nan)
    failed["trial_id"] = failed["trial_id"] + "_sd"
    pd.concat([trials, failed]).to_parquet(d / "trials.parquet")
    assert cli(["recommend", str(results), "--model", "resnet20", "--strategy", "stochastic_depth"]) == 0
    out, err = capsys.readouterr()
    assert err == "ldtune: warning: no strategy's trials here finished ok with time saved; the spec below runs the baseline only\n"
    assert f"# stochastic_depth: no recommendation; none of its {len(failed)} trials here finished ok (last error: boom)" in out
    assert yaml.safe_load(out)["strategies"] == {}
    assert cli(["recommend", str(results), "--model", "resnet20", "--strategy", "depth_dropout"]) == 2
    assert capsys.readouterr() == ("", "ldtune: error: --strategy: no recommendation for 'depth_dropout' (strategies "
                                       "with trials: freezeout, freezing, layerdropback, stochastic_depth)\n")


def test_a_new_dataset_whose_other_studies_have_no_ok_baseline_is_named_as_such(tmp_path, capsys):
    """--dataset digits, where the only other study (mnist5k) has trials but no ok baseline: the
    error says so, not that there are no trials on any other dataset (there are)."""
    results = build(tmp_path / "results", {"digits": 5, "mnist5k": 20})
    t = pd.read_parquet(results / "transfer_mnist5k" / "trials.parquet")
    t.loc[t["strategy"] == "baseline", "status"] = "error"
    t.to_parquet(results / "transfer_mnist5k" / "trials.parquet")
    assert cli(["recommend", str(results), "--model", "resnet20", "--dataset", "digits"]) == 2
    assert capsys.readouterr() == ("", "ldtune: error: --dataset: no study of resnet20 on a dataset other than "
                                       "'digits' has a baseline trial that finished ok; time saved and accuracy "
                                       "are measured against it\n")
