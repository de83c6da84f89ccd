"""Studies end to end on a real local Ray instance (2 CPUs): Parquet read back by pandas and DuckDB,
Pareto fronts, a raising and a diverging trial, resume after a killed driver, refusal to overwrite."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray import tune
from ray.tune.search import Searcher

from ldtune import cli, results, runner, study as study_mod
from ldtune.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONTRACT_TRIALS = ["study", "trial_id", "strategy", "model", "dataset", "epochs", "seed", "status", "error",
                   "test_accuracy", "train_time_s", "train_flops", "flops_saved", "time_saved", "speedup",
                   "accuracy_delta", "device_name"]
CONTRACT_HPARAMS = ["warmup_epochs", "p", "s", "kappa", "t0", "schedule", "scale_lr"]
CONTRACT_EPOCHS = ["trial_id", "epoch", "test_accuracy", "train_loss", "epoch_time_s", "epoch_flops",
                   "trainable_params", "active_blocks"]

# A test-only strategy, imported by the study's `plugins` on the driver and in every Ray worker:
# trial seed 1 raises, trial seed 2 diverges (a huge LR), others train like the baseline.
PLUGIN = '''
from ldtune.strategies import EpochPlan, HParam, Strategy, register


@register
class Boom(Strategy):
    """Test-only: seed % 3 == 1 raises in epoch_start, seed % 3 == 2 diverges."""
    name = "boom"
    hparams = {"x": HParam(float, 0.5, "unused: something for Optuna to search", low=0.0, high=1.0, search=(0.0, 1.0))}

    def epoch_start(self, epoch):
        if self.ctx.seed % 3 == 1:
            raise RuntimeError("boom: injected failure")
        return EpochPlan(lr_scale=1e30 if self.ctx.seed % 3 == 2 else 1.0)

'''

SPEC = {
    "name": "tiny",
    "seed": 0,
    "workload": {"model": "resnet20", "width": 4, "dataset": "digits", "subset": 256, "epochs": 1,
                 "batch_size": 64},
    "baseline": {"repeats": 2},
    "strategies": {"freezeout": {"trials": 2, "search": {"t0": [0.5, 0.9]}}, "boom": {"trials": 3}},
    "plugins": ["ldtune_test_boom"],
}
EXPECTED_IDS = {"baseline-000", "baseline-001", "freezeout-000", "freezeout-001", "boom-000", "boom-001", "boom-002"}


class ParquetProbe(tune.Callback):
    """Reads trials.parquet back as each trial completes (after ldtune's own callback has written it)."""

    def __init__(self, path: Path):
        self.path, self.seen, self.errors = path, [], []

    def on_trial_complete(self, iteration, trials, trial, **info):
        df = pd.read_parquet(self.path).set_index("trial_id")
        self.seen.append((trial.config["trial_id"], df["status"].to_dict()))
        self.errors.append(" ".join(df["error"].dropna()))


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One local Ray instance for the module; the plugin's directory is on every worker's path."""
    plugin_dir = tmp_path_factory.mktemp("plugin")
    (plugin_dir / "ldtune_test_boom.py").write_text(PLUGIN)
    sys.path.insert(0, str(plugin_dir))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(plugin_dir)] + ([old] if old else []))
    # address="local": a new instance even where a `ray start` cluster runs on this machine
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    sys.path.remove(str(plugin_dir))
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def finished(ray_local, spec_file, tmp_path_factory):
    """The tiny study, run once without interruption."""
    out = tmp_path_factory.mktemp("results")
    outcome = runner.run_study(study_mod.load(spec_file), out)
    return out / "tiny", outcome


def test_study_end_to_end_parquet_contract(finished):
    study_dir, outcome = finished
    assert not outcome.interrupted
    trials = pd.read_parquet(study_dir / "trials.parquet")
    # the contract's columns, in order, then one column per hyperparameter of the registered strategies
    assert list(trials.columns[:len(CONTRACT_TRIALS)]) == CONTRACT_TRIALS
    assert set(CONTRACT_HPARAMS) <= set(trials.columns[len(CONTRACT_TRIALS):])
    assert list(trials.columns) == [f.name for f in results.trials_schema()]
    assert set(trials["trial_id"]) == EXPECTED_IDS and trials["trial_id"].is_unique
    by_id = trials.set_index("trial_id")
    assert (by_id.loc[["baseline-000", "baseline-001", "freezeout-000", "freezeout-001", "boom-000"], "status"]
            == "ok").all()
    # the trial that raised is a row with its error; the study went on around it
    assert by_id.loc["boom-001", "status"] == "error"
    assert "boom: injected failure" in by_id.loc["boom-001", "error"]
    assert by_id.loc["boom-002", "status"] == "diverged"
    # a diverged trial stopped early: its time and FLOPs are as measured, but they are no saving
    assert by_id.loc["boom-002", ["flops_saved", "time_saved", "speedup"]].isna().all()
    assert by_id.loc["boom-002", "train_time_s"] > 0 and by_id.loc["boom-002", "train_flops"] > 0
    assert list(trials.sort_values("trial_id")["seed"]) == [0, 1, 0, 1, 2, 0, 1]  # boom, baseline, freezeout
    # freezeout's searched t0 stays in the spec's range; its held hyperparameters are filled, and so are
    # the defaults the spec left out (cache); other strategies' columns are null
    fo = by_id.loc[["freezeout-000", "freezeout-001"]]
    assert fo["t0"].between(0.5, 0.9).all() and fo["schedule"].isin(["linear", "cubic"]).all()
    assert fo["cache"].tolist() == [False, False]
    assert by_id.loc[["baseline-000", "boom-000"], "t0"].isna().all()
    assert fo[["p", "warmup_epochs", "rule"]].isna().all().all()

    # DuckDB reads the same rows and columns
    con = duckdb.connect()
    d = con.execute(f"select * from read_parquet('{study_dir / 'trials.parquet'}')").df()
    assert list(d.columns) == list(trials.columns) and len(d) == len(trials)
    n_err = con.execute(f"select count(*) from '{study_dir / 'trials.parquet'}' where status = 'error'").fetchone()[0]
    assert n_err == 1

    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    assert list(epochs.columns[:len(CONTRACT_EPOCHS)]) == CONTRACT_EPOCHS
    assert "cache_tier" in epochs.columns  # extra epoch-record keys are kept as columns
    assert set(epochs["study"]) == {"tiny"}  # epochs of several studies read together stay apart
    ok_ids = set(trials.loc[trials["status"] != "error", "trial_id"])
    assert set(epochs["trial_id"]) == ok_ids and not epochs.duplicated(["trial_id", "epoch"]).any()
    de = con.execute(f"select trial_id, count(*) n from '{study_dir / 'epochs.parquet'}' group by trial_id").df()
    assert (de["n"] == 1).all()

    # derived columns against the median ok baseline on the same device, computed here independently
    base = trials[(trials["strategy"] == "baseline") & (trials["status"] == "ok")]
    t_base, a_base = base["train_time_s"].median(), base["test_accuracy"].median()
    ok = trials[trials["status"] == "ok"]
    assert np.allclose(ok["time_saved"], 1 - ok["train_time_s"] / t_base)
    assert np.allclose(ok["speedup"], t_base / ok["train_time_s"])
    assert np.allclose(ok["accuracy_delta"], ok["test_accuracy"] - a_base)

    # the resolved config beside the results, and the per-strategy Optuna study in SQLite
    saved = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert saved["strategies"]["freezeout"]["search"]["t0"] == [0.5, 0.9] and saved["resources"]["cpu"] == 2
    st = optuna.load_study(study_name="freezeout", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    assert [t.state for t in st.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.params["t0"] for t in st.trials) == sorted(fo["t0"])


def test_pareto_rows_are_exactly_the_nondominated_ok_trials(finished):
    study_dir, _ = finished
    trials = pd.read_parquet(study_dir / "trials.parquet")
    front = duckdb.sql(f"select * from '{study_dir / 'pareto.parquet'}'").df()
    assert list(front.columns) == list(trials.columns) + ["front"]
    ok = trials[trials["status"] == "ok"]

    def nondominated(df):
        a, s = df["test_accuracy"].to_numpy(), df["time_saved"].to_numpy()
        keep = [not any((a >= a[i]) & (s >= s[i]) & ((a > a[i]) | (s > s[i]))) for i in range(len(df))]
        return set(df.loc[keep, "trial_id"])

    assert set(front["front"]) == {"all", *ok["strategy"]}
    for name, group in [("all", ok), *ok.groupby("strategy")]:
        assert set(front.loc[front["front"] == name, "trial_id"]) == nondominated(group), name


def test_rerun_without_resume_refuses_and_keeps_results(finished, spec_file, capsys):
    study_dir, _ = finished
    before = {f: (study_dir / f).read_bytes() for f in results.FILES}
    assert cli.main(["run", str(spec_file), "--output", str(study_dir.parent)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldtune: error: --output:") and "--resume" in err and len(err.splitlines()) == 1
    assert {f: (study_dir / f).read_bytes() for f in results.FILES} == before
    # --resume with a changed workload is refused too, naming the field
    changed = spec_file.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump({**SPEC, "workload": {**SPEC["workload"], "epochs": 2}}))
    assert cli.main(["run", str(changed), "--output", str(study_dir.parent), "--resume"]) == 2
    assert capsys.readouterr().err == (f"ldtune: error: workload.epochs: 2 here, {SPEC['workload']['epochs']} in the "
                                       f"study being resumed ({study_dir / 'study.yaml'}); resume with the same spec\n")
    assert {f: (study_dir / f).read_bytes() for f in results.FILES} == before


@pytest.mark.parametrize("started", [False, True])
def test_ctrl_c_advises_resume_only_once_the_study_has_started(started, ray_local, spec_file, tmp_path, capsys, monkeypatch):
    def interrupted(study, output, **_):  # Ctrl-C while Ray starts, or once the study wrote its config
        if started:
            (Path(output) / study.name).mkdir(parents=True, exist_ok=True)
            (Path(output) / study.name / runner.CONFIG_FILE).write_text("name: tiny\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_study", interrupted)
    assert cli.main(["run", str(spec_file), "--output", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("--resume` runs the rest" in err) == started
    assert ("nothing was written" in err) == (not started)
    # on a cluster, the command it advises uses the same cluster (without --address it would start a local Ray)
    assert cli.main(["run", str(spec_file), "--output", str(tmp_path), "--address", ray_local]) == 130
    assert (f"--output {tmp_path} --address {ray_local} --resume` runs the rest" in capsys.readouterr().err) == started


def test_ctrl_c_after_the_last_trial_says_nothing_is_left(finished, tmp_path, capsys, monkeypatch):
    """Ctrl-C as the driver shuts down, with every trial saved: no advice to run "the rest"."""
    import shutil
    study_dir, _ = finished
    shutil.copytree(study_dir, tmp_path / study_dir.name)

    def interrupted(*_, **__):  # the files are as the study left them
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_study", interrupted)
    # the spec without its failing strategy: every trial of its budget finished
    spec = tmp_path / "ok.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "strategies": {k: v for k, v in SPEC["strategies"].items() if k != "boom"}}))
    assert cli.main(["run", str(spec), "--output", str(tmp_path)]) == 130
    assert capsys.readouterr().err == (f"interrupted as the study ended; every trial is finished and saved in "
                                       f"{tmp_path / study_dir.name}, nothing is left to run\n")
    # with it, its failed trials are what --resume would run
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(SPEC))
    assert cli.main(["run", str(full), "--output", str(tmp_path)]) == 130
    assert "--resume` runs the rest" in capsys.readouterr().err


def test_resume_where_no_study_ran_exits_2_and_starts_nothing(ray_local, spec_file, tmp_path, capsys):
    out = tmp_path / "typo"  # a mistyped --output must not run the whole study
    assert cli.main(["run", str(spec_file), "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: error: --resume: {out / SPEC['name']} holds no study") and err.count("\n") == 1
    assert not out.exists()


def test_resume_of_a_finished_study_starts_no_ray_and_keeps_its_rows(ray_local, tmp_path):
    spec = tmp_path / "done.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "name": "done", "baseline": {"repeats": 1}, "plugins": [],
                                    "strategies": {"freezeout": {"trials": 1, "search": {"t0": [0.5, 0.9]}}}}))
    runner.run_study(study_mod.load(spec), tmp_path)
    study_dir = tmp_path / "done"
    before = {f: pd.read_parquet(study_dir / f) for f in results.FILES}
    # an address nobody listens at: a resume that connected to Ray would exit 2 on it
    proc = subprocess.run([sys.executable, "-m", "ldtune", "run", str(spec), "--output", str(tmp_path), "--resume",
                           "--address", "127.0.0.1:1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"study done: nothing left to run (2 trials done before); results in {study_dir}\n")
    assert "Ray" not in proc.stdout
    for f, frame in before.items():  # the same rows (a column of a strategy not registered there is gone)
        after = pd.read_parquet(study_dir / f)
        pd.testing.assert_frame_equal(after, frame[after.columns])
        assert frame.drop(columns=after.columns).isna().all().all()
    assert yaml.safe_load((study_dir / "study.yaml").read_text())["resources"] == {"cpu": 2, "gpu": 0}


def test_resume_of_a_damaged_study_exits_2_naming_the_file_before_ray(finished, spec_file, tmp_path, capsys):
    """A truncated Parquet file or a study.yaml that no longer parses: one line naming it, nothing rewritten."""
    import shutil
    for name, damage in [("trials.parquet", lambda b: b[:len(b) // 2]), ("epochs.parquet", lambda b: b"garbage"),
                         ("study.yaml", lambda b: b"{{{")]:
        study_dir = tmp_path / name / "tiny"
        shutil.copytree(finished[0], study_dir)
        (study_dir / name).write_bytes(damage((study_dir / name).read_bytes()))
        before = {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()}
        # an address nobody listens at: reaching Ray first would be a different error
        assert cli.main(["run", str(spec_file), "--output", str(study_dir.parent), "--resume",
                         "--address", "127.0.0.1:1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ldtune: error: {study_dir / name}: cannot read") and err.count("\n") == 1, err
        assert {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()} == before


def test_a_dangling_link_as_output_exits_2_before_ray(spec_file, tmp_path, capsys):
    (tmp_path / "gone").symlink_to(tmp_path / "no" / "such" / "dir")
    assert cli.main(["run", str(spec_file), "--output", str(tmp_path / "gone"), "--address", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == (f"ldtune: error: --output: {tmp_path / 'gone'} is a link to "
                                       f"{tmp_path / 'no' / 'such' / 'dir'}, which does not exist\n")


def test_a_gpu_study_on_a_cluster_without_gpu_nodes_yet_waits_for_them(ray_local, tmp_path):
    """cluster.yaml starts with no GPU worker: the autoscaler adds them when trials wait for GPUs."""
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({**SPEC, "workload": {**SPEC["workload"], "device": "auto"}, "resources": {"gpu": 1}}))
    with pytest.warns(UserWarning, match="no GPU node in the Ray cluster yet; trials wait until the autoscaler"):
        assert runner.resources(study_mod.load(gpu), fixed_nodes=False) == (1.0, 1.0)
    with pytest.raises(UserError, match="the Ray cluster has no GPU"):  # a local instance gets no more nodes
        runner.resources(study_mod.load(gpu), fixed_nodes=True)
    auto = tmp_path / "auto.yaml"  # GPUs left to the cluster: trials train on CPUs, and that is said
    auto.write_text(yaml.safe_dump({**SPEC, "workload": {**SPEC["workload"], "device": "auto"}}))
    with pytest.warns(UserWarning, match="trials train on CPUs; to wait for GPU nodes"):
        assert runner.resources(study_mod.load(auto), fixed_nodes=False) == (2.0, 0.0)


def test_a_cuda_study_on_a_cluster_without_gpu_nodes_yet_waits_for_them(ray_local, tmp_path):
    """A cuda workload needs a GPU per trial: with resources.gpu left out, a cluster whose autoscaler
    has not added its GPU nodes yet (cluster.yaml starts with none) waits for them, as gpu: 1 does;
    only a local instance, which gets no more nodes, refuses it."""
    cuda = tmp_path / "cuda.yaml"
    cuda.write_text(yaml.safe_dump({**SPEC, "workload": {**SPEC["workload"], "device": "cuda"}}))
    with pytest.warns(UserWarning, match="no GPU node in the Ray cluster yet; trials wait until the autoscaler"):
        assert runner.resources(study_mod.load(cuda), fixed_nodes=False) == (1.0, 1.0)
    with pytest.raises(UserError, match="the Ray cluster has no GPU"):
        runner.resources(study_mod.load(cuda), fixed_nodes=True)


def test_a_trial_that_fits_no_node_exits_2_and_writes_nothing(ray_local, tmp_path, capsys):
    # 64 CPUs per trial on a 2-CPU instance: Tune would wait for them forever
    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "resources": {"cpu": 64}}))
    assert cli.main(["run", str(spec), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("ldtune: error: resources.cpu: 64 CPUs and 0 GPUs per trial fit no node of "
                                       "the Ray cluster (the most CPUs on a node: 2)\n")
    assert not (tmp_path / "out").exists()
    # on a cluster (an address given) an autoscaler may still add such a node: a warning, not an error
    with pytest.warns(UserWarning, match="wait until the autoscaler adds a node"):
        assert runner.resources(study_mod.load(spec), fixed_nodes=False) == (64.0, 0.0)


def test_run_exits_1_when_a_trial_failed_and_keeps_the_others(ray_local, tmp_path, capsys):
    spec = tmp_path / "some-fail.yaml"  # boom's trial seed 1 raises; the baseline and boom seed 0 train
    spec.write_text(yaml.safe_dump({**SPEC, "baseline": {"repeats": 1}, "strategies": {"boom": {"trials": 2}}}))
    out = tmp_path / "out"
    assert cli.main(["run", str(spec), "--output", str(out)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"1 of 3 trials failed; their errors are in the error column of trials.parquet; "
        f"`ldtune run {spec} --output {out} --resume` runs them again")
    trials = pd.read_parquet(out / "tiny" / "trials.parquet").set_index("trial_id")
    assert trials["status"].to_dict() == {"baseline-000": "ok", "boom-000": "ok", "boom-001": "error"}
    # --resume runs the failed trial again (boom's failure is its seed's, so it fails again), and only
    # it, with the settings it failed with
    assert cli.main(["run", str(spec), "--output", str(out), "--resume"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("study tiny: 1 trial to run (2 done before; 1 that failed before run again)")
    assert lines[1].startswith("each trial's time saved below is against the baselines finished by then")
    assert [ln.split("]")[1].split()[0] for ln in lines if ln.startswith("[")] == ["boom-001"]
    again = pd.read_parquet(out / "tiny" / "trials.parquet").set_index("trial_id")
    assert again["status"].to_dict() == trials["status"].to_dict() and again.index.is_unique
    pd.testing.assert_frame_equal(again.loc[["baseline-000", "boom-000"]], trials.loc[["baseline-000", "boom-000"]])
    assert again.loc["boom-001", "x"] == trials.loc["boom-001", "x"] and trials["x"].nunique() == 2
    # a budget cut below a failed trial leaves it alone (nothing to run), and says so
    spec.write_text(yaml.safe_dump({**SPEC, "baseline": {"repeats": 1}, "strategies": {"boom": {"trials": 1}}}))
    assert cli.main(["run", str(spec), "--output", str(out), "--resume"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("study tiny: nothing left to run (3 trials done before)")
    assert captured.err.splitlines()[-1] == (
        f"1 of 3 trials failed; their errors are in the error column of trials.parquet; they are outside the "
        f"spec's trial budget, so `ldtune run {spec} --output {out} --resume` leaves them as they are")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "tiny" / "trials.parquet").set_index("trial_id"), again)
    # until its rerun ends, a failed trial's old row stands in the files: a freezeout trial runs (and
    # rewrites them) before boom-001 starts, and trials.parquet still holds boom-001's error then; a
    # second baseline runs last (the baseline's repeats are spread over the study)
    spec.write_text(yaml.safe_dump({**SPEC, "baseline": {"repeats": 2},
                                    "strategies": {"freezeout": {"trials": 1}, "boom": {"trials": 2}}}))
    probe = ParquetProbe(out / "tiny" / "trials.parquet")
    capsys.readouterr()
    outcome = runner.run_study(study_mod.load(spec), out, resume=True, callbacks=[probe])
    # with two baselines the run states its timing noise floor
    t = outcome.trials.set_index("trial_id").loc[["baseline-000", "baseline-001"]]
    assert (f"baseline on {t['device_name'].iloc[0]}: 2 runs, half their range "
            f"±{abs(t['train_time_s'].diff().iloc[-1]) / 2 / t['train_time_s'].median():.1%} of their median training "
            "time; smaller time_saved differences are timing noise\n") in capsys.readouterr().out
    assert [tid for tid, _ in probe.seen] == ["freezeout-000", "boom-001", "baseline-001"]
    assert probe.seen[0][1] == {**again["status"].to_dict(), "freezeout-000": "ok"}
    assert again.loc["boom-001", "error"] in probe.errors[0]
    assert not outcome.interrupted
    assert outcome.trials.set_index("trial_id")["status"].to_dict() == probe.seen[-1][1]
    assert probe.seen[-1][1] == {**probe.seen[0][1], "baseline-001": "ok"}


def test_resume_keeps_a_diverged_trial_and_runs_a_failed_one_again(finished, spec_file):
    """A diverged trial is a result (those settings diverge), kept as it is; an error may have been
    the machine's, so its trial runs again with the settings it failed with."""
    study_dir, outcome = finished
    status = outcome.trials.set_index("trial_id")["status"]
    assert status["boom-001"] == "error" and status["boom-002"] == "diverged"
    left = runner.left_to_run(study_mod.load(spec_file), study_dir)
    kept = {r["trial_id"]: r["status"] for r in left.rows}
    assert kept == status.drop("boom-001").to_dict()
    assert [r["trial_id"] for r in left.standing.rows] == ["boom-001"]
    assert {r["trial_id"] for r in left.epoch_rows} == set(kept)  # boom-001 raised before an epoch ended
    assert left.slots == [("boom", 1)]


def test_searcher_starts_no_strategy_trial_before_the_first_baseline_ends():
    slots = [("baseline", 0), ("freezeout", 0), ("boom", 0), ("baseline", 1)]
    searcher = runner._searcher_class()(list(slots), {}, lambda slot, hparams: {"slot": slot})
    assert searcher.suggest("t0") == {"slot": ("baseline", 0)}
    assert searcher.suggest("t1") == {"slot": ("baseline", 1)}  # while it runs, only baselines start
    assert searcher.suggest("t2") is None
    searcher.on_trial_complete("t0", {"status": "ok"})
    assert searcher.suggest("t2") == {"slot": ("freezeout", 0)}
    assert searcher.suggest("t3") == {"slot": ("boom", 0)}
    assert searcher.suggest("t4") == Searcher.FINISHED
    # resumed with the first baseline done, nothing waits for the spread ones
    searcher = runner._searcher_class()(slots[1:], {}, lambda slot, hparams: {"slot": slot})
    assert searcher.suggest("t0") == {"slot": ("freezeout", 0)}


def test_resume_after_killed_driver_gives_the_same_rows(ray_local, finished, spec_file, tmp_path):
    """A driver (`ldtune run --address`) killed with SIGKILL mid-study, then `--resume`: every slot
    once, the rows finished before the kill untouched, and the same row set as the uninterrupted run."""
    study_dir = tmp_path / "tiny"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ldtune", "run", str(spec_file), "--output", str(tmp_path),
                             "--address", ray_local], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    rows = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (study_dir / "trials.parquet").is_file():
            rows = pq.read_metadata(study_dir / "trials.parquet").num_rows
            if rows >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    assert 3 <= rows < len(EXPECTED_IDS), f"the driver was not killed mid-study ({rows} rows):\n{log}"
    before = pd.read_parquet(study_dir / "trials.parquet").set_index("trial_id")
    assert len(before) < len(EXPECTED_IDS)

    outcome = runner.run_study(study_mod.load(spec_file), tmp_path, resume=True)
    assert not outcome.interrupted
    # only the missing slots ran again
    assert set(outcome.trial_time_s) == EXPECTED_IDS - set(before.index)
    after = pd.read_parquet(study_dir / "trials.parquet").set_index("trial_id")
    assert after.index.is_unique and set(after.index) == EXPECTED_IDS
    pd.testing.assert_frame_equal(after.loc[before.index, ["test_accuracy", "train_time_s", "seed", "status"]],
                                  before[["test_accuracy", "train_time_s", "seed", "status"]])
    # the same row set as the uninterrupted study
    whole = pd.read_parquet(finished[0] / "trials.parquet")
    key = ["trial_id", "strategy", "seed", "status", "epochs"]
    assert set(map(tuple, after.reset_index()[key].to_numpy())) == set(map(tuple, whole[key].to_numpy()))
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(epochs["trial_id"]) == set(after.index[after["status"] != "error"])
    # the Optuna trial the killed driver left running is closed, not left RUNNING
    st = optuna.load_study(study_name="freezeout", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in st.trials}
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in st.trials) >= 2


