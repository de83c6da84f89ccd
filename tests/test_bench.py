"""``ldtune bench``: baseline and strategies interleaved on one workload; JSON and bad input."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ldtune import cli

TINY = ["--dataset", "fashion_mnist", "--subset", "256", "--width", "4", "--epochs", "1", "--batch-size", "64",
        "--test-subset", "200", "--threads", "1"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_reports_savings_against_the_baseline_over_the_same_rounds(capsys, one_thread):
    rc = cli.main(["bench", *TINY, "--repeats", "2", "--strategies", "stochastic_depth,freezeout",
                   "--set", "stochastic_depth.p=0.8", "--set", "freezeout.t0=0.3", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    rows = {r["strategy"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "stochastic_depth", "freezeout"]  # the baseline always runs, first
    assert report["repeats"] == 2 and report["test_images"] == 200
    base = rows["baseline"]
    assert base["flops_saved"] == 0.0 and base["time_saved"] == 0.0 and base["accuracy_delta"] == 0.0
    assert rows["stochastic_depth"]["hparams"]["p"] == 0.8 and rows["freezeout"]["hparams"]["t0"] == 0.3
    for name in ("stochastic_depth", "freezeout"):
        r = rows[name]
        assert r["runs"] == 2 and len(r["train_times_s"]) == 2 and r["status"] == "ok"
        assert r["flops_saved"] > 0.1  # both skip a large share at these settings
        assert r["time_saved"] == pytest.approx(1 - r["train_time_s"] / base["train_time_s"])
        assert r["efficiency"] == pytest.approx(r["time_saved"] / r["flops_saved"])
        assert r["accuracy_delta"] == pytest.approx(r["test_accuracy"] - base["test_accuracy"])
    times = base["train_times_s"]
    assert report["baseline_spread"] == pytest.approx((max(times) - min(times)) / 2 / base["train_time_s"])
    assert report["width"] == 4 and all(r["cache_tier"] == "none" for r in rows.values())  # neither caches
    assert report["interleave"] == "step"  # the default on a CPU
    for r in rows.values():
        # each round's run against the same round's baseline run
        assert r["round_time_saved"] == pytest.approx([1 - t / b for t, b in zip(r["train_times_s"], times)])
        assert r["time_saved_spread"] == pytest.approx((max(r["round_time_saved"]) - min(r["round_time_saved"])) / 2)
        assert r["train_time_s"] == pytest.approx(sum(r["train_times_s"]) / 2)  # pooled: the rounds' mean
        # the baseline's FLOPs are the same every round, so pooled FLOPs are the mean of the rounds' savings
        assert len(r["round_flops_saved"]) == 2 and r["flops_saved"] == pytest.approx(sum(r["round_flops_saved"]) / 2)
        assert r["within_noise"] == (r["strategy"] != "baseline" and abs(r["time_saved"]) <= r["time_saved_spread"])
    assert base["time_saved_spread"] == 0.0
    assert "efficiency" in err and "baseline times' half-range" in err  # the table goes to stderr under --json


def test_bench_names_the_cache_tier_and_no_width_for_fixed_width_nets(capsys, one_thread):
    # FreezeOut freezes on a fixed schedule, so a prefix is cached whatever the numerics (Learn&Drop's
    # score-based choice dropped nothing here under torch 2.11 on another machine)
    i = TINY.index("--width")
    no_width = TINY[:i] + TINY[i + 2:]
    rc = cli.main(["bench", *no_width, "--model", "vgg11_bn", "--image-size", "32", "--repeats", "1",
                   "--epochs", "3", "--strategies", "freezeout", "--set", "freezeout.t0=0.3",
                   "--set", "freezeout.cache=true", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    header = [ln for ln in err.splitlines() if ln.startswith("vgg11_bn")]
    assert report["width"] is None and header == [header[0]] and header[0].startswith("vgg11_bn on fashion_mnist")
    assert "width" not in header[0]  # --width means nothing to a VGG
    row = report["rows"][1]
    assert row["strategy"] == "freezeout" and row["cache_tier"] == "device" and "cache: device" in err
    assert report["baseline_spread"] is None  # one repeat: no estimate of the noise, not a noise-free 0


def test_table_marks_time_savings_within_the_baselines_spread():
    from ldtune.bench import format_table

    def row(name, time_saved, within_noise):
        return {"strategy": name, "flops_saved": 0.3 if name != "baseline" else 0.0, "time_saved": time_saved,
                "time_saved_spread": 0.0 if name == "baseline" else 0.02 if not within_noise else 0.08,
                "efficiency": time_saved / 0.3 if name != "baseline" else None, "within_noise": within_noise,
                "test_accuracy": 0.9, "accuracy_delta": 0.0, "train_time_s": 1.0, "status": "ok", "cache_tier": "none"}
    report = {"model": "resnet20", "width": 8, "dataset": "fashion_mnist", "subset": 256, "epochs": 1, "repeats": 3,
              "interleave": "step", "device_name": "cpu", "baseline_spread": 0.1,
              "rows": [row("baseline", 0.0, False), row("resolved", 0.25, False), row("noisy", 0.05, True)]}
    lines = format_table(report).splitlines()
    assert "baseline times' half-range ±10.0% of their median" in lines[0]
    assert "0.83 " in lines[3] and "*" not in lines[3] and " 2.0% " in lines[3]  # 0.25 / 0.3, clear of the noise
    assert "0.17*" in lines[4] and " 8.0% " in lines[4] and lines[-1].startswith("* time_saved within ±rounds")
    assert lines[2].split()[:4] == ["baseline", "0.0%", "0.0%", "-"]  # no spread of the baseline against itself
    assert lines[0].startswith("resnet20 (width 8) on fashion_mnist (subset 256), 1 epoch, 3 repeats interleaved by step, ")
    report["repeats"], report["subset"] = 1, None
    assert format_table(report).splitlines()[0].startswith(
        "resnet20 (width 8) on fashion_mnist (all images), 1 epoch, 1 repeat interleaved by step, cpu; one repeat: no estimate of the timing noise")
    # a strategy that skipped (almost) nothing is named, with the settings that made it so
    report["rows"].append(row("late", 0.0, False) | {"flops_saved": 0.01, "efficiency": None,
                                                     "hparams": {"warmup_epochs": 5}})
    assert format_table(report).splitlines()[-1].startswith(
        "late skipped little (1.0% of FLOPs) in 1 epoch with warmup_epochs=5: a short run or these settings")
    assert sum("skipped little" in line for line in format_table(report).splitlines()) == 1
    report["rows"][-1] |= {"flops_saved": -0.395}  # more FLOPs than the baseline is no small saving
    assert format_table(report).splitlines()[-1].startswith(
        "late cost 39.5% more FLOPs than the baseline in 1 epoch with warmup_epochs=5")


@pytest.mark.parametrize("args, field", [
    (["--strategies", "no_such"], "--strategies"),
    (["--strategies", "freezeout,freezeout"], "--strategies"),
    (["--strategies", "freezeout", "--set", "depth_dropout.p=0.5"], "--set"),
    (["--strategies", "freezeout", "--set", "t0=0.5"], "--set"),
    (["--strategies", "freezeout", "--set", "freezeout.t0=7"], "freezeout.t0"),
    (["--strategies", "freezeout", "--set", "freezeout.t0=0.5", "--set", "freezeout.t0=0.6"], "--set"),
    (["--strategies", "freezeout", "--repeats", "0"], "--repeats"),
    (["--strategies", "freezeout", "--seed", str(2 ** 63 - 1)], "--seed"),  # round 2's seed + 1 passes int64
    (["--strategies", "freezeout", "--interleave", "batch"], "--interleave"),
    (["--strategies", "freezeout", "--model", "resnet7"], "--model"),
    (["--strategies", "freezeout", "--model", "vgg11_bn"], "--width"),  # TINY's --width 4 means nothing to a VGG
    (["--strategies", "freezeout", "--test-subset", "-1"], "--test-subset"),
    (["--strategies", "freezeout", "--threads", "-1"], "--threads"),
    (["--strategies", "freezeout", "--subset", "3"], "--batch-size"),  # TINY's batch is larger than 3 images
])
def test_bench_bad_input_exits_2_naming_the_field(args, field, capsys, one_thread):
    rc = cli.main(["bench", *TINY, *args])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert err.startswith(f"ldtune: error: {field}:"), err


def test_every_interleave_gives_the_same_runs(one_thread):
    """Taking the runs in turn by step, by epoch or whole changes only when each one's steps run."""
    from ldtune.bench import bench
    from ldtune.train import Workload
    torch.set_num_threads(1)
    w = Workload(model="resnet20", width=4, dataset="fashion_mnist", subset=256, epochs=2, batch_size=64)
    runs = [("stochastic_depth", {"p": 0.8}), ("layerdropback", {"s": 1})]  # random skips; kappa-sized batches
    reports = {mode: bench(w, runs, repeats=1, test_subset=200, warmup=False, interleave=mode)
               for mode in ("step", "epoch", "run")}
    with pytest.warns(UserWarning, match="test_subset: 100000 is more than the 10000 test images of fashion_mnist"):
        bench(dataclasses.replace(w, epochs=1), runs[:0], repeats=1, test_subset=100_000, warmup=False)
    for mode, report in reports.items():
        assert report["interleave"] == mode
        assert [(r["strategy"], r["test_accuracy"], r["flops_saved"]) for r in report["rows"]] == \
            [(r["strategy"], r["test_accuracy"], r["flops_saved"]) for r in reports["run"]["rows"]], mode


