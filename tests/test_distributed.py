"""A study on two Ray nodes on this machine (``ray.cluster_utils.Cluster``): trials land on both; the
worker node is killed mid-trial and the study still ends with every trial accounted for. And
``cluster.yaml`` passes Ray's own cluster-config validation."""
from __future__ import annotations

import contextlib
import copy
import os
import signal
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import ray
import yaml
from ray import tune
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.cluster_utils import Cluster

from ldtune import runner, study as study_mod

REPO = Path(__file__).resolve().parents[1]

# A test-only strategy, imported by the study's `plugins` on the driver and on both nodes: it trains
# like the baseline, but
# - before its first epoch, it waits (up to a minute) until a second sleepy trial has started. Trials
#   are short and a node's first trial actor is slow to start, so without this wait the head node's
#   actor, reused, could run every trial before the worker node's actor is ready. Each node has one
#   CPU, so the two sleepy trials that meet here run on different nodes;
# - it pauses before its last epoch, so a node killed after its first epoch report dies mid-trial,
#   never after the trial's end.
PLUGIN = '''
import os
import time
import uuid
from pathlib import Path

from ldtune.strategies import EpochPlan, Strategy, register

RENDEZVOUS_S = 60.0  # seconds the first sleepy trial waits for a second one


@register
class Sleepy(Strategy):
    """Test-only: the baseline, with a rendezvous before the first epoch and a 2 s pause before the last."""
    name = "sleepy"
    hparams = {}

    def epoch_start(self, epoch):
        if epoch == 0:
            arrivals = Path(os.environ["LDTUNE_TEST_RENDEZVOUS"])
            (arrivals / uuid.uuid4().hex).touch()
            deadline = time.monotonic() + RENDEZVOUS_S
            while len(list(arrivals.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        if epoch == self.ctx.epochs - 1:
            time.sleep(2.0)
        return EpochPlan()

'''


def test_cluster_yaml_passes_ray_validation():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(config)
    validate_config(prepare_config(copy.deepcopy(config)))  # merged with Ray's AWS defaults, as `ray up` does
    # a GPU worker type with autoscaling bounds, setup that installs ldtune
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert any(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    assert all(0 <= v["min_workers"] <= v["max_workers"] <= config["max_workers"] for v in workers.values())
    assert any("pip install -e ~/ldtune" in c for c in config["setup_commands"])
    # no port open to the world beyond SSH; the dashboard listens on localhost only
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert not any("0.0.0.0" in c for c in config["head_start_ray_commands"])
    # the validation is real: a misspelt key fails it
    with pytest.raises(jsonschema.ValidationError):
        validate_config({**config, "max_worker": 3})


def test_every_ray_job_command_in_the_cluster_instructions_names_the_job_api():
    """The job API is reached through `ray dashboard`'s tunnel; a `ray job` command on the laptop
    without RAY_ADDRESS (or --address) looks for a local Ray instance instead and fails."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Studies on a Ray cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    header = [ln.lstrip("# ") for ln in (REPO / "cluster.yaml").read_text().splitlines() if ln.startswith("#   ")]
    commands = [ln.split("#", 1)[0] for ln in block.splitlines() + header if "ray job " in ln]
    assert len(commands) >= 3
    for command in commands:
        assert "RAY_ADDRESS=http://127.0.0.1:8265 ray job" in command or "--address http" in command, command


class KillWorkerMidTrial(tune.Callback):
    """Removes the worker node when a sleepy trial running there reports its first (non-final) epoch."""

    def __init__(self, cluster: Cluster, worker):
        self.cluster, self.worker = cluster, worker
        self.worker_id = worker.node_id
        self.nodes_seen: set[str] = set()
        self.killed_trial = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.nodes_seen.add(result.get("node_id"))
        if (self.killed_trial is None and result.get("node_id") == self.worker_id and not result.get("final")
                and trial.config["strategy"] == "sleepy"):
            self.killed_trial = trial.config["trial_id"]
            self.cluster.remove_node(self.worker, allow_graceful=False)

    def __getstate__(self):  # Tune pickles callbacks into tuner.pkl; a Cluster handle does not pickle
        return {k: v for k, v in self.__dict__.items() if k not in ("cluster", "worker")}


@pytest.fixture
def two_nodes(tmp_path_factory, monkeypatch):
    """Two Ray nodes of one CPU each; the plugin's directory is on both nodes' Python path, and its
    rendezvous directory in both nodes' environment."""
    plugin_dir = tmp_path_factory.mktemp("plugin")
    monkeypatch.setenv("LDTUNE_TEST_RENDEZVOUS", str(tmp_path_factory.mktemp("rendezvous")))
    (plugin_dir / "ldtune_test_sleepy.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")])))
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_trials_on_both_nodes_and_a_dead_worker_node_is_retried(two_nodes, tmp_path):
    cluster, worker = two_nodes
    spec = study_mod.from_dict({
        "name": "two-nodes",
        "workload": {"model": "resnet20", "width": 4, "dataset": "digits", "subset": 512, "epochs": 3,
                     "batch_size": 32},
        "baseline": {"repeats": 2},
        "strategies": {"sleepy": {"trials": 4}},
        "max_concurrent": 2,
        "max_failures": 2,
        "plugins": ["ldtune_test_sleepy"],
    })
    killer = KillWorkerMidTrial(cluster, worker)
    sigint = signal.getsignal(signal.SIGINT)
    outcome = runner.run_study(spec, tmp_path, callbacks=[killer])
    assert signal.getsignal(signal.SIGINT) is sigint  # Tune's handler would swallow the caller's next Ctrl-C
    head_id = cluster.head_node.node_id

    assert killer.killed_trial is not None, "the worker node never ran a trial"
    assert {head_id, worker.node_id} <= killer.nodes_seen  # trials landed on both nodes
    assert outcome.retries >= 1  # Tune restarted the trial the dead node was running
    assert not outcome.interrupted
    trials = pd.read_parquet(tmp_path / "two-nodes" / "trials.parquet")
    expected = {f"baseline-00{k}" for k in range(2)} | {f"sleepy-00{k}" for k in range(4)}
    assert set(trials["trial_id"]) == expected and trials["trial_id"].is_unique
    assert (trials["status"] == "ok").all(), trials[["trial_id", "status", "error"]]
    assert outcome.nodes[killer.killed_trial] == head_id  # its retry finished on the surviving node
    # the two sleepy trials that met ran at once: the overhead line counts their overlap once
    spans = list(outcome.trial_span.values())
    assert len(spans) == len(expected)
    busy = runner.busy_seconds(spans)
    assert busy < sum(end - start for start, end in spans) and busy <= outcome.wall_s
    epochs = pd.read_parquet(tmp_path / "two-nodes" / "epochs.parquet")
    assert len(epochs) == 3 * len(expected) and not epochs.duplicated(["trial_id", "epoch"]).any()