def test_busy_seconds_counts_overlapping_trials_once():
    assert runner.busy_seconds([(5, 6), (0, 2), (1, 3), (5.5, 5.8)]) == 4
    assert runner.busy_seconds([(0, 1), (1, 2)]) == 2 and runner.busy_seconds([]) == 0


def test_a_trials_log_line_prints_its_settings_as_pareto_and_yaml_do():
    row = {"trial_id": "freezeout-002", "status": "ok", "test_accuracy": 0.607, "train_time_s": 0.8,
           "time_saved": 0.492, "flops_saved": 0.412, "error": None}
    line = runner._line(row, 17, 23, {"t0": 0.39912, "schedule": "cubic", "scale_lr": True, "cache": False})
    assert line.endswith("time saved +49.2%  flops saved +41.2%  t0=0.399 schedule=cubic scale_lr=true cache=false")


def test_baseline_noise_per_device_from_two_ok_runs():
    df = pd.DataFrame({"strategy": ["baseline"] * 5 + ["freezeout"], "status": ["ok", "ok", "error", "ok", "ok", "ok"],
                       "device_name": ["cpu"] * 3 + ["cuda:H100"] * 2 + ["cpu"], "train_time_s": [9, 11, 1, 4, 4, 1]})
    assert runner.baseline_noise(df) == [("cpu", 2, pytest.approx(0.1)), ("cuda:H100", 2, 0.0)]
    assert runner.baseline_noise(df.iloc[[0, 2, 5]]) == []  # one ok baseline: no spread to state


