"""Study specs: the shipped studies validate; default search spaces come from the strategies'
HParam.search; bad specs exit 2 naming the field, and nothing is written. No Ray here."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ldtune import cli, results, runner, strategies, study as study_mod
from ldtune.errors import UserError

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))
GOOD = {"name": "t", "workload": {"model": "resnet20", "width": 4, "dataset": "digits", "subset": 256, "epochs": 3},
        "strategies": {"all": {"trials": 2}}}


def test_shipped_studies_validate(capsys):
    assert len(STUDIES) >= 6
    names = set()
    for path in STUDIES:
        s = study_mod.load(path)
        names.add(s.name)
        assert s.plans[0].name == "baseline" and s.plans[0].trials >= 1
        assert cli.main(["validate", str(path)]) == 0
    assert len(names) == len(STUDIES)  # every study writes to its own directory
    out = capsys.readouterr().out
    assert "quickstart.yaml: ok" in out


def test_quickstart_runs_every_registered_strategy_on_cpu():
    s = study_mod.load(REPO / "studies" / "quickstart.yaml")
    assert {p.name for p in s.plans} == set(strategies.REGISTRY)
    assert s.workload.device == "cpu" and s.workload.dataset == "fashion_mnist" and s.workload.subset
    assert s.gpu == 0 and s.cpu is None  # every core per trial: one trial at a time


def test_default_search_spaces_come_from_hparam_search():
    s = study_mod.from_dict(GOOD)
    for plan in s.plans[1:]:
        cls = strategies.REGISTRY[plan.name]
        searched = {k for k, hp in cls.hparams.items() if hp.search is not None}
        assert set(plan.space) | set(plan.fixed) == searched, plan.name
        for key, dim in plan.space.items():
            hp = cls.hparams[key]
            if dim.kind == "categorical":
                assert set(dim.choices) == set(hp.search)
            else:
                lo, hi = hp.search
                # an epoch count is searched up to the largest that acts in the study's 3 epochs
                # (warm-up 1: selected after epoch 1, out in epoch 2), and down to its lowest valid
                # value when that leaves the default range one value or none
                if hp.unit.startswith("epochs") and hp.kind is int:
                    assert dim.high == min(hi, hp.largest_acting(3)) == 3 - hp.end_margin
                    assert dim.low == (lo if lo < dim.high else hp.low)
                else:
                    assert (dim.low, dim.high) == (lo, hi)


def test_spec_search_overrides_range_choices_and_fixed_values():
    spec = {**GOOD, "strategies": {"freezeout": {"trials": 4, "search": {"t0": [0.5, 0.7], "schedule": ["cubic"],
                                                                         "scale_lr": False}}}}
    plan = study_mod.from_dict(spec).plan("freezeout")
    assert plan.trials == 4 and (plan.space["t0"].low, plan.space["t0"].high) == (0.5, 0.7)
    assert plan.fixed == {"schedule": "cubic", "scale_lr": False}  # one choice is a held value
    assert set(study_mod.from_dict(spec).to_dict()["strategies"]) == {"freezeout"}
    summary = study_mod.summary(study_mod.from_dict(spec)).splitlines()
    assert summary[-1].split(None, 3)[-1] == "t0 in [0.5, 0.7]; fixed scale_lr=false, schedule=cubic"


def test_a_strategy_with_nothing_under_it_takes_its_defaults(tmp_path, capsys):
    """``freezeout:`` with nothing under it (YAML's null) reads as ``freezeout: {}``, and so does an
    empty ``baseline:`` or ``resources:``."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in GOOD.items() if k != "strategies"})
                    + "baseline:\nresources:\nstrategies:\n  freezeout:\n")
    assert study_mod.load(path).plan("baseline").trials == 3 and study_mod.load(path).cpu is None
    plan = study_mod.load(path).plan("freezeout")
    assert plan == study_mod.from_dict(GOOD | {"strategies": {"freezeout": {}}}).plan("freezeout")
    assert set(plan.space) == {"t0", "schedule", "scale_lr"}
    assert cli.main(["validate", str(path)]) == 0
    assert "scale_lr in [true, false]" in capsys.readouterr().out


def test_optuna_distributions_match_the_space():
    import optuna
    plan = study_mod.from_dict(GOOD).plan("layerdropback")
    dists = {k: d.to_optuna() for k, d in plan.space.items()}
    kinds = {"p": optuna.distributions.FloatDistribution, "kappa": optuna.distributions.FloatDistribution,
             "s": optuna.distributions.IntDistribution}
    assert set(dists) == set(kinds)
    for k, d in dists.items():
        assert isinstance(d, kinds[k]) and (d.low, d.high) == (plan.space[k].low, plan.space[k].high), k


