"""One conformance suite over every registered strategy (and every one added later).

Per strategy: a narrow ResNet-20 trains on a real Fashion-MNIST subset for two epochs on the CPU
with finite loss; the whole net evaluates afterwards; what the strategy skipped (a frozen or
cached prefix, branches switched off, weights without gradients) shows in the cost accounting,
and the accounting equals the FLOPs that FlopCounterMode sees the real steps run (a masked skip,
computed then zeroed, would count more); seeded runs repeat exactly, also when taken in turn
with another strategy's run, as ``ldtune bench`` takes them, and another seed gives another run
(its own random skips included); a bad hyperparameter given to ``ldtune train --set`` exits 2
naming the field.

A plugin's strategies join the suite with ``--plugin MODULE`` (tests/conftest.py), and
``--hparam NAME.KEY=VALUE`` gives one the settings that let it skip work within a 2-epoch run.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ldtune import cli
from ldtune.data import trim_test_set
from ldtune.data import load
from ldtune.models import ResidualUnit
from ldtune.strategies import REGISTRY, Strategy, create
from ldtune.bench import in_turn
from ldtune.train import Workload, autocast_for, evaluate, fit, training

NAMES = sorted(REGISTRY)
# LDTUNE_TEST_DEVICE=cuda runs the suite on a GPU (CI runs it on the CPU)
DEVICE = os.environ.get("LDTUNE_TEST_DEVICE", "cpu")
WORKLOAD = dict(model="resnet20", width=4, dataset="fashion_mnist", subset=384, epochs=2, batch_size=64, seed=3,
                device=DEVICE)
# settings that let a 2-epoch run reach the phase where a strategy skips work (every strategy but the
# baseline must skip in it: test_skips_show_in_cost_accounting); used only where the strategy has
# that hyperparameter. Learn&Drop and freezing score from the first epoch: with one warm-up epoch
# their first selection would come after the last.
MEASURE_EVERY = 3  # steps: FlopCounterMode watches steps 1, 4, 7, ... of each epoch
SHORT_RUN = {"layerdropback": {"s": 1}, "learn_drop": {"warmup_epochs": 0}, "freezing": {"warmup_epochs": 0}}
GIVEN: dict[str, dict] = {}  # --hparam NAME.KEY=VALUE (tests/conftest.py), per strategy


@pytest.fixture(scope="module", autouse=True)
def given_hparams(request):
    GIVEN.clear()
    GIVEN.update(request.config.ldtune_hparams)


def short_run_hparams(name: str) -> dict:
    return {k: v for k, v in {**SHORT_RUN.get(name, {}), **GIVEN.get(name, {})}.items() if k in REGISTRY[name].hparams}


@pytest.fixture(scope="module")
def data():
    # one intra-op thread: on a busy 2-core machine two threads spin against each other (10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield trim_test_set(load("fashion_mnist", subset=WORKLOAD["subset"], seed=WORKLOAD["seed"], device=DEVICE), 500)
    torch.set_num_threads(threads)


class Observed(Strategy):
    """Runs the strategy under test unchanged (every hook delegated) and watches each step: what it
    skipped, what the cost table counts for it, and what FlopCounterMode sees the step really run
    (on every ``MEASURE_EVERY``-th step the counter is entered at ``step_start`` and left at
    ``after_backward``: forward + backward; counting every step would make the runs ten times slower)."""

    def __init__(self, inner: Strategy, rng_seed: int | None = None):  # no validation of its own
        self.inner, self.name, self.hp = inner, inner.name, inner.hp
        self.rng_seed = rng_seed  # reseeds ctx.rng (the strategy's own draws) alone, when given
        self.steps: list[dict] = []  # per step: epoch, skipped, counted, full, measured
        self.epoch_flops: list[int] = []
        self.cached = 0
        # per epoch: what a cache build or advance should cost, and what FlopCounterMode sees the loop
        # run between epoch_start and the epoch's first step (where it builds or advances the cache)
        self.cache_flops: list[int] = []
        self.before_steps: list[int] = []
        self.between = None

    def prepare_model(self, model):
        self.inner.prepare_model(model)

    def setup(self, ctx):
        self.ctx = ctx
        if self.rng_seed is not None:
            ctx.rng.manual_seed(self.rng_seed)
        self.inner.setup(ctx)

    def epoch_start(self, epoch):
        self.plan = self.inner.epoch_start(epoch)
        flops = 0
        if self.plan.cached > self.cached:  # the loop builds/advances its cache over the training set
            flops = self.ctx.cost.forward(self.cached, self.plan.cached) * self.ctx.extra["data"].num_train
            self.cached = self.plan.cached
        self.epoch_flops.append(flops)
        self.cache_flops.append(flops)
        self.between = FlopCounterMode(display=False)
        self.between.__enter__()
        return self.plan

    def step_start(self, epoch, step, t):
        if self.between is not None:
            self.between.__exit__(None, None, None)
            self.before_steps.append(self.between.get_total_flops())
            self.between = None
        self.inner.step_start(epoch, step, t)
        self.epoch = epoch
        self.counter = FlopCounterMode(display=False) if step % MEASURE_EVERY == 1 else None
        if self.counter is not None:
            self.counter.__enter__()

    def lr_factors(self, t, sched):
        return self.inner.lr_factors(t, sched)

    def after_backward(self, step):
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
        model, cost, plan = self.ctx.model, self.ctx.cost, self.plan
        bs = plan.batch_size or self.ctx.batch_size
        live = model.blocks[plan.frozen:]
        skipped = (plan.frozen > 0 or plan.cached > 0
                   or any(isinstance(b, ResidualUnit) and not b.run_branch for b in live)
                   or any(not p.requires_grad for b in live for p in b.parameters())
                   or any(not p.requires_grad for p in model.head.parameters()))
        counted = cost.step(plan.cached, plan.frozen) * bs
        # what this step skipped, in full: which blocks, branches and weights took part
        signature = (plan.frozen, plan.cached, bs, plan.lr_scale,
                     tuple(b.run_branch for b in live if isinstance(b, ResidualUnit)),
                     tuple(p.requires_grad for p in [*live.parameters(), *model.head.parameters()]))
        self.steps.append({"epoch": self.epoch, "skipped": skipped, "counted": counted, "signature": signature,
                           "full": cost.full_step() * bs,
                           "measured": self.counter.get_total_flops() if self.counter is not None else None})
        self.epoch_flops[-1] += counted
        self.inner.after_backward(step)

    def epoch_end(self, epoch):
        return self.inner.epoch_end(epoch)

    def teardown(self):
        self.inner.teardown()


def _run(name, data, observe=False, seed=WORKLOAD["seed"], rng_seed=None):
    s = create(name, **short_run_hparams(name))
    s = Observed(s, rng_seed) if observe else s
    res = fit(Workload(**WORKLOAD | {"seed": seed}), s, data=data)
    return s, res


@pytest.fixture(scope="module")
def observed_runs(data):
    return {}


@pytest.fixture
def observed(name, data, observed_runs):
    if name not in observed_runs:
        observed_runs[name] = _run(name, data, observe=True)
    return observed_runs[name]


@pytest.mark.parametrize("name", NAMES)
class TestConformance:
    def test_trains_with_finite_loss(self, name, observed):
        _, res = observed
        assert res.status == "ok", res.error
        assert len(res.epochs) == WORKLOAD["epochs"]
        assert all(math.isfinite(r["train_loss"]) for r in res.epochs)
        assert res.epochs[-1]["train_loss"] < res.epochs[0]["train_loss"]  # it learns, skips and all
        assert 0.0 <= res.test_accuracy <= 1.0

    def test_whole_net_evaluates(self, name, observed, data):
        s, res = observed
        model = s.ctx.model
        ran = set()
        parts = {f"block{i}": b for i, b in enumerate(model.blocks)} | {"head": model.head}
        parts |= {f"branch{i}": b.branch for i, b in enumerate(model.blocks) if isinstance(b, ResidualUnit)}
        hooks = [m.register_forward_hook(lambda m, i, o, k=k: ran.add(k)) for k, m in parts.items()]
        try:
            acc = evaluate(model, data, autocast_for(torch.device(DEVICE)))  # as the loop evaluates (bf16 on CUDA)
        finally:
            for h in hooks:
                h.remove()
        assert ran == set(parts)  # every block, every residual branch and the head ran
        assert acc == res.test_accuracy  # the net the loop evaluated last is the one left behind

    def test_skips_show_in_cost_accounting(self, name, observed):
        s, res = observed
        assert s.steps and sum(st["measured"] is not None for st in s.steps) >= WORKLOAD["epochs"]
        for st in s.steps:
            assert st["measured"] in (None, st["counted"]), st  # the accounting is what really ran
            if st["skipped"]:
                assert st["counted"] < st["full"], st  # a skip saves real FLOPs
            else:
                assert st["counted"] == st["full"], st
        assert [r["epoch_flops"] for r in res.epochs] == s.epoch_flops  # the loop counts the same
        assert s.before_steps == s.cache_flops  # a cache is built (or advanced) once, at what it is counted
        assert res.train_flops == sum(s.epoch_flops)
        if name == "baseline":
            assert res.flops_saved == 0.0 and not any(st["skipped"] for st in s.steps)
        else:  # the run reaches the phase where the strategy skips, and the skip is counted
            assert any(st["skipped"] for st in s.steps) and res.flops_saved > 0, name

    def test_seeded_runs_repeat_exactly(self, name, observed, data):
        _, first = observed
        _, again = _run(name, data)
        keys = ("train_loss", "test_accuracy", "epoch_flops", "active_blocks", "trainable_params")
        assert [[r[k] for k in keys] for r in again.epochs] == [[r[k] for k in keys] for r in first.epochs]
        assert again.train_flops == first.train_flops

    def test_another_seed_gives_another_run(self, name, observed, data):
        """The seed reaches the weights' initialisation and the batch order (the loss changes), and
        the strategy's own draws: a strategy whose skips change when ``ctx.rng`` alone is reseeded
        draws them from it, and must then skip differently with another seed."""
        s, first = observed
        other_s, other = _run(name, data, observe=True, seed=WORKLOAD["seed"] + 1)
        assert [r["train_loss"] for r in other.epochs] != [r["train_loss"] for r in first.epochs]
        reseeded, _ = _run(name, data, observe=True, rng_seed=WORKLOAD["seed"] + 1000)

        def skips(o):
            return [st["signature"] for st in o.steps]
        draws = skips(reseeded) != skips(s)
        # as the strategy says (Strategy.draws_at_random), so that the check below is never vacuous
        assert draws == REGISTRY[name].draws_at_random, (
            f"{name}: its skips {'change' if draws else 'do not change'} with ctx.rng's seed; "
            f"set draws_at_random = {draws}")
        if draws:
            assert skips(other_s) != skips(s), name

    def test_a_run_taken_in_turn_with_another_gives_the_same_result(self, name, observed, data):
        """``ldtune bench`` takes its runs in turn a step at a time (``ldtune.bench.in_turn``); a run
        must not see the other's state or random draws. The partner is the next registered strategy,
        on another seed."""
        _, alone = observed
        partner = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
        results = {}
        in_turn({"this": training(Workload(**WORKLOAD), create(name, **short_run_hparams(name)), data=data,
                                  pause="step"),
                 "partner": training(Workload(**WORKLOAD | {"seed": WORKLOAD["seed"] + 1}),
                                     create(partner, **short_run_hparams(partner)), data=data, pause="step")},
                lambda key, res: results.__setitem__(key, res))
        keys = ("train_loss", "test_accuracy", "epoch_flops", "active_blocks", "trainable_params")
        assert [[r[k] for k in keys] for r in results["this"].epochs] == [[r[k] for k in keys] for r in alone.epochs]
        assert results["this"].train_flops == alone.train_flops and results["partner"].status == "ok"

    def test_invalid_hyperparameters_exit_2_naming_the_field(self, name, capsys):
        cases = [("no_such_hparam", "1")]
        for key, spec in REGISTRY[name].hparams.items():
            if spec.kind is bool:
                cases += [(key, "maybe"), (key, "2")]
            elif spec.choices is not None:
                cases.append((key, "no_such_choice"))
            elif spec.kind in (int, float):
                cases += [(key, "abc"), (key, "nan"), (key, "1" + "0" * 400)]  # that last: more than 64 bits
                cases += [(key, str(spec.low - 1))] if spec.low is not None else []
                cases += [(key, str(spec.high + 1))] if spec.high is not None else []
        for key, value in cases:
            rc = cli.main(["train", "--strategy", name, "--subset", "64", "--epochs", "1", "--width", "4",
                           "--set", f"{key}={value}", "--json"])
            out, err = capsys.readouterr()
            assert rc == 2, (key, value)
            assert out == "", (key, value)  # nothing trained, nothing reported
            assert err.startswith(f"ldtune: error: {name}.{key}:"), (key, value, err)
            assert len(err.strip().splitlines()) == 1