def test_baseline_noise_above_ten_percent_warns(recwarn):
    """The run states each device's noise floor; above 10% it warns that time_saved is unreliable."""
    import io
    df = pd.DataFrame({"strategy": ["baseline"] * 4, "status": ["ok"] * 4, "device_name": ["cpu"] * 2 + ["gpu"] * 2,
                       "train_time_s": [9.0, 11.0, 8.0, 12.0]})  # half-range over median: 10% and 20%
    out = io.StringIO()
    runner.report_noise(df, out)
    assert out.getvalue().splitlines() == [
        f"baseline on {d}: 2 runs, half their range ±{x} of their median training time; smaller time_saved "
        "differences are timing noise" for d, x in (("cpu", "10.0%"), ("gpu", "20.0%"))]
    assert [str(w.message) for w in recwarn] == [
        "baseline training times on gpu: half their range ±20.0% of their median: the machine was busy or the runs "
        "are too short to time; time_saved is unreliable (more baseline.repeats, longer runs, or a quiet machine)"]


def test_resume_with_a_changed_search_names_the_bound_and_an_added_strategy_is_allowed(tmp_path):
    spec = {**SPEC, "strategies": {"freezeout": {"trials": 1, "search": {"t0": [0.5, 0.9]}}}, "plugins": []}
    (tmp_path / SPEC["name"]).mkdir()
    (tmp_path / SPEC["name"] / runner.CONFIG_FILE).write_text(yaml.safe_dump(study_mod.from_dict(spec).to_dict()))
    changed = {**spec, "strategies": {"freezeout": {"trials": 1, "search": {"t0": [0.5, 0.8]}}}}
    with pytest.raises(UserError) as e:
        runner.prepare(study_mod.from_dict(changed), tmp_path, resume=True)
    assert e.value.field == "strategies.freezeout.search.t0"
    assert e.value.message.startswith("[0.5, 0.8] here, [0.5, 0.9] in the study being resumed")
    assert e.value.message.endswith("; resume with the same spec")  # the spec gives t0's range itself
    # a range the spec leaves to ldtune's default, saved with another default: the hint says so
    saved = study_mod.from_dict(spec).to_dict()
    other = next(k for k in saved["strategies"]["freezeout"]["search"] if k != "t0")
    saved["strategies"]["freezeout"]["search"][other] = ["an older default"]
    (tmp_path / SPEC["name"] / runner.CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError) as e:
        runner.prepare(study_mod.from_dict(spec), tmp_path, resume=True)
    assert e.value.field == f"strategies.freezeout.search.{other}"
    assert e.value.message.endswith("; the spec gives it no range, and ldtune's default range changed since")
    (tmp_path / SPEC["name"] / runner.CONFIG_FILE).write_text(yaml.safe_dump(study_mod.from_dict(spec).to_dict()))
    added = {**spec, "strategies": {**spec["strategies"], "stochastic_depth": {"trials": 1}}}
    assert runner.prepare(study_mod.from_dict(added), tmp_path, resume=True) == tmp_path / SPEC["name"]