def test_a_strategy_that_diverges_shows_no_saving(one_thread):
    """A run cut short by divergence took less time and fewer FLOPs by stopping: its row says so, with
    no saving and no efficiency, and the table prints it."""
    from ldtune.bench import bench, format_table
    from ldtune.strategies import REGISTRY, EpochPlan, Strategy, register
    from ldtune.train import Workload

    @register
    class Blowup(Strategy):
        name = "test_blowup"

        def epoch_start(self, epoch):
            return EpochPlan(lr_scale=1e30)
    try:
        w = Workload(model="resnet20", width=4, dataset="digits", subset=256, epochs=2, batch_size=64)
        report = bench(w, [("test_blowup", {})], repeats=2, warmup=False)
    finally:
        REGISTRY.pop("test_blowup")
    row = report["rows"][1]
    assert row["status"] == "diverged" and row["runs"] == 2
    assert row["flops_saved"] is row["time_saved"] is row["efficiency"] is row["time_saved_spread"] is None
    assert row["round_time_saved"] == [None, None] and row["round_flops_saved"] == [None, None]
    line = format_table(report).splitlines()[3]
    assert line.split()[:4] == ["test_blowup", "-", "-", "-"] and line.endswith("(diverged)")
    assert report["rows"][0]["status"] == "ok" and report["rows"][0]["flops_saved"] == 0.0