BAD = [
    ({"workload": {"epochs": 0}}, "workload.epochs"),
    ({"workload": {"epochs": "three"}}, "workload.epochs"),
    ({"workload": {"model": "resnet9000"}}, "workload.model"),
    ({"workload": {"dataset": "imagenet22k"}}, "workload.dataset"),
    ({"workload": {"seed": 3}}, "workload.seed"),
    ({"workload": {"device": "cuda"}, "resources": {"gpu": 0}}, "workload.device"),  # refused on every cluster
    ({"seed": -1}, "seed"),  # Optuna's samplers took the study's seed and stopped with numpy's traceback
    ({"seed": 2 ** 62}, "seed"),  # trial k trains with seed + k, stored in the int64 seed column
    ({"workload": {"lr": -0.1}}, "workload.lr"),
    ({"colour": "blue"}, "colour"),
    ({"name": "../escape"}, "name"),
    ({"strategies": {"dropconnect": {"trials": 2}}}, "strategies.dropconnect"),
    ({"strategies": {"freezeout": {"trials": 0}}}, "strategies.freezeout.trials"),
    ({"strategies": {"freezeout": {"budget": 3}}}, "strategies.freezeout.budget"),
    ({"strategies": {"freezeout": {"search": {"t0": [0.05, 0.9]}}}}, "strategies.freezeout.search.t0"),
    ({"strategies": {"freezeout": {"search": {"t0": [0.9, 0.5]}}}}, "strategies.freezeout.search.t0"),
    ({"strategies": {"freezeout": {"search": {"t0": [0.3, 0.5, 0.9]}}}}, "strategies.freezeout.search.t0"),
    ({"strategies": {"freezeout": {"search": {"schedule": ["linear", "quartic"]}}}},
     "strategies.freezeout.search.schedule"),
    ({"strategies": {"freezeout": {"search": {"warmup_epochs": [1, 2]}}}}, "strategies.freezeout.search.warmup_epochs"),
    ({"strategies": {"layerdropback": {"search": {"s": [1.5, 4]}}}}, "strategies.layerdropback.search.s"),
    ({"strategies": {"baseline": {"trials": 2}}}, "strategies.baseline"),
    ({"strategies": {"all": {"search": {"p": [0.1, 0.2]}}}}, "strategies.all.search"),
    ({"baseline": {"repeats": 0}}, "baseline.repeats"),
    ({"sampler": "cmaes"}, "sampler"),
    ({"resources": {"gpu": 1}}, "resources.gpu"),  # the workload runs on cpu
    ({"resources": {"cpu": 0}}, "resources.cpu"),
    ({"resources": {"tpu": 1}}, "resources.tpu"),
    ({"max_concurrent": 0}, "max_concurrent"),
    ({"test_subset": 0}, "test_subset"),
    ({"workload": {"subset": 1439}}, "workload.subset"),  # digits holds 1,438: checked by loading it, before Ray
    ({"strategies": {"depth_dropout": {"search": {"p": float("nan")}}}}, "strategies.depth_dropout.search.p"),
    ({"strategies": {"depth_dropout": {"search": {"p": [0.1, float("nan")]}}}}, "strategies.depth_dropout.search.p"),
    ({"strategies": {"depth_dropout": {"search": {"p": "0.5"}}}}, "strategies.depth_dropout.search.p"),
    ({"strategies": {"depth_dropout": {"search": {"p": ["0.1", 0.5]}}}}, "strategies.depth_dropout.search.p"),
    ({"strategies": {"freezeout": {"search": {"scale_lr": "false"}}}}, "strategies.freezeout.search.scale_lr"),
    ({"strategies": {"freezeout": {"search": {"scale_lr": 0}}}}, "strategies.freezeout.search.scale_lr"),
    ({"plugins": ["no_such_module_here"]}, "plugins"),
    ({"plugins": [""]}, "plugins"),  # not ImportErrors: importlib's ValueError and TypeError
    ({"plugins": [".relative"]}, "plugins"),
    ({"workload": {"model": "vgg11_bn", "width": None}, "strategies": {"stochastic_depth": {"trials": 1}}},
     "strategies.stochastic_depth"),  # no residual units: one error here, not one in every trial
]


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for k, v in change.items():
        out[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_ctrl_c_before_a_command_has_started_is_exit_130_in_one_line(tmp_path, capsys, monkeypatch):
    """A real SIGINT while the spec is read (here from a plugin being imported; for a user, importing
    torch takes seconds): one line and 130, no traceback, nothing written."""
    import signal
    (tmp_path / "ldtune_test_ctrl_c.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**GOOD, "plugins": ["ldtune_test_ctrl_c"]}))
    # Python's own handler, as in a fresh `ldtune` process (an earlier test's Ray may have left its own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["run", str(spec), "--output", str(tmp_path / "results")]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == "ldtune: interrupted\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_bad_spec_exits_2_naming_the_field_and_writes_nothing(tmp_path, capsys, change, field):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_merge(GOOD, change)))
    out = tmp_path / "results"
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: error: {field}:") and err.count("\n") == 1, err
    assert cli.main(["run", str(spec), "--output", str(out)]) == 2
    assert capsys.readouterr().err == err
    assert not out.exists()


@pytest.mark.parametrize("text,why", [
    ("name: [unclosed", "not valid YAML at line 1, column 16: expected ',' or ']'"),
    ("name: t\nworkload:\n  model: resnet20\n   dataset: x\n", "not valid YAML at line 4, column 11:"), ("- a\n- list\n", "YAML mapping"), (b"\xff\xfe\x00bin", "not UTF-8"),
    ("name: t\nworkload: {epochs: 2}\nworkload: {epochs: 50}\n", "duplicate key 'workload' (line 3)"),
])
def test_bad_spec_file_is_named(tmp_path, capsys, text, why):
    spec = tmp_path / "bad.yaml"
    spec.write_bytes(text) if isinstance(text, bytes) else spec.write_text(text)
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: error: {spec}:") and why in err and err.count("\n") == 1
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    assert cli.main(["validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"ldtune: error: {tmp_path}: a directory, not a study spec file\n"


@pytest.mark.parametrize("change,message", [
    ({"workload": {"datset": "digits"}}, "workload.datset: unknown key (did you mean 'dataset'?); known: model, dataset, "),
    ({"strategies": {"freezeout": {"trails": 2}}},
     "strategies.freezeout.trails: unknown key (did you mean 'trials'?); known: trials, search\n"),
    ({"resources": {"memory": 8}}, "resources.memory: unknown key; known: cpu, gpu\n"),
    ({"workload": {"epochs": "three"}}, "workload.epochs: Input should be a valid integer, got 'three'\n"),
])
def test_spec_errors_say_how_to_fix_them(tmp_path, capsys, change, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_merge(GOOD, change)))
    assert cli.main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err.startswith(f"ldtune: error: {message}")


def test_an_unknown_strategy_says_how_a_plugins_loads(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"strategies": {"my_freeze": {"trials": 1}}})))
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldtune: error: strategies.my_freeze: unknown strategy; known: baseline, ")
    assert err.endswith(" (for a plugin's, load it with plugins: [MODULE] in the spec)\n") and err.count("\n") == 1