@contextlib.contextmanager
def ray_start_head(env: dict, *options: str, head_env: dict | None = None):
    """A `ray start --head` cluster of one CPU on a free port, listening when this yields its port; its
    record is kept in a temp dir of its own (short: Ray's socket paths must fit 107 bytes), which this
    sets as ``env``'s RAY_TMPDIR, so clients run with ``env`` find it and it can't trap another test's
    ray.init() once it is gone. ``head_env`` adds to the head's environment only."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["RAY_TMPDIR"] = ray_tmp = tempfile.mkdtemp(prefix="ldt-ray-", dir="/tmp")
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "1", *options, "--include-dashboard", "false"],
                            env={**env, **(head_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the head listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield port
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_run_without_address_starts_its_own_instance_beside_a_ray_start_cluster(tmp_path):
    """`ray start` records its cluster for `ray.init()` to join; a study without --address must not join it
    (a local study would otherwise run on, and die with, whatever cluster this machine holds)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    with ray_start_head(env, "--resources", '{"ldtune_test_started": 1}'):
        joined = "import ray; ray.init(); print(ray.cluster_resources().get('ldtune_test_started', 0))"
        own = ("from ldtune import runner; import ray; runner.connect(None); "
               "print(ray.cluster_resources().get('ldtune_test_started', 0))")
        deadline = time.monotonic() + 60
        while True:  # until ray.init() with no address joins the `ray start` cluster: the trap is set
            out = subprocess.run([sys.executable, "-c", joined], env=env, capture_output=True, text=True, timeout=120)
            if out.stdout.strip() == "1.0" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert out.stdout.strip() == "1.0", out.stderr[-2000:]
        mine = subprocess.run([sys.executable, "-c", own], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert mine.returncode == 0 and mine.stdout.strip() == "0", mine.stderr[-2000:]


def test_an_address_whose_cluster_wants_a_token_says_how_to_give_it(tmp_path):
    """A `ray start` cluster takes token authentication where ~/.ray/auth_token exists (a local
    `ldtune run` writes one); Ray sends the token to an explicit address only with RAY_AUTH_MODE=token,
    so without it the connection fails: the error says so, and nothing is written."""
    import secrets
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    with ray_start_head(env, head_env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}) as port:
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({"name": "tok", "workload": {"model": "resnet20", "width": 4, "dataset": "digits",
                                                                    "subset": 64, "epochs": 1}}))
        home = tmp_path / "home"  # no ~/.ray/auth_token of this machine's
        home.mkdir()
        out = subprocess.run([sys.executable, "-m", "ldtune", "run", str(spec), "--output", str(tmp_path / "out"),
                              "--address", f"127.0.0.1:{port}"], env={**env, "HOME": str(home)}, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 2 and last.startswith("ldtune: error: --address: cannot connect"), out.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN" in last, last
        assert not (tmp_path / "out").exists()


def test_ldtune_variables_set_for_the_driver_reach_trials_on_a_ray_start_cluster(tmp_path):
    """A `ray start` node's workers inherit that node's environment, not the driver's: LDTUNE_FUSED_BN=0
    (or LDTUNE_DATA, LDTUNE_CACHE_*) given to `ldtune run --address` must still hold in its trials,
    as it does on a local instance. Fused BatchNorm off shows in every trial's device_name."""
    import subprocess
    import sys
    from ldtune import batchnorm
    assert batchnorm.available()  # else every device name ends in :aten-bn and this could not fail
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "LDTUNE_"))}
    env["RAY_AUTH_MODE"] = "disabled"
    with ray_start_head(env) as port:
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({"name": "env", "workload": {"model": "resnet20", "width": 4, "dataset": "digits",
                                                                    "subset": 64, "epochs": 1, "batch_size": 32},
                                        "test_subset": 100, "baseline": {"repeats": 2}}))
        out = subprocess.run([sys.executable, "-m", "ldtune", "run", str(spec), "--output", str(tmp_path / "out"),
                              "--address", f"127.0.0.1:{port}"], env={**env, "LDTUNE_FUSED_BN": "0"}, cwd=REPO,
                             capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        trials = pd.read_parquet(tmp_path / "out" / "env" / "trials.parquet")
        assert len(trials) == 2 and trials["device_name"].str.endswith(":aten-bn").all(), trials["device_name"]