def test_in_turn_rotates_the_order_and_reports_each_run_as_it_ends():
    from ldtune.bench import in_turn
    seen, ended = [], []

    def run(key, steps):
        for _ in range(steps - 1):
            seen.append(key)
            yield
        seen.append(key)
        return f"{key} done"

    in_turn({"a": run("a", 3), "b": run("b", 1), "c": run("c", 2)}, lambda k, res: ended.append((k, res)), turn=1)
    # turn 1 starts at the second run (b, which ends); turn 2 at the third of the live [a, c], i.e. at a
    assert seen == ["b", "c", "a", "a", "c", "a"]
    assert ended == [("b", "b done"), ("c", "c done"), ("a", "a done")]


def test_bench_warns_of_a_set_value_that_never_acts_as_train_does(capsys, one_thread):
    rc = cli.main(["bench", *TINY, "--repeats", "1", "--strategies", "learn_drop,layerdropback",
                   "--set", "learn_drop.warmup_epochs=3", "--set", "layerdropback.p=0.5"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err.startswith("ldtune: warning: learn_drop.warmup_epochs: 3 never acts in 1 epoch (no value does)\n")
    assert err.count("warning") == 1  # p is no epoch count; layerdropback's default s is not given
    assert "learn_drop skipped little (0.0% of FLOPs)" in out
