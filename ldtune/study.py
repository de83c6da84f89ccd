"""Study specs: ``studies/*.yaml`` parsed into a typed, validated :class:`Study`.

A spec names the study, the workload every trial trains (the fields of
:class:`ldtune.train.Workload`), the baseline's repeats, and per strategy a trial budget and a
search space. A strategy's searchable hyperparameters default to the ranges its ``HParam.search``
declares (the papers' ranges); a spec may narrow or widen a range within the valid bounds, give a
list of choices, or hold a hyperparameter at one value. Every mistake is a :class:`UserError`
naming the field (``workload.epochs``, ``strategies.freezeout.search.t0``, ...).

Example (``studies/quickstart.yaml`` is a complete one)::

    name: demo
    workload: {model: resnet20, width: 8, dataset: fashion_mnist, subset: 2048, epochs: 3}
    baseline: {repeats: 3}
    strategies:
      freezeout: {trials: 4, search: {t0: [0.5, 0.9], scale_lr: true}}
      all: {trials: 2}          # every other registered strategy, default search spaces
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from . import strategies
from .errors import UserError
from .train import MAX_SEED, Workload
from .text import format_value, plural, subset_text

ALL = "all"  # key under `strategies` that stands for every registered strategy not listed
_STRICT = ConfigDict(extra="forbid", strict=True)

# The workload part of a spec: every field of ldtune.train.Workload (units are commented there)
# except `seed`, which the study sets per trial. Built from the dataclass so the two never drift.
_hints = typing.get_type_hints(Workload)
WorkloadSpec = create_model(
    "WorkloadSpec", __config__=_STRICT,
    **{f.name: (_hints[f.name], f.default) for f in dataclasses.fields(Workload) if f.name != "seed"})


class BaselineSpec(BaseModel):
    model_config = _STRICT
    repeats: int = Field(3, ge=1)  # baseline trials (seeds seed, seed+1, ...); their median is the reference


class StrategySpec(BaseModel):
    model_config = _STRICT
    trials: int = Field(3, ge=1)  # trials of this strategy (each one Optuna suggestion)
    # per hyperparameter: [low, high] for a number, a list of choices, or one value to hold fixed;
    # searchable hyperparameters not named here get the strategy's default range (HParam.search)
    search: dict[str, Any] = Field(default_factory=dict)


class ResourcesSpec(BaseModel):
    model_config = _STRICT
    # CPUs per trial; null: every CPU of the smallest node (CPU trials never share cores, so
    # their timings stay honest), or that node's CPUs per GPU when trials use a GPU
    cpu: float | None = Field(None, gt=0)
    # GPUs per trial; null: 1 when the workload runs on cuda/auto and the cluster has GPUs (cuda: or
    # may get them, an autoscaling cluster), else 0.
    # A fraction shares a GPU between trials (allowed, with a warning: it distorts timings)
    gpu: float | None = Field(None, ge=0)


class StudySpec(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the results directory: DIR/<name>/
    # data subset seed, and trial k of every strategy trains with seed + k (room left below MAX_SEED)
    seed: int = Field(0, ge=0, le=MAX_SEED // 2)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)  # what every trial trains
    # test images every evaluation uses (a seeded, class-balanced subset of the test set, the same
    # for every trial); null: the whole test set. Evaluation runs after every epoch and is not
    # training time, but it is trial time: a small study is faster with fewer test images
    test_subset: int | None = Field(None, ge=1)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    strategies: dict[str, StrategySpec] = Field(default_factory=dict)  # name (or `all`) -> budget, space
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"  # Optuna sampler: multivariate TPE, NSGA-II, random
    max_concurrent: int = Field(2, ge=1)  # trials of one strategy in flight at once (Optuna sees the rest)
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker process or node died
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)  # per trial
    plugins: list[str] = Field(default_factory=list)  # modules imported first (driver and trials); each may register strategies

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, v):
        """A section with nothing under it (YAML's null: ``baseline:``, ``freezeout:``) takes its
        defaults, as ``{}`` does."""
        if not isinstance(v, dict):
            return v
        v = {k: x for k, x in v.items() if not (x is None and k in ("workload", "baseline", "resources", "strategies"))}
        if isinstance(v.get("strategies"), dict):
            v["strategies"] = {k: ({} if x is None else x) for k, x in v["strategies"].items()}
        return v


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: a float or int range (inclusive), or categorical choices."""
    kind: str  # 'float', 'int' or 'categorical'
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def to_optuna(self):
        import optuna
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.CategoricalDistribution(self.choices)

    def to_yaml(self):
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass
class StrategyPlan:
    name: str
    trials: int  # trials of this strategy (baseline: its repeats)
    space: dict[str, Dim] = field(default_factory=dict)  # searched hyperparameters
    fixed: dict[str, Any] = field(default_factory=dict)  # held at one value; the rest keep their defaults
    given: tuple[str, ...] = ()  # hyperparameters the spec's search names (the others: default ranges)


@dataclass
class Study:
    name: str
    seed: int
    workload: Workload  # seed = the study's seed (data subset); trials override it
    test_subset: int | None  # test images per evaluation; None: all
    plans: list[StrategyPlan]  # baseline first
    sampler: str
    max_concurrent: int
    max_failures: int
    cpu: float | None  # CPUs per trial; None: decided on the cluster (see ResourcesSpec)
    gpu: float | None  # GPUs per trial; None: decided on the cluster
    plugins: list[str]
    source: str | None = None  # the spec file

    @property
    def total_trials(self) -> int:
        return sum(p.trials for p in self.plans)

    def plan(self, name: str) -> StrategyPlan:
        return next(p for p in self.plans if p.name == name)

    def trial_seed(self, index: int) -> int:
        return self.seed + index

    def to_dict(self) -> dict:
        """The resolved config (saved as ``study.yaml`` beside the results, timm style)."""
        w = dataclasses.asdict(self.workload)
        w.pop("seed")
        return {
            "name": self.name, "seed": self.seed, "workload": w, "test_subset": self.test_subset,
            "baseline": {"repeats": self.plan("baseline").trials},
            "strategies": {p.name: {"trials": p.trials,
                                    "search": {**{k: d.to_yaml() for k, d in p.space.items()}, **p.fixed}}
                           for p in self.plans if p.name != "baseline"},
            "sampler": self.sampler, "max_concurrent": self.max_concurrent, "max_failures": self.max_failures,
            "resources": {"cpu": self.cpu, "gpu": self.gpu}, "plugins": list(self.plugins),
        }


# ------------------------------------------------------------------------------------- parsing
class _SpecLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the explicit keys; a merge (<<) may still be overridden by one
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load(path: str | Path) -> Study:
    """Read and validate a study spec file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(str(path), "a directory, not a study spec file")
    if not path.is_file():
        raise UserError(str(path), "no such file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except UnicodeDecodeError:
        raise UserError(str(path), "not UTF-8 text (a study spec is a YAML file)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(str(path), f"not valid YAML{where}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"
                        ) from None
    if not isinstance(raw, dict):
        raise UserError(str(path), "a study spec is a YAML mapping (name, workload, strategies, ...)")
    study = from_dict(raw)
    study.source = str(path)
    return study


def _explain(err: dict) -> str:
    """pydantic's message for one error, with what a user needs to fix it: the known keys (and the
    nearest one) for an unknown key, the value given for a wrong one."""
    if err["type"] == "extra_forbidden":
        known = _known_keys(err["loc"][:-1])
        if known:
            near = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            return ("unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
                    + f"; known: {', '.join(known)}")
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and err["type"] != "missing":
        return f"{err['msg']}, got {value!r}"
    return err["msg"]


def _known_keys(loc: tuple) -> list[str] | None:
    """The field names of the spec section at ``loc`` (e.g. ``("strategies", "freezeout")``)."""
    t: Any = StudySpec
    for part in loc:
        if isinstance(t, type) and issubclass(t, BaseModel) and part in t.model_fields:
            t = t.model_fields[part].annotation
        elif typing.get_origin(t) is dict:
            t = typing.get_args(t)[1]
        else:
            return None
    return list(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else None


def from_dict(raw: dict) -> Study:
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        raise UserError(loc, _explain(err)) from None
    strategies.import_plugins(spec.plugins)
    workload = _workload(spec)
    if spec.test_subset is not None and (workload.dataset == "imagenette" or workload.dataset.startswith("imagefolder:")):
        raise UserError("test_subset", f"only for datasets held as tensors, not the streamed {workload.dataset}")
    plans = [StrategyPlan("baseline", spec.baseline.repeats)]
    if raw.get("strategies") is None:  # `strategies: {}` says so on purpose (recommend writes it)
        warnings.warn(f"strategies: none named, so the study runs the baseline only; `strategies: {{{ALL}: "
                      "{trials: 2}}` runs every registered strategy", stacklevel=3)
    named = dict(spec.strategies)
    if "baseline" in named:
        raise UserError("strategies.baseline", "the baseline is not searched; set baseline.repeats instead")
    default = named.pop(ALL, None)
    if default is not None and default.search:
        raise UserError(f"strategies.{ALL}.search", "give search spaces per strategy, not under `all`")
    for name in named:
        if name not in strategies.REGISTRY:
            raise strategies.unknown(f"strategies.{name}", load_with="plugins: [MODULE] in the spec")
    implicit = set()  # the strategies that `all` adds
    if default is not None:
        for name in sorted(strategies.REGISTRY):
            if name != "baseline" and name not in named:
                named[name] = default
                implicit.add(name)
    for name, s in named.items():
        plans.append(_plan(name, s, workload.epochs))
    plans = _fitting_model(workload, plans, implicit)
    if spec.resources.gpu is not None and spec.resources.gpu > 0 and workload.device == "cpu":
        raise UserError("resources.gpu", "the workload runs on cpu (workload.device); ask for no GPU")
    if spec.resources.gpu == 0 and workload.device == "cuda":  # refused on every cluster: say so here
        raise UserError("workload.device", "cuda asked for, but resources.gpu is 0")
    if spec.resources.gpu is not None and 0 < spec.resources.gpu < 1:
        warnings.warn(f"resources.gpu = {spec.resources.gpu}: trials share a GPU, which distorts their timings "
                      "(time_saved, speedup)", stacklevel=2)
    return Study(name=spec.name, seed=spec.seed, workload=workload, test_subset=spec.test_subset, plans=plans,
                 sampler=spec.sampler,
                 max_concurrent=spec.max_concurrent, max_failures=spec.max_failures, cpu=spec.resources.cpu,
                 gpu=spec.resources.gpu, plugins=list(spec.plugins))


def check_data(study: Study, trials_here: bool = True) -> None:
    """Load the study's data on this machine, as each trial will (on the CPU), so that a subset
    larger than the dataset is one error naming the field before any trial starts, not the same
    error in every trial; a test_subset larger than the test set is a warning (all are used). A
    batch_size of 1 where the net's maps reach 1x1 at the data's image size is an error here too.

    Data this machine cannot load is an error where the trials run here (``trials_here``; a
    dataset not yet downloaded is downloaded, once, as a trial would), and a warning where they
    may run elsewhere (a cluster whose nodes hold data this machine lacks; ``validate``), which
    download nothing."""
    from .data import warn_beyond_test_set
    from .train import check_batch_size_for, load_data
    w = dataclasses.replace(study.workload, device="cpu")
    try:
        data = load_data(w, download=trials_here)
    except UserError as e:
        field = e.field if e.field == "LDTUNE_DATA" else f"workload.{e.field}"  # an env var is no spec field
        if trials_here or e.field not in ("data_root", "dataset", "LDTUNE_DATA"):
            raise UserError(field, e.message) from None
        why = re.sub(r"[.;]? *You can use download=True to download it\.?", "", e.message)  # torchvision's advice
        warnings.warn(f"{field}: {why}; subset and test_subset are unchecked here "
                      "(the trials load or download the data where they run)", stacklevel=2)
        return
    warn_beyond_test_set(data, study.test_subset, study.workload.dataset, "test_subset", "the trials evaluate")
    try:
        check_batch_size_for(w, data)
    except UserError as e:
        raise UserError(f"workload.{e.field}", e.message) from None


def _workload(spec: StudySpec) -> Workload:
    values = spec.workload.model_dump()
    if values["data_root"] is not None:
        values["data_root"] = str(Path(values["data_root"]).expanduser().resolve())  # trials may run elsewhere
    w = Workload(**values, seed=spec.seed)
    # the driver need not have the GPU its trials will run on: check everything but CUDA's presence here
    check = dataclasses.replace(w, device="cpu") if w.device == "cuda" else w
    try:
        check.validate()
    except UserError as e:
        raise UserError(f"workload.{e.field}", e.message) from None
    return w


def _fitting_model(w: Workload, plans: list[StrategyPlan], implicit: set[str]) -> list[StrategyPlan]:
    """The plans whose strategy can take the study's net, tried with each strategy's ``prepare_model``
    on the net built on the meta device (no memory, no data). A strategy named in the spec that
    cannot (stochastic depth on a VGG) is one error naming it here, not the same error in every
    trial; one that only `all` added is left out, with a warning."""
    import copy
    import torch
    from . import models
    kept, left_out = [], []
    with torch.device("meta"):
        net = models.build(w.model, 3, 10, width=w.width, image_size=w.image_size or 32)
        for plan in plans:
            if plan.name != "baseline":
                try:  # on a copy: prepare_model may change the net (Depth Dropout's shortcuts)
                    strategies.create(plan.name, **plan.fixed).prepare_model(copy.deepcopy(net))
                except UserError as e:
                    if plan.name not in implicit:
                        raise UserError(f"strategies.{plan.name}", f"{e.message} (workload.{e.field})") from None
                    left_out.append(plan.name)
                    continue
            kept.append(plan)
    if left_out:
        warnings.warn(f"strategies.{ALL}: {', '.join(left_out)} left out; {w.model} cannot take them", stacklevel=3)
    return kept


def _plan(name: str, s: StrategySpec, epochs: int) -> StrategyPlan:
    cls = strategies.REGISTRY[name]
    where = f"strategies.{name}.search"
    for key in s.search:
        if key not in cls.hparams:
            raise UserError(f"{where}.{key}", f"unknown hyperparameter of {name} (known: {', '.join(cls.hparams) or 'none'})")
    space, fixed = {}, {}
    for key, hp in cls.hparams.items():
        if key in s.search:
            value = s.search[key]
            if isinstance(value, (list, tuple)):
                space[key] = _dim(hp, key, list(value), f"{where}.{key}", name)
            else:
                fixed[key] = _check(hp, key, value, f"{where}.{key}", name)
        elif hp.search is not None:
            space[key] = _default_dim(hp, epochs)
    for key, dim in list(space.items()):  # a range of one value is a fixed value
        if dim.kind != "categorical" and dim.low == dim.high or dim.kind == "categorical" and len(dim.choices) == 1:
            fixed[key] = dim.choices[0] if dim.kind == "categorical" else cls.hparams[key].kind(dim.low)
            del space[key]
    for key, hp in cls.hparams.items():  # given values an epoch count too large to act in this study
        if key in s.search and hp.is_epoch_count:
            hp.warn_if_never_acts(f"{where}.{key}", fixed[key] if key in fixed else space[key].high, epochs)
    try:
        cls(**fixed)  # the strategy's own cross-field checks on the held values
    except UserError as e:
        raise UserError(f"{where}.{e.field.split('.')[-1]}", e.message) from None
    return StrategyPlan(name, s.trials, space, fixed, given=tuple(s.search))


def _check(hp, key, value, where, strategy):
    # a spec is typed YAML: a quoted number or boolean is a mistake here (``--set``'s text is not)
    if isinstance(value, str) and hp.kind is not str:
        what = "true or false" if hp.kind is bool else f"a number ({hp.kind.__name__})"
        raise UserError(where, f"must be {what}, got the string {value!r} (write it without quotes)")
    if hp.kind is bool and not isinstance(value, bool):  # --set's 1 and 0 are taken; YAML has true and false
        raise UserError(where, f"must be true or false, got {value!r}")
    try:
        return hp.check(key, value, strategy)
    except UserError as e:
        raise UserError(where, e.message) from None


def _dim(hp, key: str, value: list, where: str, strategy: str) -> Dim:
    if not value:
        raise UserError(where, "an empty list; give [low, high] or the choices to try")
    if hp.kind in (int, float) and hp.choices is None:
        if len(value) != 2:
            raise UserError(where, f"a range of a number is [low, high], got {value!r}")
        low, high = (_check(hp, key, v, where, strategy) for v in value)
        if low > high:
            raise UserError(where, f"low {low} is above high {high}")
        return Dim("int" if hp.kind is int else "float", low, high)
    choices = tuple(dict.fromkeys(_check(hp, key, v, where, strategy) for v in value))
    return Dim("categorical", choices=choices)


def _default_dim(hp, epochs: int) -> Dim:
    if hp.kind in (int, float) and hp.choices is None:
        low, high = hp.search
        if hp.is_epoch_count:
            # an epoch count beyond hp.largest_acting never acts: search up to it, and down to the
            # lowest valid value where the study is too short for the default range
            high = min(high, hp.largest_acting(epochs))
            low = low if low < high else min(hp.low if hp.low is not None else 0, high)
        return Dim("int" if hp.kind is int else "float", hp.kind(low), hp.kind(high))
    return Dim("categorical", choices=tuple(hp.search))


def summary(study: Study) -> str:
    """A few lines saying what the study will run."""
    lines = [f"study {study.name}: {plural(study.total_trials, 'trial')} of {study.workload.model} on "
             f"{study.workload.dataset} ({plural(study.workload.epochs, 'epoch')}, {subset_text(study.workload.subset)}), "
             f"sampler {study.sampler}"]
    for p in study.plans:
        space = ", ".join(f"{k} in [{', '.join(map(format_value, d.to_yaml()))}]" for k, d in p.space.items())
        space = space or "nothing searched"
        held = ", ".join(f"{k}={format_value(v)}" for k, v in p.fixed.items())
        trials = f"{p.trials:>3} trial" + ("s" if p.trials != 1 else " ")
        lines.append(f"  {p.name:<17} {trials}  {space}" + (f"; fixed {held}" if held else ""))
    return "\n".join(lines)


__all__ = ["Study", "StudySpec", "StrategyPlan", "Dim", "load", "from_dict", "check_data", "summary", "ALL"]