def test_all_leaves_out_the_strategies_the_model_cannot_take():
    with pytest.warns(UserWarning, match="strategies.all: depth_dropout, stochastic_depth left out; vgg11_bn"):
        s = study_mod.from_dict(_merge(GOOD, {"workload": {"model": "vgg11_bn", "width": None}}))
    assert [p.name for p in s.plans] == ["baseline"] + sorted(set(strategies.REGISTRY) - {
        "baseline", "depth_dropout", "stochastic_depth"})
    assert {p.name for p in study_mod.from_dict(GOOD).plans} == set(strategies.REGISTRY)


def test_slots_put_a_baseline_first_then_strategies_round_robin_with_the_other_baselines_spread():
    s = study_mod.from_dict({**GOOD, "baseline": {"repeats": 2},
                             "strategies": {"freezeout": {"trials": 2}, "depth_dropout": {"trials": 1}}})
    slots = runner.slots_to_run(s, set())
    assert slots == [("baseline", 0), ("freezeout", 0), ("depth_dropout", 0), ("freezeout", 1), ("baseline", 1)]
    assert runner.slots_to_run(s, {"baseline-000", "freezeout-001"}) == [("freezeout", 0), ("depth_dropout", 0),
                                                                       ("baseline", 1)]
    five = study_mod.from_dict({**GOOD, "baseline": {"repeats": 5}, "strategies": {"freezeout": {"trials": 8}}})
    five_slots = runner.slots_to_run(five, set())
    assert [k for name, k in five_slots if name == "baseline"] == [0, 1, 2, 3, 4]
    positions = [i for i, (name, _) in enumerate(five_slots) if name == "baseline"]
    assert positions == [0, 3, 6, 9, 12]  # two strategy slots between repeats, the last repeat last
    alone = study_mod.from_dict({**GOOD, "baseline": {"repeats": 3}, "strategies": {}})
    assert runner.slots_to_run(alone, set()) == [("baseline", 0), ("baseline", 1), ("baseline", 2)]


