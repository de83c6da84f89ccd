"""Run a study on Ray Tune: the baseline, and every strategy searched by its own Optuna study.

``run_study(study, output)``:

1. connects to ``address`` (or ``RAY_ADDRESS``; ``auto`` on a cluster's head) or starts a local
   Ray instance; decides the per-trial resources (:class:`ldtune.study.ResourcesSpec`);
2. lays out the remaining trials as slots ``<strategy>-<k>`` (trial ``k`` trains with seed
   ``seed + k``): one baseline repeat, then the strategies round-robin with the other baseline
   repeats spread evenly among them, the last at the end (:func:`slots_to_run`). A slot whose row
   is already in ``trials.parquet`` is done (``--resume``), so a finished trial never runs twice
   and an unfinished one runs again under the same id;
3. runs one Tuner whose searcher hands out the slots: no strategy trial starts before the first
   baseline trial is done (each speedup needs its reference; meanwhile a free slot takes the next
   baseline repeat, out of its turn, rather than idle), and each strategy's
   hyperparameters come from an ``OptunaSearch`` (objectives: max ``test_accuracy``, min
   ``train_time_s``; its Optuna study in ``optuna.db`` beside the results, so
   ``optuna-dashboard sqlite:///DIR/<study>/optuna.db`` can browse it) inside a
   ``ConcurrencyLimiter``;
4. after each finished trial, rewrites the Parquet files (:mod:`ldtune.results`) and prints one line.

A dying worker or node is retried by Tune (``max_failures``); a trial that raises or diverges is a
row with its status. Ctrl-C stops Tune cleanly; the files hold every finished trial, and
``--resume`` runs the rest; on a study with nothing left to run it starts no Ray and rewrites the files.
A stop that ends the local Ray instance too (SIGTERM to the whole job) exits at once with the files
as the last finished trial left them (:func:`_watch_gcs`)."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from . import results
from .errors import UserError
from .study import Study, check_data
from .text import format_or_dash, format_value, plural

OBJECTIVES = (["test_accuracy", "train_time_s"], ["max", "min"])
CONFIG_FILE = "study.yaml"  # the resolved config, beside the results
OPTUNA_FILE = "optuna.db"
TUNE_DIR = "tune"  # Ray Tune's storage path inside the study directory


@dataclass
class Outcome:
    study_dir: Path
    trials: object  # pandas frame of trials.parquet as written
    interrupted: bool  # some slots did not finish (Ctrl-C); --resume runs them
    wall_s: float  # seconds from the start of the run (Ray connection included) to its end
    trial_time_s: dict = field(default_factory=dict)  # trial_id -> seconds the trainable itself ran (this run)
    fit_time_s: dict = field(default_factory=dict)  # trial_id -> seconds of training + evaluation in it
    trial_span: dict = field(default_factory=dict)  # trial_id -> (start, end) of the trainable, Unix seconds
    nodes: dict = field(default_factory=dict)  # trial_id -> Ray node id that ran it (this run)
    retries: int = 0  # trials Tune restarted after a worker or node died


# ------------------------------------------------------------------------------------- Ray
def connect(address: str | None) -> bool:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local instance; True if we started Ray."""
    import ray
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                  configure_logging=True)
    _reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
            return True
        # trial workers at normal priority: Ray's default (nice 15) lets any other process, the
        # driver's own loop included, preempt training and lengthen its measured time
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray's notice that a new local instance takes token authentication (its default) is not the
        # user's to act on: this instance is ldtune's, and it ends with the run
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(address="local", **kwargs)  # our own: not a `ray start` cluster this machine may be running
        finally:
            notice.setLevel(level)
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ""
        if (isinstance(e, ConnectionError) and address != "auto"  # (auto: Ray itself turns token mode on)
                and os.environ.get("RAY_AUTH_MODE", "").lower() != "token"):
            # Ray sends its token to an address named explicitly only in token mode: a GCS wanting one refuses us
            hint = ("; if the cluster takes token authentication (`ray start` does where ~/.ray/auth_token exists), "
                    "set RAY_AUTH_MODE=token, with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
        raise UserError("--address", f"cannot connect to Ray at {address!r}: {e}{hint}") from None


def local_instance(address: str | None) -> bool:
    """Whether trials run on a local Ray instance on this machine (no ``address``, no ``RAY_ADDRESS``):
    its nodes are all there will be (no autoscaler), and they see this machine's data."""
    return not (address or os.environ.get("RAY_ADDRESS"))


# the start of an HTTP/2 connection (client preface, then an empty SETTINGS frame): Ray's GCS, a
# gRPC server, answers with a SETTINGS frame of its own (frame type 4, the fourth byte)
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` nobody listens at, or where something other than a Ray GCS
    answers (Ray itself retries for minutes, or hangs)."""
    import socket
    if not address or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS GCS answers TLS first: leave it to Ray
            s.sendall(_HTTP2_HELLO)
            head = s.recv(9)
    except (OSError, ValueError) as e:
        raise UserError("--address", f"no Ray cluster at {address} ({e})") from None
    if len(head) < 4 or head[3] != 4:
        raise UserError("--address", f"no Ray cluster at {address}: something listens there, but it does not "
                                     "answer as a Ray cluster's GCS (a gRPC server) does")


def resources(study: Study, fixed_nodes: bool = True) -> tuple[float, float]:
    """(CPUs, GPUs) per trial, the spec's ``null`` decided from the cluster's nodes. A trial that
    fits no node is an error where the nodes are all there will be (a local instance), and a
    warning on a cluster (``fixed_nodes`` false), whose autoscaler may still add one that fits."""
    import ray
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has_gpu = any(r.get("GPU", 0) > 0 for r in nodes)
    gpu = study.gpu
    if gpu is None:
        # cuda needs a GPU per trial: on a cluster an autoscaler may still add the GPU nodes, so wait for them
        waits = study.workload.device == "cuda" and not fixed_nodes
        gpu = 1.0 if (has_gpu or waits) and study.workload.device != "cpu" else 0.0
        if not has_gpu and not fixed_nodes and study.workload.device == "auto":
            warnings.warn("resources.gpu: no GPU node in the Ray cluster, so trials train on CPUs; to wait for "
                          "GPU nodes the autoscaler will add, set resources.gpu: 1", stacklevel=2)
    if gpu > 0 and not has_gpu and fixed_nodes:
        raise UserError("resources.gpu", "the Ray cluster has no GPU (ask for gpu: 0, or add a GPU node)")
    if gpu == 0 and study.workload.device == "cuda":  # (gpu: 0 with cuda is refused when the spec is read)
        raise UserError("workload.device", "cuda asked for, but the Ray cluster has no GPU")
    cpu = study.cpu
    if cpu is None:
        if gpu > 0 and not has_gpu:  # a cluster whose autoscaler has not added its GPU workers yet
            cpu = 1.0
            warnings.warn("resources.gpu: no GPU node in the Ray cluster yet; trials wait until the autoscaler "
                          "adds one, with 1 CPU each (set resources.cpu to the GPU node's CPUs per GPU)", stacklevel=2)
        elif gpu > 0:
            cpu = max(1.0, min(r.get("CPU", 0) // max(r.get("GPU", 0), 1) for r in nodes if r.get("GPU", 0) > 0) * gpu)
        else:
            cpu = min((r["CPU"] for r in nodes if r.get("CPU", 0) > 0), default=1.0)
    # a trial must fit one node, or Tune waits for it forever (no GPU node yet: warned above)
    if (has_gpu or gpu == 0) and not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        most = max((r.get("CPU", 0) for r in nodes if r.get("GPU", 0) >= gpu), default=0)
        field_ = "resources.cpu" if most or gpu == 0 else "resources.gpu"
        where = "a node" if gpu == 0 else f"a node with {gpu:g} GPU(s)"
        message = (f"{cpu:g} CPUs and {gpu:g} GPUs per trial fit no node of the Ray cluster "
                   f"(the most CPUs on {where}: {most:g})")
        if fixed_nodes:
            raise UserError(field_, message)
        warnings.warn(f"{field_}: {message}; trials wait until the autoscaler adds a node that fits", stacklevel=2)
    return float(cpu), float(gpu)


# ------------------------------------------------------------------------------------- search
def _sampler(study: Study, seed: int):
    import optuna
    seed %= 2 ** 32  # numpy's range; the study's seed plus its offsets may pass it
    if study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=study.max_concurrent > 1, seed=seed)


def _optuna_searchers(study: Study, study_dir: Path, strategies: set[str], retry: list[dict] = ()) -> dict:
    """Per searched strategy, ``ConcurrencyLimiter(OptunaSearch)`` on its Optuna study in SQLite.
    Trials an earlier run left RUNNING (a killed driver) or queued are marked FAIL; the settings of
    the ``retry`` rows (failed trials run again) are queued, so they are the strategy's next
    suggestions; the sampler's seed moves on with the study's length, so a resumed run does not
    repeat the first suggestions."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / OPTUNA_FILE).resolve()}")
    out = {}
    for i, plan in enumerate(study.plans):  # i: a stable per-strategy seed offset
        name = plan.name
        if name not in strategies or not plan.space:
            continue
        known = 0
        try:
            old = optuna.load_study(study_name=name, storage=storage)
            stale = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
            for t in old.get_trials(deepcopy=False, states=stale):
                storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            for row in sorted((r for r in retry if r["strategy"] == name), key=lambda r: r["trial_id"]):
                old.enqueue_trial({k: row[k] for k in plan.space})
            known = len(old.trials)
        except KeyError:
            pass
        search = OptunaSearch(space={k: d.to_optuna() for k, d in plan.space.items()}, metric=OBJECTIVES[0],
                              mode=OBJECTIVES[1], sampler=_sampler(study, study.seed + 1000 * i + known),
                              study_name=name, storage=storage)
        out[name] = ConcurrencyLimiter(search, max_concurrent=study.max_concurrent)
    return out


def _searcher_class():
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Hands out the study's slots in order, no strategy's before the first slot ends if that
        is a baseline's (the reference): until then, trials beside it take the baseline's next
        repeats, out of their turn, so no CPU or GPU idles for a whole trial; each strategy's
        hyperparameters from its Optuna searcher (None while its concurrency limit is reached)."""

        def __init__(self, slots: list[tuple[str, int]], searchers: dict, make_config):
            super().__init__(metric=OBJECTIVES[0], mode=OBJECTIVES[1])
            self.pending = list(slots)
            self.searchers = searchers
            self.make_config = make_config
            self.live: dict[str, tuple[str, int]] = {}  # Tune trial id -> slot
            self.reference = slots[0] if slots and slots[0][0] == "baseline" else None

        def suggest(self, trial_id: str):
            if not self.pending:
                return Searcher.FINISHED
            waiting = self.reference in self.pending or self.reference in self.live.values()
            tried = set()
            for slot in self.pending:
                name = slot[0]
                if name in tried or waiting and name != "baseline":
                    continue
                tried.add(name)
                searcher = self.searchers.get(name)
                hparams = {}
                if searcher is not None:
                    hparams = searcher.suggest(trial_id)
                    if hparams is None:
                        continue
                self.pending.remove(slot)
                self.live[trial_id] = slot
                return self.make_config(slot, hparams)
            return None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            slot = self.live.pop(trial_id, None)
            searcher = slot and self.searchers.get(slot[0])
            if searcher is not None:
                ok = not error and result is not None and result.get("status") == "ok"
                searcher.on_trial_complete(trial_id, result if ok else None, error=not ok)

        def save_to_dir(self, *args, **kwargs):  # the study's state is its Parquet files and optuna.db
            pass

    return StudySearcher


def trial_ids(study: Study) -> set[str]:
    """The ids of every trial in the study's budget."""
    return {trial_id(*s) for s in slots_to_run(study, set())}


def slots_to_run(study: Study, done: set[str]) -> list[tuple[str, int]]:
    """(strategy, k) not yet in ``done``, in their order: the baseline's first repeat (every
    speedup's reference), then the strategies round-robin with the baseline's other repeats spread
    evenly among them, the last at the end. So the baselines meet the machine over the whole study:
    a shared machine's speed drifts over tens of seconds (five of the demo's baselines taken back to
    back took 2.2 s to 3.0 s), and repeats taken back to back can agree by chance and hide it."""
    base = [("baseline", k) for k in range(study.plan("baseline").trials)]
    others = [p for p in study.plans if p.name != "baseline"]
    rounds = max((p.trials for p in others), default=0)
    rr = [(p.name, k) for k in range(rounds) for p in others if k < p.trials]
    order, start = base[:1], 0
    for j, slot in enumerate(base[1:], 1):
        cut = round(j * len(rr) / (len(base) - 1))  # strategy slots before this repeat
        order += rr[start:cut] + [slot]
        start = cut
    return [s for s in order + rr[start:] if trial_id(*s) not in done]


def trial_id(strategy: str, k: int) -> str:
    return f"{strategy}-{k:03d}"


# ------------------------------------------------------------------------------------- results
@dataclass
class Standing:
    """The rows of failed trials that ``--resume`` runs again. Each stands in the Parquet files until
    its rerun ends, so an interrupted resume keeps the old error."""
    rows: list[dict]
    epoch_rows: list[dict]

    def write(self, study_dir: Path, rows: list[dict], epoch_rows: list[dict]):
        ran = {r["trial_id"] for r in rows}
        return results.write(study_dir, rows + [r for r in self.rows if r["trial_id"] not in ran],
                             epoch_rows + [r for r in self.epoch_rows if r["trial_id"] not in ran])


def _callback_class():
    from ray import tune

    class ResultsCallback(tune.Callback):
        """Keeps each trial's epoch records; on completion (or final error) adds its row, rewrites
        the Parquet files and prints one line."""

        def __init__(self, study: Study, study_dir: Path, rows: list, epochs: list, total: int, stream: TextIO,
                     outcome: Outcome, standing: Standing):
            self.study, self.study_dir, self.rows, self.epoch_rows = study, study_dir, rows, epochs
            self.standing = standing
            self.total, self.stream, self.outcome = total, stream, outcome
            self.records: dict[str, dict[int, dict]] = {}
            self.done_before = len(rows)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.records[trial.trial_id] = {}

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.records[trial.trial_id] = {}
            self.outcome.retries += 1
            self._say(f"{trial.config['trial_id']}: retry {trial.num_failures} of {self.study.max_failures} "
                      f"after {_error_text(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rec = result.get("record")
            if rec is not None:
                self.records.setdefault(trial.trial_id, {})[rec["epoch"]] = rec

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if not result.get("final"):  # stopped by Ctrl-C before its end: it runs again on --resume
                return
            self.outcome.trial_time_s[trial.config["trial_id"]] = result.get("trial_time_s")
            self.outcome.fit_time_s[trial.config["trial_id"]] = (result.get("train_time_s") or 0) + (result.get("eval_time_s") or 0)
            self.outcome.trial_span[trial.config["trial_id"]] = tuple(result["trial_span"])
            self.outcome.nodes[trial.config["trial_id"]] = result.get("node_id")
            self._add(trial, result)

        def on_trial_error(self, iteration, trials, trial, **info):
            msg = _error_text(trial)
            self._add(trial, {"status": "error", "error": msg})

        def _add(self, trial, result: dict):
            c = trial.config
            w = self.study.workload
            row = {"study": self.study.name, "trial_id": c["trial_id"], "strategy": c["strategy"], "model": w.model,
                   "dataset": w.dataset, "epochs": w.epochs, "seed": c["seed"], "status": result.get("status"),
                   "error": result.get("error"), **{k: result.get(k) for k in
                   ("test_accuracy", "train_time_s", "train_flops", "flops_saved", "device_name")},
                   **ran_with(c["strategy"], c["hparams"])}
            self.rows.append(row)
            self.epoch_rows.extend({"trial_id": c["trial_id"], **r}
                                   for _, r in sorted(self.records.pop(trial.trial_id, {}).items()))
            df = self.standing.write(self.study_dir, self.rows, self.epoch_rows)
            mine = df[df["trial_id"] == c["trial_id"]].iloc[0]
            self._say(_line(mine, len(self.rows), self.total + self.done_before, c["hparams"]))

        def _say(self, text: str):
            print(text, file=self.stream or sys.stdout, flush=True)

        def __getstate__(self):  # Tune pickles its callbacks into tuner.pkl; a stream does not pickle
            return {**self.__dict__, "stream": None}

    return ResultsCallback


def _error_text(trial) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()[:2000]
    return "the trial failed (no error message)"


def ran_with(strategy: str, hparams: dict) -> dict:
    """Every hyperparameter a trial ran with: its searched and held values, and the strategy's
    defaults for the rest (so a row says how the trial ran even where the spec left a setting out)."""
    from . import strategies
    cls = strategies.REGISTRY.get(strategy)
    return {**({k: hp.default for k, hp in cls.hparams.items()} if cls else {}), **hparams}


def _line(row, n: int, total: int, hparams: dict) -> str:
    hp = " ".join(f"{k}={format_value(v)}" for k, v in hparams.items())  # as pareto prints them: true, 0.281
    fmt = format_or_dash
    text = (f"[{n:>3}/{total}] {row['trial_id']:<22} {row['status']:<8} acc {fmt(row['test_accuracy'], '.4f')}"
            f"  train {fmt(row['train_time_s'], '.1f', 's')}  time saved {fmt(row['time_saved'], '+.1%')}"
            f"  flops saved {fmt(row['flops_saved'], '+.1%')}  {hp}")
    if row["status"] == "error":
        text += f"\n      error: {row['error']}"
    return text.rstrip()


# ------------------------------------------------------------------------------------- run
def holds_study(study_dir: Path) -> bool:
    """Whether an earlier run left a study here (optuna.db alone is one: a fresh run would continue
    its sampler's history)."""
    return any((study_dir / f).is_file() for f in ("trials.parquet", CONFIG_FILE, OPTUNA_FILE))


def prepare(study: Study, output: str | Path, resume: bool) -> Path:
    """Check the study directory before anything runs: an earlier study there needs ``--resume``,
    and ``--resume`` needs the same spec (trial budgets may change)."""
    if not str(output).strip():  # Path("") is the current directory
        raise UserError("--output", "is empty; name a directory (default: results)")
    check_output_dir(Path(output))
    study_dir = Path(output) / study.name
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError("--output", f"{study_dir} is a file; the study {study.name!r} needs that name for its "
                        "directory (choose another --output)")
    saved = study_dir / CONFIG_FILE
    has_results = holds_study(study_dir)
    if has_results and not resume:
        raise UserError("--output", f"{study_dir} already holds study {study.name!r}; pass --resume to finish it, "
                        "or choose another --output")
    if resume and not has_results:  # a mistyped --output would otherwise run the whole study again
        raise UserError("--resume", f"{study_dir} holds no study {study.name!r} to resume; "
                        "check --output, or leave out --resume to start it")
    if resume and not saved.is_file() and (study_dir / "trials.parquet").is_file():
        rows, _ = results.read_rows(study_dir)  # no saved config to compare: the rows' own workload columns
        for key in ("model", "dataset", "epochs"):
            now, seen = getattr(study.workload, key), {r.get(key) for r in rows} - {None}
            if seen - {now}:
                raise UserError(f"workload.{key}", f"{now!r} here, {sorted(seen - {now}, key=str)[0]!r} in "
                                f"{study_dir / 'trials.parquet'} (its {CONFIG_FILE} is missing); resume with the same spec")
    if resume and saved.is_file():
        before = saved_config(saved)
        now = study.to_dict()
        pairs = [(key, before.get(key), now.get(key)) for key in ("workload", "test_subset", "seed", "sampler", "plugins")]
        old = before.get("strategies") or {}
        pairs += [(f"strategies.{name}.search", old[name].get("search"), s["search"])
                  for name, s in now["strategies"].items() if old.get(name) is not None]
        given = {f"strategies.{p.name}.search.{key}" for p in study.plans for key in p.given}
        for path, was, is_ in pairs:
            field_, was, is_ = first_difference(path, was, is_)
            if field_ is not None:
                hint = ("the spec gives it no range, and ldtune's default range changed since"
                        if field_.startswith("strategies.") and field_ not in given else "resume with the same spec")
                raise UserError(field_, f"{is_!r} here, {was!r} in the study being resumed ({saved}); {hint}")
    return study_dir


def saved_config(path: Path) -> dict:
    """The ``study.yaml`` an earlier run saved; one that no longer parses is the user's to mend (exit 2)."""
    try:
        before = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise UserError(str(path), f"cannot read the saved study config ({type(e).__name__}: {e})") from None
    if not isinstance(before or {}, dict):
        raise UserError(str(path), "not a study config ldtune saved (expected a mapping)")
    return before or {}


def first_difference(path: str, a, b) -> tuple[str | None, object, object]:
    """``(dotted path, a's value, b's value)`` of the first place where two plain configs differ
    (dicts compared key by key, in sorted order), or ``(None, a, b)`` where they are equal."""
    if a == b:
        return None, a, b
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = first_difference(f"{path}.{k}", a.get(k), b.get(k))
            if found[0] is not None:
                return found
    return path, a, b


def check_output_dir(output: Path) -> None:
    """``--output`` must be a directory we can write, or one we can create (checked before Ray starts)."""
    here = output
    while not here.exists() and here != here.parent:
        if here.is_symlink():
            raise UserError("--output", f"{here} is a link to {os.readlink(here)}, which does not exist")
        here = here.parent
    if not here.is_dir():
        raise UserError("--output", f"{here} is a file, not a directory" if here == output
                        else f"cannot create {output}: {here} is a file")
    try:  # os.access says yes to root everywhere, /proc included: try it
        os.rmdir(tempfile.mkdtemp(prefix=".ldtune-probe-", dir=here))
    except OSError as e:
        raise UserError("--output", f"cannot write {output}: {here}: {e.strerror}") from None


@dataclass
class Left:
    """What a run of the study has to do: the ``rows`` and ``epoch_rows`` kept from before, the
    failed trials it runs again (``standing``) and the ``slots`` to run, those included."""
    rows: list[dict]
    epoch_rows: list[dict]
    standing: Standing
    slots: list[tuple[str, int]]


def left_to_run(study: Study, study_dir: Path | None) -> Left:
    """What is left of the study whose results are in ``study_dir`` (None: a new study, all of it)."""
    rows, epoch_rows = results.read_rows(study_dir) if study_dir else ([], [])
    # a failure may have been the machine's: --resume runs the study's failed trials again, with the
    # settings they failed with (a trial outside a reduced budget is kept as it was)
    in_study = trial_ids(study)
    retry = [r for r in rows if r["status"] == "error" and r["trial_id"] in in_study]
    failed = {r["trial_id"] for r in retry}
    return Left(rows=[r for r in rows if r["trial_id"] not in failed],
                epoch_rows=[r for r in epoch_rows if r["trial_id"] not in failed],
                standing=Standing(retry, [r for r in epoch_rows if r["trial_id"] in failed]),
                slots=slots_to_run(study, {r["trial_id"] for r in rows if r["trial_id"] not in failed}))


def _save_config(study: Study, study_dir: Path, resources: dict) -> None:
    """``study.yaml``: the spec as resolved, with the per-trial resources the trials ran with."""
    resolved = study.to_dict()
    resolved["resources"] = resources
    (study_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))


def _nothing_left(study: Study, study_dir: Path, left: Left, stream: TextIO, start: float) -> Outcome:
    """``--resume`` of a finished study: its files are written again (a newer ldtune may add to
    them, a smaller trial budget goes into ``study.yaml``) and nothing else happens."""
    saved = saved_config(study_dir / CONFIG_FILE) if (study_dir / CONFIG_FILE).is_file() else {}
    _save_config(study, study_dir, saved.get("resources") or study.to_dict()["resources"])
    print(f"study {study.name}: nothing left to run ({plural(len(left.rows), 'trial')} done before); "
          f"results in {study_dir}", file=stream, flush=True)
    trials = left.standing.write(study_dir, left.rows, left.epoch_rows)
    return Outcome(study_dir=study_dir, trials=trials, interrupted=False, wall_s=time.perf_counter() - start)


LOCK_FILE = ".lock"  # in the study directory: held (flock) by the one driver writing it


def lock_study_dir(study_dir: Path) -> int | None:
    """One ``ldtune run`` per study directory at a time: a second (a ``--resume`` while the first
    still runs) would run the same trials again and overwrite the other's rows. An advisory
    ``flock`` on ``LOCK_FILE``, opened for writing so that NFS locks it across machines too; it is
    released when the descriptor returned is closed (``unlock_study_dir``) or the process dies.
    None where the directory does not exist yet, or its filesystem takes no locks (with a warning)."""
    import fcntl
    if not study_dir.is_dir():
        return None
    try:
        fd = os.open(study_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        warnings.warn(f"{study_dir}: cannot create {LOCK_FILE} ({e.strerror}); nothing stops a second run "
                      "writing this study at the same time", stacklevel=2)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError("--output", f"{study_dir} is being written by another `ldtune run` of study "
                        f"{study_dir.name!r}; let it end (or stop it) first") from None
    except OSError as e:
        os.close(fd)
        warnings.warn(f"{study_dir}: its filesystem takes no locks ({e.strerror}); nothing stops a second run "
                      "writing this study at the same time", stacklevel=2)
        return None
    return fd


def unlock_study_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def run_study(study: Study, output: str | Path = "results", *, address: str | None = None, resume: bool = False,
              callbacks=(), stream: TextIO | None = None, interrupted_note: str | None = None) -> Outcome:
    """Run ``study`` into ``output/<name>``. ``interrupted_note`` goes to stderr if the local Ray
    instance ends under the run (see :func:`_watch_gcs`), where this process then exits at once."""
    start = time.perf_counter()
    study_dir = prepare(study, output, resume)
    # a new study's directory does not exist yet: _run locks it once made (nothing written before)
    locks = [lock_study_dir(study_dir)] if study_dir.is_dir() else []
    try:
        return _run_study(study, study_dir, start, address, resume, callbacks, stream, locks, interrupted_note)
    finally:
        for fd in locks:
            unlock_study_dir(fd)


def _run_study(study: Study, study_dir: Path, start: float, address: str | None, resume: bool, callbacks,
               stream: TextIO | None, locks: list, interrupted_note: str | None = None) -> Outcome:
    left = left_to_run(study, study_dir if resume else None)
    if resume and not left.slots:  # a finished study resumed: no Ray to start, no data to check
        return _nothing_left(study, study_dir, left, stream or sys.stdout, start)
    fixed_nodes = local_instance(address)
    check_data(study, trials_here=fixed_nodes)
    started = connect(address)
    try:
        gcs = _local_gcs() if started and fixed_nodes else None
        return _run(study, study_dir, left, list(callbacks), stream, start, fixed_nodes, locks, gcs, interrupted_note)
    finally:
        if started:
            import ray
            ray.shutdown()


def _run(study: Study, study_dir: Path, left: Left, callbacks: list, stream: TextIO | None, start: float,
         fixed_nodes: bool = True, locks: list | None = None, gcs=None, interrupted_note: str | None = None) -> Outcome:
    stream = stream or sys.stdout
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; we print a line per trial
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
    import ray
    from ray import tune

    saved = study_dir / CONFIG_FILE
    inherited: dict[str, float] = {}  # per-trial resources taken from the study being resumed
    if left.rows and saved.is_file():  # a trial's time compares only with trials given the same resources
        was = {k: float(v) for k, v in (saved_config(saved).get("resources") or {}).items()
               if k in ("cpu", "gpu") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, val in was.items():
            given = getattr(study, key)
            if given is not None and float(given) != val:
                raise UserError(f"resources.{key}", f"{given:g} per trial here, {val:g} in the study being resumed "
                                f"({saved}); its trials' times would not compare with the earlier ones (set "
                                f"resources.{key}: {val:g}, or leave it out, to resume it)")
        # what the spec leaves to the cluster is what the first run decided, not what this cluster would
        inherited = {k: v for k, v in was.items() if getattr(study, k) is None}
        study = dataclasses.replace(study, **inherited)
    try:
        cpu, gpu = resources(study, fixed_nodes)
    except UserError as e:  # a value the spec does not set: its advice (set another) would be refused above
        key = e.field.removeprefix("resources.")
        if key not in inherited:
            raise
        why = "this Ray cluster has no GPU" if key == "gpu" and "no GPU" in e.message else e.message
        raise UserError(e.field, f"the study being resumed ran with {inherited[key]:g} {key.upper()}(s) per trial "
                        f"({saved}), and {why}; resume it on a Ray cluster where its trials fit") from None
    study_dir.mkdir(parents=True, exist_ok=True)
    if locks == []:  # a new study: lock it now, and make sure no other run started it meanwhile
        locks.append(lock_study_dir(study_dir))
        if holds_study(study_dir):
            raise UserError("--output", f"{study_dir}: another `ldtune run` of study {study.name!r} started it "
                            "meanwhile; let it end, then pass --resume to finish it")
    _save_config(study, study_dir, {"cpu": cpu, "gpu": gpu})
    rows, epoch_rows, retry, slots = left.rows, left.epoch_rows, left.standing.rows, left.slots
    standing, failed = left.standing, {r["trial_id"] for r in retry}
    outcome = Outcome(study_dir=study_dir, trials=None, interrupted=False, wall_s=0.0)
    total = len(slots)
    before = [f"{len(rows)} done before"] * bool(rows) + [f"{len(failed)} that failed before run again"] * bool(failed)
    print(f"study {study.name}: {plural(total, 'trial')} to run"
          + (f" ({'; '.join(before)})" if before else "")
          + f", {cpu:g} CPU and {gpu:g} GPU per trial, Ray {ray.__version__} "
          f"({sum(n['Alive'] for n in ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs); "
          f"results in {study_dir}",
          file=stream, flush=True)
    if slots:
        print("each trial's time saved below is against the baselines finished by then; trials.parquet, "
              "rewritten as each trial finishes, holds it against all of them", file=stream, flush=True)
        w = dataclasses.asdict(study.workload)
        w.pop("seed")
        # a `ray start` node's workers have that node's environment, not this one's: ldtune's settings travel
        env = {k: v for k, v in os.environ.items() if k.startswith("LDTUNE_")}

        def make_config(slot, hparams):
            name, k = slot
            return {"study": study.name, "trial_id": trial_id(name, k), "strategy": name,
                    "hparams": {**study.plan(name).fixed, **hparams}, "seed": study.trial_seed(k),
                    "data_seed": study.seed, "test_subset": study.test_subset, "workload": w, "threads": max(1, int(cpu)), "plugins": study.plugins,
                    "env": env}

        searcher = _searcher_class()(slots, _optuna_searchers(study, study_dir, {s for s, _ in slots}, retry),
                                     make_config)
        cb = _callback_class()(study, study_dir, rows, epoch_rows, total, stream, outcome, standing)
        from .trainable import trainable
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": cpu, "gpu": gpu}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=total, reuse_actors=True,
                                        trial_name_creator=lambda t: t.config["trial_id"],
                                        trial_dirname_creator=lambda t: t.config["trial_id"]),
            run_config=tune.RunConfig(name=time.strftime("run-%Y%m%d-%H%M%S"),
                                      storage_path=str((study_dir / TUNE_DIR).resolve()),
                                      failure_config=tune.FailureConfig(max_failures=study.max_failures),
                                      callbacks=[cb, *callbacks], verbose=0))
        # readable output: our one line per trial says every failure and retry, so Tune's own
        # tracebacks, INFO notes and the missing-result-files warning (by design) stay quiet
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)  # its Ctrl-C advice is Tuner.restore; ours is --resume
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.CRITICAL)
        sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:  # a cancelled job gets SIGTERM: stop as Ctrl-C does (else Ray's handler aborts)
            signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))

        def instance_lost(how: str, stopped: bool) -> None:
            with results.WRITING:  # held to the exit: no rewrite of the files is cut short by it
                standing.write(study_dir, rows, epoch_rows)
                print(f"stopped: the local Ray instance ended under the study (its GCS server {how}); "
                      f"{_saved(rows, slots)}", file=stream, flush=True)
                if interrupted_note:
                    print(interrupted_note, file=sys.stderr, flush=True)
                os._exit(130 if stopped else 1)  # stopped: as for SIGTERM to this process alone

        stop_watching = _watch_gcs(gcs, instance_lost) if gcs is not None else lambda: None
        try:
            tuner.fit()
        finally:  # Tune leaves its own handler installed, which would swallow the caller's next Ctrl-C
            stop_watching()
            if main_thread:
                signal.signal(signal.SIGINT, sigint)
                signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)
    outcome.trials = standing.write(study_dir, rows, epoch_rows)
    done = {r["trial_id"] for r in rows}
    outcome.interrupted = any(trial_id(*s) not in done for s in slots)
    outcome.wall_s = time.perf_counter() - start
    own = sum(v for v in outcome.trial_time_s.values() if v)
    if outcome.interrupted:
        print(f"stopped: {_saved(rows, slots)}", file=stream, flush=True)
    elif own:
        fit_s = sum(outcome.fit_time_s.values())
        busy = busy_seconds(outcome.trial_span.values())
        print(f"done: {plural(len(outcome.trial_time_s), 'trial')} in {outcome.wall_s:.1f}s wall, {busy:.1f}s of it with "
              f"a trial running; the trials themselves ran {own:.1f}s ({fit_s:.1f}s of it training and evaluation): "
              f"platform overhead {outcome.wall_s / busy - 1:+.1%}", file=stream, flush=True)
    report_noise(outcome.trials, stream)
    return outcome


def _saved(rows: list[dict], slots) -> str:
    done = {r["trial_id"] for r in rows}
    total = len(done) + len([s for s in slots if trial_id(*s) not in done])
    return f"{len(done)} of {plural(total, 'trial')} finished and saved"


def _local_gcs():
    """``(process, "host:port")`` of the GCS server of the Ray instance this driver started
    (``ray.init`` without an address), or None. Ray keeps them in private state, so they are looked
    up defensively."""
    try:
        from ray._private import worker
        from ray._private.ray_constants import PROCESS_TYPE_GCS_SERVER
        node = worker._global_node
        return node.all_processes[PROCESS_TYPE_GCS_SERVER][0].process, node.gcs_address
    except (ImportError, AttributeError, KeyError, IndexError, TypeError):
        return None


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # signals that stop a job, rather than kill it


def _gcs_gone(gcs) -> tuple[str, bool] | None:
    """How the local instance's GCS ended (for a message) and whether a stop ended it (not a crash
    or SIGKILL), or None while it serves. One that gets SIGTERM stops serving at once, and its
    process can linger in its shutdown, so a refused connection counts as that stop."""
    import socket
    process, address = gcs
    code = process.poll()
    if code is not None:
        try:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        except ValueError:
            how = f"was killed by signal {-code}"
        return how, code == 0 or -code in STOPS  # 0: it shut down in order (`ray stop` sends SIGTERM)
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return "stopped serving", True
    except OSError:  # slow to answer is not gone
        pass
    return None


def _watch_gcs(gcs, lost, every: float = 0.5):
    """Call ``lost(how, stopped)`` (of :func:`_gcs_gone`) from a thread once the local instance's
    GCS ``gcs`` (of :func:`_local_gcs`) has ended; return the function that stops watching.

    A job stopped as a whole (SIGTERM to its process group or cgroup: SLURM's scancel, systemd,
    ``kill -- -PGID``) stops Ray's own processes with the driver, as they block only SIGINT. No
    trial can finish after that, and Tune blocks in a call to the dead GCS until Ray's 60 s
    reconnect timeout ends the process with status 1; ``lost`` exits at once instead."""
    done = threading.Event()

    def watch():
        while not done.wait(every):
            gone = _gcs_gone(gcs)
            if gone is not None:
                return lost(*gone)

    thread = threading.Thread(target=watch, name="ldtune-gcs-watch", daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join()
    return stop


def report_noise(trials, stream) -> None:
    """The noise floor of the study's time savings, per device, on ``stream``; a warning where it is
    above ``NOISY``."""
    for device, runs, spread in baseline_noise(trials):
        print(f"baseline on {device}: {runs} runs, half their range ±{spread:.1%} of their median training time; "
              "smaller time_saved differences are timing noise", file=stream, flush=True)
        if spread > NOISY:
            warnings.warn(f"baseline training times on {device}: half their range ±{spread:.1%} of their median: the machine was busy or the "
                          "runs are too short to time; time_saved is unreliable (more baseline.repeats, longer "
                          "runs, or a quiet machine)", stacklevel=3)


def busy_seconds(spans) -> float:
    """Seconds covered by at least one of the ``(start, end)`` spans: the part of a study's wall time
    in which some trial ran. Trials that overlap (several slots, several nodes) count once, so wall
    time over it, less one, is the platform's overhead however many trials ran at a time."""
    busy, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return busy


NOISY = 0.10  # baseline spread (half the range over the median) above which a study's time_saved is flagged


def baseline_noise(trials) -> list[tuple[str, int, float]]:
    """``(device_name, runs, spread)`` per device of the study's ``ok`` baseline trials, where two
    or more ran: the noise floor of every ``time_saved`` measured against them."""
    from .bench import timing_spread
    base = trials[(trials["strategy"] == "baseline") & (trials["status"] == "ok")]
    return [(str(d), len(g), timing_spread(g["train_time_s"].tolist()))
            for d, g in base.groupby("device_name", sort=True) if len(g) > 1]


__all__ = ["run_study", "Outcome", "connect", "local_instance", "resources", "slots_to_run", "trial_id", "trial_ids", "prepare"]