def _copy_with_rows(study_dir: Path, to: Path, rows: int) -> Path:
    """A copy of a finished study cut back to its first ``rows`` trials, as an interrupted run leaves it."""
    import shutil
    shutil.copytree(study_dir, to / study_dir.name)
    pq.write_table(pq.read_table(study_dir / "trials.parquet").slice(0, rows), to / study_dir.name / "trials.parquet")
    return to / study_dir.name


def test_resume_with_other_resources_or_without_its_config_is_refused(finished, spec_file, tmp_path, capsys):
    """A trial's time is compared with the same device's baselines: resumed with another CPU count,
    it would have none (time_saved null for every resumed trial). A study whose study.yaml is gone
    is compared by its rows' workload columns."""
    study_dir = _copy_with_rows(finished[0], tmp_path, 3)
    before = {f: (study_dir / f).read_bytes() for f in results.FILES}
    fewer = spec_file.with_name("fewer_cpus.yaml")
    fewer.write_text(yaml.safe_dump({**SPEC, "resources": {"cpu": 1}}))  # the study took the node's 2
    assert cli.main(["run", str(fewer), "--output", str(tmp_path), "--resume"]) == 2
    assert capsys.readouterr().err.endswith(
        f"ldtune: error: resources.cpu: 1 per trial here, 2 in the study being resumed ({study_dir / 'study.yaml'}); "
        "its trials' times would not compare with the earlier ones (set resources.cpu: 2, or leave it out, to "
        "resume it)\n")
    assert {f: (study_dir / f).read_bytes() for f in results.FILES} == before
    # what the spec leaves to the cluster comes from the first run, not from this cluster (2 CPUs)
    first = _copy_with_rows(finished[0], tmp_path / "decided", 3)
    saved = yaml.safe_load((first / runner.CONFIG_FILE).read_text())
    (first / runner.CONFIG_FILE).write_text(yaml.safe_dump({**saved, "resources": {"cpu": 1.0, "gpu": 0.0}}))
    outcome = runner.run_study(study_mod.load(spec_file), first.parent, resume=True)
    resumed = outcome.trials.set_index("trial_id").loc[sorted(outcome.trial_time_s)]
    ran = resumed[resumed["status"] != "error"]  # boom-001 raises before it is timed
    assert len(resumed) == len(EXPECTED_IDS) - 3 and len(ran) >= 2 and ran["device_name"].str.endswith(":1t").all()
    assert yaml.safe_load((first / runner.CONFIG_FILE).read_text())["resources"] == {"cpu": 1.0, "gpu": 0.0}
    (study_dir / runner.CONFIG_FILE).unlink()
    longer = spec_file.with_name("longer.yaml")
    longer.write_text(yaml.safe_dump({**SPEC, "workload": {**SPEC["workload"], "epochs": 2}}))
    assert cli.main(["run", str(longer), "--output", str(tmp_path), "--resume"]) == 2
    assert capsys.readouterr().err == (f"ldtune: error: workload.epochs: 2 here, 1 in {study_dir / 'trials.parquet'} "
                                       "(its study.yaml is missing); resume with the same spec\n")
    assert {f: (study_dir / f).read_bytes() for f in results.FILES} == before


