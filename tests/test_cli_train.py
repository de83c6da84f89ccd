"""``ldtune train`` through the installed console script: the JSON contract and bad input."""
import math
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ldtune.cli import main

CONTRACT = {"strategy", "model", "dataset", "epochs", "test_accuracy", "train_time_s", "train_flops", "flops_saved"}


def test_train_json_contract():
    out = subprocess.run([sys.executable, "-m", "ldtune", "train", "--model", "resnet20", "--width", "4",
                          "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert CONTRACT <= set(last)
    assert last["strategy"] == "baseline" and last["dataset"] == "digits" and last["epochs"] == 2
    assert 0.3 < last["test_accuracy"] <= 1.0 and last["train_flops"] > 0 and last["flops_saved"] == 0.0
    assert "epoch 2/2" in out.stderr


def test_train_evaluates_on_a_test_subset(capsys):
    assert main(["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--test-subset", "50", "--json"]) == 0
    out, err = capsys.readouterr()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["test_subset"] == 50
    assert round(last["test_accuracy"] * 50, 6) == round(last["test_accuracy"] * 50)  # hits out of 50 images
    assert "warning" not in err
    # more than digits' 359 test images: all are used, and the run says so
    assert main(["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--test-subset", "500", "--json"]) == 0
    out, err = capsys.readouterr()
    assert ("ldtune: warning: --test-subset: 500 is more than the 359 test images of digits; the run evaluates on "
            "all of them\n") in err
    assert round(json.loads(out.splitlines()[-1])["test_accuracy"] * 359, 6) % 1 == 0


@pytest.mark.parametrize("args,field", [
    (["--model", "resnet21"], "--model"),
    (["--dataset", "svhn"], "--dataset"),
    (["--strategy", "dropall"], "--strategy"),
    (["--set", "nosuchkey=1"], "baseline.nosuchkey"),
    (["--epochs", "0"], "--epochs"),
    (["--schedule", "linear"], "--schedule"),
    (["--data-root", "/nonexistent/dir"], "--data-root"),
    (["--subset", "999999"], "--subset"),
    (["--model", "resnet18"], "--width"),  # --width 4 sets a CIFAR ResNet's channels only
    (["--subset", "100", "--batch-size", "128"], "--batch-size"),
    # found once the net and data are there, before the first step
    (["--subset", "64", "--epochs", "2", "--strategy", "layerdropback", "--set", "kappa=8", "--set", "s=1"],
     "layerdropback.kappa"),
    (["--strategy", "layerdropback", "--set", "reading=equations", "--set", "p=0"], "layerdropback.p"),
    (["--test-subset", "0"], "--test-subset"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 63)], "--seed"),  # torch's generator stopped with an overflow traceback
    # the second value would silently win: refused, so the run is the one the user meant
    (["--strategy", "depth_dropout", "--set", "p=0.1", "--set", "p=0.2"], "--set"),
])
def test_bad_input_exits_2_naming_the_field(args, field, capsys):
    code = main(["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"error: {field}:" in err


@pytest.mark.parametrize("var,value", [("LDTUNE_THREADS", "abc"), ("LDTUNE_THREADS", "-3"),
                                       ("LDTUNE_CACHE_DEVICE_BYTES", "lots"), ("LDTUNE_CACHE_HOST_BYTES", "nan")])
def test_a_bad_environment_variable_exits_2_naming_it(var, value, capsys, monkeypatch):
    monkeypatch.setenv(var, value)
    code = main(["train", "--dataset", "digits", "--width", "4", "--epochs", "2", "--strategy", "learn_drop",
                 "--set", "warmup_epochs=0", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"ldtune: error: {var}: {value!r} is not a whole number >= 0\n" if var == "LDTUNE_THREADS" else \
        err == f"ldtune: error: {var}: {value!r} is not a number >= 0\n"


def test_strategies_lists_every_registered_one_with_units_and_shows_a_card(capsys):
    from ldtune.strategies import REGISTRY
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert [ln[3:] for ln in out.splitlines() if ln.startswith("== ")] == sorted(REGISTRY)
    for name, cls in REGISTRY.items():
        for key, h in cls.hparams.items():
            what = f"{h.unit}: {h.help}" if h.help else h.unit  # the unit, and what it means where it is one word
            assert f"  {key}: {h.kind.__name__}" in out and f"({what})" in out, (name, key)
    assert "== baseline\n  no hyperparameters\n" in out and ", None]" not in out
    assert main(["strategies", "freezeout"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("== freezeout\n") and "Paper:" in card and "t0:" in card
    assert main(["strategies", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldtune: error: strategy: unknown strategy 'nosuch'; known: baseline, ")
    assert err.endswith(" (for a plugin's, load it with --plugin MODULE)\n")


def test_one_image_a_step_is_refused_only_where_batchnorm_would_see_1x1_maps(capsys):
    # ResNet-18's maps reach 1x1 on digits' 8x8 images: BatchNorm would stop with a traceback
    code = main(["train", "--model", "resnet18", "--dataset", "digits", "--batch-size", "1", "--subset", "16",
                 "--epochs", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("ldtune: error: --batch-size: 1 image a step leaves one value per channel to BatchNorm, "
                          "where resnet18's maps reach 1x1") and err.count("\n") == 1
    # a CIFAR ResNet ends at 2x2 there: one image a step trains
    assert main(["train", "--dataset", "digits", "--width", "4", "--batch-size", "1", "--subset", "16",
                 "--epochs", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "three"])
    assert e.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_a_warm_up_too_long_for_the_run_is_warned_of(capsys):
    # Learn&Drop selects at the end of epoch warmup_epochs; in 2 epochs only 0 leaves an epoch to skip in
    import warnings
    hook = warnings.showwarning
    code = main(["train", "--dataset", "digits", "--width", "4", "--epochs", "2", "--strategy", "learn_drop",
                 "--set", "warmup_epochs=1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["flops_saved"] == 0.0
    assert "ldtune: warning: learn_drop.warmup_epochs: 1 never acts in 2 epochs (at most 0 does)\n" in err
    assert warnings.showwarning is hook  # the CLI's one-line format ends with the command
    assert main(["train", "--dataset", "digits", "--width", "4", "--epochs", "2", "--strategy", "learn_drop",
                 "--set", "warmup_epochs=0"]) == 0
    assert "warning" not in capsys.readouterr().err
    # a 1-epoch run has no DROP epoch (e > 0) whatever LayerDropBack's period: no value of s acts
    assert main(["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--strategy", "layerdropback",
                 "--set", "s=1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["flops_saved"] == 0.0
    assert "ldtune: warning: layerdropback.s: 1 never acts in 1 epoch (no value does)\n" in err


@pytest.mark.parametrize("strategy, setting, said", [
    ("layerdropback", "keep_first=21", "layerdropback.keep_first: 21 leaves none of resnet20's 22 layers to sample "
                                       "(the first 21 and the last always train); nothing is skipped"),
    ("learn_drop", "min_drop=10", "learn_drop.min_drop: 10 is not below resnet20's 10 blocks (the last is never "
                                  "dropped); nothing is ever dropped"),
    ("depth_dropout", "recalibrate_bn=500", "depth_dropout.recalibrate_bn: 500 is more than the 128 training "
                                            "images; it recalibrates on all of them"),
])
def test_a_setting_larger_than_the_net_or_data_is_warned_of(strategy, setting, said, capsys):
    argv = ["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--subset", "128", "--strategy", strategy]
    assert main([*argv, "--set", setting, "--json"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"ldtune: warning: {said}\n") and err.count("warning") == 1, err
    smaller = setting.split("=")[0] + "=" + {"keep_first": "20", "min_drop": "9", "recalibrate_bn": "128"}[
        setting.split("=")[0]]
    assert main([*argv, "--set", smaller, "--json"]) == 0
    assert "warning" not in capsys.readouterr().err


# every dependency of the study platform that is not PyTorch's: none of them installed
NOT_TORCH = ("ray", "optuna", "pyarrow", "pandas", "seaborn", "matplotlib", "pydantic", "sklearn", "scipy",
             "mlxtend", "duckdb")


def test_bench_runs_where_only_pytorch_is_installed():
    """scripts/gpu_figures.sh runs `python -m ldtune bench` with a GPU machine's bare PyTorch and
    PyYAML. A module set to None in sys.modules cannot be imported, as if not installed."""
    code = (f"import sys\nfor n in {NOT_TORCH!r}: sys.modules[n] = None\n"
            "from ldtune.cli import main\n"
            "sys.exit(main(['bench', '--model', 'resnet20', '--width', '4', '--subset', '256', '--test-subset', '200',"
            " '--epochs', '1', '--repeats', '1', '--threads', '1', '--strategies', 'freezeout', '--json']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["strategy"], r["status"]) for r in rows["rows"]] == [("baseline", "ok"), ("freezeout", "ok")]


def test_version(capsys):
    import ldtune
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"ldtune {ldtune.__version__}\n"


def test_strategies_shows_a_plugins_card(tmp_path, monkeypatch, capsys):
    import sys
    from ldtune.strategies import REGISTRY
    (tmp_path / "ldtune_cardplug.py").write_text(
        "from ldtune.strategies import HParam, Strategy, register\n\n\n@register\nclass CardPlug(Strategy):\n"
        '    """Test-only plugin."""\n    name = "cardplug"\n'
        '    hparams = {"on": HParam(bool, True, "flag: a switch to print")}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["strategies", "cardplug", "--plugin", "ldtune_cardplug"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("== cardplug\n  on: bool, default true (flag: a switch to print)\n")
    finally:
        REGISTRY.pop("cardplug", None)
        sys.modules.pop("ldtune_cardplug", None)
    assert main(["strategies", "--plugin", "ldtune_no_such_plugin"]) == 2
    assert capsys.readouterr() == ("", "ldtune: error: --plugin: cannot import 'ldtune_no_such_plugin': "
                                       "No module named 'ldtune_no_such_plugin' (a plugin must be installed or on "
                                       "PYTHONPATH; for one in this directory: PYTHONPATH=$PWD)\n")
    # a plugin that takes a built-in's name: refused, under the flag that named the plugin
    (tmp_path / "ldtune_clashplug.py").write_text(
        "from ldtune.strategies import Strategy, register\n\n\n@register\nclass Clash(Strategy):\n"
        '    name = "freezeout"\n')
    try:
        assert main(["strategies", "--plugin", "ldtune_clashplug"]) == 2
        assert capsys.readouterr().err == ("ldtune: error: --plugin: ldtune_clashplug.Clash: the name 'freezeout' "
                                           "is a built-in strategy's\n")
        assert REGISTRY["freezeout"].__module__ == "ldtune.strategies.freezeout"
    finally:
        sys.modules.pop("ldtune_clashplug", None)


REPO = Path(__file__).resolve().parents[1]


def readme_plugin(directory) -> str:
    """Writes the README's "A strategy of your own" example to ``directory``/my_freeze.py, as
    written there; returns that README section."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### A strategy of your own"):]
    (directory / "my_freeze.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    return section


def test_the_readmes_plugin_example_trains_and_saves_what_it_freezes(tmp_path, monkeypatch, capsys):
    """The README's "A strategy of your own" block, as written there, runs as a plugin."""
    from ldtune.strategies import REGISTRY
    readme_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["strategies", "my_freeze", "--plugin", "my_freeze"]) == 0
        assert "warmup_epochs: int >= 0, default 2 (epochs)" in capsys.readouterr().out
        assert main(["train", "--plugin", "my_freeze", "--strategy", "my_freeze", "--set", "warmup_epochs=1",
                     "--dataset", "digits", "--width", "4", "--epochs", "2", "--subset", "256", "--json"]) == 0
        out = json.loads(capsys.readouterr().out.splitlines()[-1])
        # one of two epochs with 3 of the net's blocks frozen: their backward is not run nor counted
        assert out["strategy"] == "my_freeze" and math.isfinite(out["test_accuracy"]) and 0.05 < out["flops_saved"] < 0.5
    finally:
        REGISTRY.pop("my_freeze", None)
        sys.modules.pop("my_freeze", None)


def test_the_conformance_suite_runs_over_the_readmes_plugin_as_the_readme_says(tmp_path):
    """The README's command runs the whole conformance class over its plugin example (and fails
    for a plugin that says it freezes but never does within the suite's runs)."""
    import os
    section = readme_plugin(tmp_path)
    command = next(line for line in re.findall(r"```bash\n(.*?)```", section, re.S)[0].splitlines()
                   if "--plugin my_freeze" in line)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    classes = sum(1 for line in (REPO / "tests" / "test_conformance.py").read_text().splitlines()
                  if re.match(r"    def test_", line))
    ran = subprocess.run(["bash", "-c", command + " -p no:cacheprovider"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert re.search(rf"\b{classes} passed", ran.stdout), ran.stdout[-2000:]
    # without the setting, its default warm-up (2 epochs) never freezes in a 2-epoch run: the skip check fails
    without = command.replace(" --hparam my_freeze.warmup_epochs=1", "").replace("-k my_freeze", "-k 'my_freeze and skips'")
    ran = subprocess.run(["bash", "-c", without + " -p no:cacheprovider"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert ran.returncode == 1 and "FAILED tests/test_conformance.py::TestConformance::test_skips_show_in_cost_accounting[my_freeze]" in ran.stdout


def test_a_reader_that_stops_early_gets_no_traceback():
    """`ldtune strategies | head -1`: the pipe closes before ldtune writes; that ends the command
    quietly, with the status a shell gives a command ended by SIGPIPE."""
    p = subprocess.Popen([sys.executable, "-m", "ldtune", "strategies"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has written anything (importing torch takes a while)
    err = p.stderr.read().decode()
    assert (p.wait(timeout=120), err) == (141, "")


def test_every_spelling_of_a_boolean_reaches_the_strategy():
    # ``--set`` text goes through YAML, which reads 1 and 0 as integers; they mean true and false here
    from ldtune.commands.train import parse_sets
    from ldtune.strategies import REGISTRY, create
    flags = [(n, k) for n, cls in REGISTRY.items() for k, spec in cls.hparams.items() if spec.kind is bool]
    assert ("freezeout", "scale_lr") in flags
    for name, key in flags:
        for text, want in [("true", True), ("yes", True), ("1", True), ("false", False), ("no", False), ("0", False)]:
            hp = create(name, **parse_sets([f"{key}={text}"])).hp
            assert hp[key] is want, (name, key, text)