def test_derived_columns_use_the_median_baseline_of_the_same_device():
    rows = [
        {"trial_id": "b0", "strategy": "baseline", "status": "ok", "train_time_s": 10.0, "test_accuracy": 0.80, "device_name": "A"},
        {"trial_id": "b1", "strategy": "baseline", "status": "ok", "train_time_s": 12.0, "test_accuracy": 0.90, "device_name": "A"},
        {"trial_id": "b2", "strategy": "baseline", "status": "ok", "train_time_s": 30.0, "test_accuracy": 0.85, "device_name": "A"},
        {"trial_id": "b3", "strategy": "baseline", "status": "error", "train_time_s": 1.0, "test_accuracy": 0.1, "device_name": "A"},
        {"trial_id": "x0", "strategy": "freezeout", "status": "ok", "train_time_s": 6.0, "test_accuracy": 0.88, "device_name": "A",
         "flops_saved": 0.4},
        {"trial_id": "x1", "strategy": "freezeout", "status": "ok", "train_time_s": 2.0, "test_accuracy": 0.88, "device_name": "B"},
        # diverged, whichever path said so: its short time and missing FLOPs are no saving
        {"trial_id": "x2", "strategy": "freezeout", "status": "diverged", "train_time_s": 3.0, "test_accuracy": 0.1,
         "device_name": "A", "flops_saved": 0.6},
    ]
    df = results.derive(pd.DataFrame(rows)).set_index("trial_id")
    assert df.loc["x0", "time_saved"] == pytest.approx(0.5)  # median baseline on A: 12 s, 0.85
    assert df.loc["x0", "speedup"] == pytest.approx(2.0)
    assert df.loc["x0", "accuracy_delta"] == pytest.approx(0.03)
    assert pd.isna(df.loc["x1", "time_saved"])  # no baseline on device B: no reference
    assert df.loc["x0", "flops_saved"] == pytest.approx(0.4)
    assert df.loc["x2", ["flops_saved", "time_saved", "speedup"]].isna().all()
    table = results.trials_table([{**r, "study": "s"} for r in rows])
    assert table.column_names[:17] == list(results.TRIAL_COLUMNS)


def test_study_name_is_the_directory_and_to_dict_round_trips(tmp_path):
    s = study_mod.from_dict(GOOD)
    again = study_mod.from_dict(s.to_dict())
    assert again.to_dict() == s.to_dict()
    with pytest.raises(UserError) as e:
        study_mod.from_dict({**GOOD, "name": ""})
    assert e.value.field == "name"


def test_yaml_anchors_and_merge_keys_work(tmp_path, capsys):
    """Only a key written twice in one mapping is refused; one that overrides a merged key is not."""
    spec = tmp_path / "anchors.yaml"
    spec.write_text("name: t\nworkload: {model: resnet20, width: 4, dataset: digits, subset: 256, epochs: 3}\n"
                    "strategies:\n  depth_dropout: &dd {trials: 2, search: {p: [0.2, 0.6]}}\n"
                    "  stochastic_depth: {<<: *dd, trials: 3}\n")
    s = study_mod.load(spec)
    assert (s.plan("stochastic_depth").trials, s.plan("stochastic_depth").space["p"].high) == (3, 0.6)
    assert s.plan("depth_dropout").trials == 2


def test_data_checks_before_ray_missing_data_and_a_large_test_subset(tmp_path, capsys):
    spec = tmp_path / "elsewhere.yaml"
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"dataset": f"imagefolder:{tmp_path / 'none'}"}})))
    out = tmp_path / "results"
    assert cli.main(["run", str(spec), "--output", str(out)]) == 2  # the trials would run here: an error
    err = capsys.readouterr().err
    assert err.startswith("ldtune: error: workload.dataset: imagefolder") and err.count("\n") == 1, err
    assert not out.exists()
    # validate (like a run on a cluster) may be on a machine without the nodes' data: a warning
    assert cli.main(["validate", str(spec)]) == 0
    assert capsys.readouterr().err.startswith("ldtune: warning: workload.dataset: imagefolder")
    # a test_subset above the test set's size means all of it, with a warning
    spec.write_text(yaml.safe_dump({**GOOD, "test_subset": 360}))
    assert cli.main(["validate", str(spec)]) == 0
    assert capsys.readouterr().err == ("ldtune: warning: test_subset: 360 is more than the 359 test images of digits; "
                                       "the trials evaluate on all of them\n")
    # and it downloads nothing: torchvision was asked to find the files, not to fetch them
    root = tmp_path / "data"
    root.mkdir()
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"dataset": "cifar10", "data_root": str(root)}})))
    assert cli.main(["validate", str(spec)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: warning: workload.data_root: cannot load cifar10 from {root}: Dataset not found")
    assert list(root.iterdir()) == []
    # a data_root this machine lacks: a cluster's nodes may hold it (a warning), a local run cannot (an error)
    gone = tmp_path / "not-here"
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"data_root": str(gone)}})))
    assert cli.main(["validate", str(spec)]) == 0
    assert capsys.readouterr().err.startswith(f"ldtune: warning: workload.data_root: no such directory: {gone};")
    with pytest.raises(UserError, match=f"^workload.data_root: no such directory: {gone}$"):
        study_mod.check_data(study_mod.load(spec), trials_here=True)
    assert not gone.exists()