def test_a_resume_where_the_first_runs_resources_fit_no_node_says_where_they_came_from(finished, spec_file, tmp_path,
                                                                                      capsys):
    """A study run on a cluster (4 CPUs and 1 GPU per trial, decided there) and resumed on a smaller
    machine: the spec names no resources, so the error says the values are the first run's, not
    advice to set a value the resume would then refuse as a changed one."""
    for resources, field in (({"cpu": 64.0, "gpu": 0.0}, "resources.cpu"), ({"cpu": 4.0, "gpu": 1.0}, "resources.gpu")):
        study_dir = _copy_with_rows(finished[0], tmp_path / field, 3)
        saved = yaml.safe_load((study_dir / runner.CONFIG_FILE).read_text())
        (study_dir / runner.CONFIG_FILE).write_text(yaml.safe_dump({**saved, "resources": resources}))
        before = {f: (study_dir / f).read_bytes() for f in results.FILES}
        assert cli.main(["run", str(spec_file), "--output", str(study_dir.parent), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ldtune: error: {field}: ") and err.count("\n") == 1, err
        value = resources[field.removeprefix("resources.")]
        assert f"the study being resumed ran with {value:g}" in err and str(study_dir / runner.CONFIG_FILE) in err
        assert "gpu: 0" not in err  # the resume would refuse that as a changed value
        assert {f: (study_dir / f).read_bytes() for f in results.FILES} == before


def test_a_left_over_optuna_db_or_an_empty_output_is_refused(finished, spec_file, tmp_path, capsys):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / runner.OPTUNA_FILE).write_bytes((finished[0] / runner.OPTUNA_FILE).read_bytes())
    assert cli.main(["run", str(spec_file), "--output", str(tmp_path)]) == 2  # it would continue that search
    assert capsys.readouterr().err.startswith(f"ldtune: error: --output: {tmp_path / 'tiny'} already holds study")
    assert cli.main(["run", str(spec_file), "--output", ""]) == 2
    assert capsys.readouterr().err == "ldtune: error: --output: is empty; name a directory (default: results)\n"


def test_one_run_per_study_at_a_time_and_sigterm_stops_as_ctrl_c_does(ray_local, spec_file, tmp_path, capsys):
    """A second driver on a running study (a --resume while the first still runs) would run the same
    trials again and overwrite the other's rows: refused. SIGTERM (a cancelled job) stops the
    running one as Ctrl-C does: rows saved, exit 130, the --resume command named."""
    study_dir = tmp_path / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "ldtune", "run", str(spec_file), "--output", str(tmp_path),
                             "--address", ray_local], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (study_dir / "trials.parquet").is_file():
        time.sleep(0.05)
    assert cli.main(["run", str(spec_file), "--output", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert err == (f"ldtune: error: --output: {study_dir} is being written by another `ldtune run` of study 'tiny'; "
                   "let it end (or stop it) first\n"), log
    rows = pq.read_table(study_dir / "trials.parquet").num_rows
    assert proc.returncode == 130 and 1 <= rows < len(EXPECTED_IDS), log
    assert f"--output {tmp_path} --address {ray_local} --resume` runs the remaining trials" in log


def test_a_stop_that_takes_the_local_ray_instance_too_ends_at_once_with_the_rows_saved(tmp_path):
    """A cancelled job whose whole process group or cgroup gets SIGTERM (SLURM's scancel, systemd's
    stop, `kill -- -PGID`) stops the local Ray instance's processes with the driver: they block
    SIGINT only. Tune then waits in a call to the dead GCS until Ray's 60 s reconnect timeout ends
    the process with status 1 and 'Failed to connect to GCS'. The driver notices its instance is
    gone instead: it keeps every finished trial, says what stopped it, and exits 130 with the
    --resume command, as for SIGTERM alone; the resume then finishes the study."""
    spec = tmp_path / "gone.yaml"
    spec.write_text(yaml.safe_dump({"name": "gone", "seed": 0, "baseline": {"repeats": 2},
                                    "workload": {**SPEC["workload"], "epochs": 3},
                                    "strategies": {"freezeout": {"trials": 4, "search": {"t0": [0.5, 0.9]}}}}))
    out, total = tmp_path / "out", 6
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ldtune", "run", str(spec), "--output", str(out)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own group: the signal reaches no one else
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (out / "gone" / "trials.parquet").is_file():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    log = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130 and "Failed to connect to GCS" not in log, log
    assert log.startswith("study gone: "), log  # Ray's notices (token authentication on) stay quiet
    assert "stopped: the local Ray instance ended under the study (its GCS server " in log, log
    assert f"`ldtune run {spec} --output {out} --resume` runs the remaining trials" in log, log
    trials = pq.read_table(out / "gone" / "trials.parquet").to_pandas()
    assert 1 <= len(trials) < total and (trials["status"] == "ok").all(), log
    for other in ("epochs", "pareto"):  # the three files agree: each was written whole, none after the rest
        assert set(pq.read_table(out / "gone" / f"{other}.parquet")["trial_id"].to_pylist()) <= set(trials["trial_id"])
    done = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    again = pq.read_table(out / "gone" / "trials.parquet").to_pandas().set_index("trial_id")
    assert len(again) == total and again.loc[trials["trial_id"], "train_time_s"].tolist() == trials["train_time_s"].tolist()


def test_the_study_lock_is_one_holder_at_a_time_and_released_by_its_holder(tmp_path):
    assert runner.lock_study_dir(tmp_path / "not_yet") is None  # a new study locks once its directory exists
    fd = runner.lock_study_dir(tmp_path)
    with pytest.raises(UserError, match="is being written by another `ldtune run`"):  # this process too
        runner.lock_study_dir(tmp_path)
    runner.unlock_study_dir(fd)
    runner.unlock_study_dir(runner.lock_study_dir(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [runner.LOCK_FILE]