def test_a_batch_of_one_image_where_the_maps_reach_1x1_fails_validate(tmp_path, capsys):
    """The net is built at the data's image size (8 px digits), not validation's usual 32 px, so
    ResNet-18's 1x1 maps are seen before any trial fails on them."""
    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"model": "resnet18", "width": None, "batch_size": 1}})))
    assert cli.main(["validate", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("ldtune: error: workload.batch_size: 1 image a step leaves one value per channel to BatchNorm, "
                   "where resnet18's maps reach 1x1 at this image size; give at least 2\n")
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"model": "resnet20", "batch_size": 1}})))
    assert cli.main(["validate", str(spec)]) == 0  # ResNet-20's last maps are 2x2 on 8 px images
    spec.write_text(yaml.safe_dump(_merge(GOOD, {"workload": {"model": "resnet18", "width": None, "batch_size": 2}})))
    assert cli.main(["validate", str(spec)]) == 0


def test_unusable_output_exits_2_before_ray_starts(tmp_path, capsys):
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    for output, message in [(spec, f"{spec} is a file, not a directory"),
                            (spec / "sub", f"cannot create {spec / 'sub'}: {spec} is a file"),
                            (Path("/proc/ldtune-no"), "cannot write /proc/ldtune-no: /proc: ")]:
        assert cli.main(["run", str(spec), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ldtune: error: --output: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"]
    (tmp_path / "t").write_text("mine")  # the study's directory name is taken by a file
    assert cli.main(["run", str(spec), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"ldtune: error: --output: {tmp_path / 't'} is a file; the study 't' needs "
                                       "that name for its directory (choose another --output)\n")
    assert (tmp_path / "t").read_text() == "mine"


def test_unreachable_address_exits_2_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "good.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    out = tmp_path / "results"
    assert cli.main(["run", str(spec), "--output", str(out), "--address", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith("ldtune: error: --address: no Ray cluster at 127.0.0.1:1")
    assert not out.exists()
    # a port where something else listens (here a web server): Ray would wait on it for minutes
    import http.server
    import threading
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the server's own log would land in this test's stderr
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        assert cli.main(["run", str(spec), "--output", str(out), "--address", address]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == (f"ldtune: error: --address: no Ray cluster at {address}: something listens "
                                       "there, but it does not answer as a Ray cluster's GCS (a gRPC server) does\n")
    assert not out.exists()


def test_counts_read_as_english():
    from ldtune.text import plural, subset_text
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert (subset_text(None), subset_text(512)) == ("all images", "subset 512")


def test_a_spec_that_names_no_strategies_warns_that_only_the_baseline_runs(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in GOOD.items() if k != "strategies"}))
    assert cli.main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ("ldtune: warning: strategies: none named, so the study runs the baseline only; "
                   "`strategies: {all: {trials: 2}}` runs every registered strategy\n")
    assert "3 trials" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty mapping asks for the baseline alone on purpose
        assert [p.name for p in study_mod.from_dict(GOOD | {"strategies": {}}).plans] == ["baseline"]


def test_a_shared_gpu_is_allowed_with_a_warning_that_timings_suffer():
    spec = _merge(GOOD, {"workload": {"device": "cuda"}, "resources": {"gpu": 0.5}})
    with pytest.warns(UserWarning, match=r"^resources.gpu = 0.5: trials share a GPU, which distorts their timings"):
        s = study_mod.from_dict(spec)
    assert s.gpu == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole GPU per trial: no warning
        assert study_mod.from_dict(_merge(spec, {"resources": {"gpu": 1}})).gpu == 1
