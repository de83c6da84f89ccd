"""Method checks against the papers: FreezeOut's Eq. 1 (all four variants) and its freezing by
iteration, Depth Dropout's FLOP saving on CIFAR ResNet-56 beside Sec. IV-A's 12.3/34.6/56.7%,
LayerDropBack's DROP-epoch pattern (Eq. 1) and layer selection, stochastic depth's linear rule;
Depth Dropout's BatchNorm recalibration (not in the paper) for its unscaled evaluation."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from ldtune import batchnorm, models
from ldtune.models import ResidualUnit
from ldtune.data import trim_test_set
from ldtune.cost import CostTable
from ldtune.data import load
from ldtune.errors import UserError
from ldtune.strategies import Context, create
from ldtune.strategies.freezeout import FreezeOut, freeze_times
from ldtune.strategies.layerdropback import is_drop_epoch, layers_of
from ldtune.train import Workload, fit, lr_schedule

SMALL = dict(model="resnet20", width=4, dataset="fashion_mnist", subset=256, batch_size=64, seed=5)


@pytest.fixture(scope="module")
def data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_conformance.py
    yield trim_test_set(load("fashion_mnist", subset=SMALL["subset"], seed=SMALL["seed"]), 300)
    torch.set_num_threads(threads)


def _ctx(model, epochs=10, batch_size=64, seed=0, steps=10):
    return Context(model=model, epochs=epochs, steps_per_epoch=steps, batch_size=batch_size, lr=0.1,
                   device=torch.device("cpu"), seed=seed, rng=torch.Generator().manual_seed(seed), cost=None,
                   workdir=Path("."), extra={})


# ---------------------------------------------------------------- FreezeOut
@pytest.mark.parametrize("schedule", ["linear", "cubic"])
@pytest.mark.parametrize("scale_lr", [True, False])
@pytest.mark.parametrize("t0", [0.5, 0.8])
def test_freezeout_lr_curves_follow_eq1(schedule, scale_lr, t0):
    net = models.build("resnet20", 1, 10, width=4)
    s = create("freezeout", t0=t0, schedule=schedule, scale_lr=scale_lr)
    s.setup(_ctx(net))
    n = len(net.blocks)  # the head is "layer" n, with t = 1
    for i in range(n + 1):
        lin = t0 + (1 - t0) * i / n
        t_i = lin ** 3 if schedule == "cubic" else lin
        for t in [k / 200 for k in range(201)]:
            want = eq1(t, t_i, scale_lr)  # Eq. 1, then frozen
            assert s.lr_factors(t, 1.0)[i] == pytest.approx(want, abs=1e-12), (i, t)
    # the paper's worked numbers: t0 is given before cubing (0.5 -> 0.125, 0.8 -> 0.512)
    assert s.times[0] == pytest.approx(t0 ** 3 if schedule == "cubic" else t0)
    assert s.times == sorted(s.times) and s.times[-1] == 1.0
    # the head anneals like plain cosine over the whole run, at the base LR
    for t in (0.0, 0.3, 0.77, 0.99):
        assert s.lr_factors(t, 1.0)[-1] == pytest.approx(lr_schedule("cosine", t))


def eq1(t: float, t_i: float, scale_lr: bool) -> float:
    """FreezeOut's Eq. 1 as a multiple of the base LR: 0 once a block reached its t_i."""
    return 0.5 * (1 / t_i if scale_lr else 1.0) * (1 + math.cos(math.pi * t / t_i)) if t < t_i else 0.0


class StepSizeProbe(FreezeOut):
    """FreezeOut that measures each block's step size: with plain SGD (no momentum, no weight
    decay) a step moves a weight by -lr * grad, so lr = -delta / grad, whatever the loop set."""

    def setup(self, ctx):
        super().setup(ctx)
        self.seen, self.before, self.t = [], None, None

    def step_start(self, epoch, step, t):
        self._measure()
        super().step_start(epoch, step, t)
        self.t = t

    def after_backward(self, step):
        super().after_backward(step)
        self.before = [(i, p, p.detach().clone(), p.grad.detach().clone()) for i, p in
                       [(i, next(m.parameters())) for i, m in enumerate([*self.ctx.model.blocks, self.ctx.model.head])]
                       if p.grad is not None]

    def epoch_end(self, epoch):
        self._measure()
        return super().epoch_end(epoch)

    def _measure(self):
        for i, p, w0, g in self.before or ():
            big = g.abs() > 1e-3
            self.seen.append((self.t, i, float((-(p.detach() - w0)[big] / g[big]).median())))
        self.before = None


@pytest.mark.parametrize("scale_lr", [True, False])
def test_the_loop_steps_each_block_at_its_eq1_learning_rate(data, scale_lr):
    """The per-block LRs reach the optimizer: every block's measured step size, at every step of a
    real run, is the base LR times Eq. 1 at that step's t (the head: plain cosine, t_i = 1)."""
    w = Workload(epochs=2, momentum=0.0, weight_decay=0.0, **SMALL)
    s = StepSizeProbe(t0=0.5, schedule="linear", scale_lr=scale_lr)
    assert fit(w, s, data=data).status == "ok"
    times = freeze_times(0.5, len(s.blocks), "linear")
    assert len({i for _, i, _ in s.seen}) == len(s.blocks) + 1 and len(s.seen) > 50
    for t, i, lr in s.seen:
        assert lr == pytest.approx(w.lr * eq1(t, times[i], scale_lr), rel=1e-3), (t, i)
    assert {i for t, i, _ in s.seen if t >= times[0]} == set(range(1, len(s.blocks) + 1))  # block 0 frozen


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_freezeout_scaled_lr_integrates_to_the_same_distance(schedule):
    """Sec. 2: with alpha_i(0) = alpha / t_i every layer's LR curve has the same integral."""
    times = freeze_times(0.5, 9, schedule)
    s = create("freezeout", t0=0.5, schedule=schedule, scale_lr=True)
    s.times = times
    grid = [k / 20000 for k in range(20001)]
    curves = list(zip(*[s.lr_factors(t, 1.0) for t in grid]))
    areas = [sum((a + b) / 2 / 20000 for a, b in zip(c, c[1:])) for c in curves]
    assert areas == pytest.approx([0.5] * len(times), rel=1e-3)
    s.hp = dict(s.hp, scale_lr=False)
    unscaled = [sum(x / 20000 for x in c) for c in zip(*[s.lr_factors(t, 1.0) for t in grid])]
    assert unscaled == pytest.approx([t / 2 for t in times], rel=1e-3)  # unscaled: proportional to t_i


@pytest.mark.parametrize("cache", [False, True])
def test_freezeout_freezes_each_block_at_its_iteration(data, cache):
    """Counted FLOPs equal a run that freezes block i at the first step with t >= t_i (mid-epoch),
    t counted in iterations of this run; with ``cache`` the frozen prefix leaves the forward too."""
    epochs = 3
    w = Workload(epochs=epochs, **SMALL)
    s = create("freezeout", t0=0.5, schedule="linear", scale_lr=False, cache=cache)
    res = fit(w, s, data=data)
    assert res.status == "ok"
    table = CostTable(models.build("resnet20", 1, 10, width=4), (1, 28, 28))
    steps = data.num_train // w.batch_size
    times = freeze_times(0.5, 10, "linear")[:-1]
    want, frozen_at_epoch = 0, []
    for e in range(epochs):
        k_epoch = sum(e / epochs >= ti for ti in times)
        frozen_at_epoch.append(k_epoch)
        start = k_epoch if cache else 0
        if cache and k_epoch > (frozen_at_epoch[-2] if e else 0):
            want += table.forward(frozen_at_epoch[-2] if e else 0, k_epoch) * data.num_train
        for j in range(steps):
            t = (e + j / steps) / epochs
            want += table.step(start, sum(t >= ti for ti in times)) * w.batch_size
    assert res.train_flops == want
    assert [r["active_blocks"] for r in res.epochs] == [10 - k for k in frozen_at_epoch]
    assert res.flops_saved > 0.1
    if cache:
        assert res.epochs[-1]["cache_tier"] != "none"


# ---------------------------------------------------------------- Depth Dropout
# Sec. IV-A, analytic time savings, CIFAR-10 ResNet-56: 27 units of time tau, 3 never drop, each of
# the 24 shortcuts costs tau / 9, so saving = 1 - ((1 - p) * 24 + 3 + 24 / 9) / 27
PAPER = {0.25: 0.123, 0.5: 0.346, 0.75: 0.567}


@pytest.fixture(scope="module")
def resnet56_costs():
    base = CostTable(models.build("resnet56", 3, 10, width=16, image_size=32), (3, 32, 32)).full_step()
    out = {}
    for p in PAPER:
        net = models.build("resnet56", 3, 10, width=16, image_size=32)
        s = create("depth_dropout", p=p)
        s.prepare_model(net)
        out[p] = (s, net, CostTable(net, (3, 32, 32)))
    return base, out


@pytest.mark.parametrize("p", sorted(PAPER))
def test_depth_dropout_resnet56_flop_saving(p, resnet56_costs):
    base, nets = resnet56_costs
    s, net, table = nets[p]
    assert len(s.units) == 25  # 27 units, the 2 down-sampling ones never drop
    full = table.full_step()
    per_unit = []
    for u in s.units:
        u.run_branch = False
        per_unit.append(full - table.step())
        u.run_branch = True
    expected = full - p * sum(per_unit)  # a unit's branch is skipped with probability p, independently
    saving = 1 - expected / base
    # our structure: 25 of 27 (near-)equal units drop; a 1x1 shortcut costs 1/18 of a two-3x3 branch
    assert saving == pytest.approx((25 * p - 25 / 18) / 27, abs=0.01)
    # beside the paper's analytic figure: ours is higher by its 3rd fixed unit and its 1/9 shortcut charge
    gap = saving - PAPER[p]
    assert 0.04 < gap < 0.09, (saving, PAPER[p])
    # the strategy's own draws, counted by the cost table as the loop counts them, average to it
    s.setup(_ctx(net, seed=7))
    counted = []
    for step in range(300):
        s.step_start(0, step, 0.0)
        counted.append(table.step())
    s.teardown()
    assert 1 - sum(counted) / len(counted) / base == pytest.approx(saving, abs=0.01)


def test_depth_dropout_draws_once_per_unit_per_step_and_evaluates_unscaled():
    net = models.build("resnet20", 1, 10, width=4)
    s = create("depth_dropout", p=0.5)
    s.prepare_model(net)
    s.setup(_ctx(net, seed=1))
    masks = []
    for step in range(400):
        s.step_start(0, step, 0.0)
        masks.append([u.run_branch for u in s.units])
    kept = sum(map(sum, masks)) / (400 * len(s.units))
    assert kept == pytest.approx(0.5, abs=0.03)
    assert len({tuple(m) for m in masks}) > 50  # fresh draws every step
    assert all(not u.downsample for u in s.units)
    assert all(isinstance(u.shortcut[0], torch.nn.Conv2d) and u.shortcut[0].kernel_size == (1, 1) for u in s.units)
    # evaluation: every branch runs, unscaled, whatever the last draw was (here: this unit's off)
    net.eval()
    x = torch.randn(2, 4, 28, 28)  # the first unit's input: width-4 maps
    u = s.units[0]
    u.run_branch = False
    assert torch.equal(u(x), u.post(u.shortcut(x) + u.branch(x)))


@pytest.mark.parametrize("drop_downsample", [False, True])
@pytest.mark.parametrize("shortcut_relu", [False, True])
def test_depth_dropout_shortcuts_start_as_the_identity_and_its_flags_act(drop_downsample, shortcut_relu):
    """Each identity shortcut becomes a 1x1 conv (identity weights) + BN (+ ReLU with
    ``shortcut_relu``); a down-sampling unit keeps its projection, and drops only with ``drop_downsample``."""
    net = models.build("resnet20", 1, 10, width=4)
    units = [b for b in net.blocks if isinstance(b, ResidualUnit)]
    projections = {id(u): u.shortcut for u in units if u.downsample}
    assert len(projections) == 2  # ResNet-20: stages 2 and 3 begin by down-sampling
    s = create("depth_dropout", drop_downsample=drop_downsample, shortcut_relu=shortcut_relu)
    s.prepare_model(net)
    assert [id(u) for u in s.units] == [id(u) for u in units if drop_downsample or not u.downsample]
    for u in units:
        if u.downsample:
            assert u.shortcut is projections[id(u)]
            continue
        layers = list(u.shortcut)
        assert [type(m) for m in layers] == [torch.nn.Conv2d, torch.nn.BatchNorm2d] + [torch.nn.ReLU] * shortcut_relu
        c = layers[0].out_channels
        assert torch.equal(layers[0].weight, torch.eye(c)[:, :, None, None]) and layers[0].weight.requires_grad
        u.shortcut.eval()  # fresh BatchNorm statistics: y = x / sqrt(1 + eps)
        x = torch.randn(2, c, 7, 7)
        y = x.relu() if shortcut_relu else x
        assert torch.allclose(u.shortcut(x), y / (1 + layers[1].eps) ** 0.5, atol=1e-6)


@pytest.mark.parametrize("model, warned", [("resnet50", True), ("resnet18", False), ("resnet20", False)])
def test_depth_dropout_warns_where_its_shortcuts_cost_about_a_branch(model, warned, recwarn):
    """A bottleneck unit's 1x1 shortcut at 4x width costs 16/17 of its branch (1x1, 3x3, 1x1): the
    strategy then adds FLOPs at p = 0.5, and says so; a two-3x3-conv unit's costs 1/18."""
    with torch.device("meta"):
        net = models.build(model, 3, 10, image_size=32)
        create("depth_dropout", p=0.5).prepare_model(net)
    said = [str(w.message) for w in recwarn.list]
    assert said == ([f"depth_dropout: {model}'s shortcuts would cost up to 94% of their branch's FLOPs (bottleneck "
                     "units), so dropping saves little or costs more than it saves; the paper's nets have "
                     "two-3x3-conv units (1/18)"] if warned else [])


def test_bn_recalibration_averages_the_batch_statistics_of_the_net_as_evaluated():
    """``recalibrate_bn``'s core: every BatchNorm after the frozen prefix gets the plain average of
    its batch statistics over the batches, with every unit on as evaluation runs it (whatever the
    last draw switched off), the fused kernel as PyTorch's; the prefix and all modes are untouched."""
    torch.manual_seed(0)
    net = models.build("resnet20", 1, 10, width=4)
    s = create("depth_dropout", p=0.5)
    s.prepare_model(net)
    net = net.to(memory_format=torch.channels_last)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # statistics a run gathered: nothing like the batches' below
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    ref = copy.deepcopy(net)  # PyTorch's BatchNorm, every branch on, in training mode after the prefix
    assert batchnorm.use_fused(net) > 0
    s.setup(_ctx(net, seed=3))
    s.step_start(0, 0, 0.0)
    assert not all(u.run_branch for u in s.units)  # the last draw left branches off
    flags = [u.run_branch for u in s.units]
    net.train()
    net.blocks[:2].eval()  # a frozen prefix of two blocks
    modes = [m.training for m in net.modules()]
    batches = [torch.randn(n, 1, 28, 28).to(memory_format=torch.channels_last) for n in (16, 16, 8)]

    assert batchnorm.recalibrate(net, iter(batches), start=2) == 40
    assert [m.training for m in net.modules()] == modes and [u.run_branch for u in s.units] == flags
    assert all(m.momentum == 0.1 for m in bns)
    for m in ref.blocks[2:].modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # PyTorch's cumulative average
    ref.train()
    ref.blocks[:2].eval()
    with torch.no_grad():
        for x in batches:
            ref(x)
    pairs = [(a, b) for a, b in zip(net.modules(), ref.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    prefix = {id(m) for m in net.blocks[:2].modules()}
    for a, b in pairs:
        if id(a) in prefix:  # the frozen prefix keeps its statistics, bit for bit
            assert (a.running_mean == 5.0).all() and (a.running_var == 9.0).all()
        else:
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
            assert torch.allclose(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(a.running_var, torch.full_like(a.running_var, 9.0))


def test_depth_dropout_recalibration_is_training_cost_and_changes_only_the_evaluation(data):
    w = Workload(**SMALL, epochs=2)
    plain = fit(w, create("depth_dropout", p=0.5), data=data)
    recal = fit(w, create("depth_dropout", p=0.5, recalibrate_bn=100), data=data)
    assert plain.status == recal.status == "ok"
    # the same training: recalibration draws its images from its own generator, and BatchNorm
    # trains on batch statistics, never on the running ones it rewrites
    assert [e["train_loss"] for e in recal.epochs] == [e["train_loss"] for e in plain.epochs]
    assert [e["test_accuracy"] for e in recal.epochs] != [e["test_accuracy"] for e in plain.epochs]
    # charged to training: a forward pass of the whole net (every unit on) per image, every epoch
    net = models.build("resnet20", 1, 10, width=SMALL["width"])
    create("depth_dropout", p=0.5).prepare_model(net)
    per_image = CostTable(net, (1, 28, 28)).forward()
    assert recal.train_flops - plain.train_flops == 2 * 100 * per_image
    assert recal.flops_saved < plain.flops_saved
    for e_recal, e_plain in zip(recal.epochs, plain.epochs):
        assert e_recal["epoch_flops"] - e_plain["epoch_flops"] == 100 * per_image


def test_depth_dropout_recalibration_of_one_image_is_refused():
    with pytest.raises(UserError, match="depth_dropout.recalibrate_bn"):
        create("depth_dropout", recalibrate_bn=1)
    assert create("depth_dropout", recalibrate_bn=0).epoch_start(0).recalibrate_bn == 0  # off: the paper
    assert create("depth_dropout", recalibrate_bn=2).epoch_start(1).recalibrate_bn == 2  # every epoch


# ---------------------------------------------------------------- stochastic depth
def test_stochastic_depth_linear_decay_and_survival_scaling():
    net = models.build("resnet20", 1, 10, width=4)
    s = create("stochastic_depth", p=0.5)
    s.prepare_model(net)
    n = len(s.units)
    assert s.drop == pytest.approx([0.5 * (i + 1) / n for i in range(n)])
    assert [u.eval_branch_scale for u in s.units] == pytest.approx([1 - d for d in s.drop])
    s.setup(_ctx(net, seed=2))
    kept = torch.zeros(n)
    for step in range(2000):
        s.step_start(0, step, 0.0)
        kept += torch.tensor([float(u.run_branch) for u in s.units])
    assert (kept / 2000).tolist() == pytest.approx([1 - d for d in s.drop], abs=0.04)
    # evaluation runs every branch, scaled by its survival probability, whatever the last draw was
    net.eval()
    x = torch.randn(2, 4, 28, 28)  # the first units' input: width-4 maps
    for u, d in zip(s.units[:3], s.drop):
        u.run_branch = False
        assert torch.allclose(u(x), u.post(u.shortcut(x) + (1 - d) * u.branch(x)), atol=1e-6)
        assert not torch.allclose(u(x), u.post(u.shortcut(x) + u.branch(x)), atol=1e-3)


def test_depth_dropout_eval_scale_scales_every_branch_by_its_keep_probability():
    net = models.build("resnet20", 1, 10, width=4)
    s = create("depth_dropout", p=0.25, eval_scale=True)
    s.prepare_model(net)
    net.eval()
    x = torch.randn(2, 4, 28, 28)
    u = s.units[0]
    u.run_branch = False
    assert torch.allclose(u(x), u.post(u.shortcut(x) + 0.75 * u.branch(x)), atol=1e-6)


def test_stochastic_depth_uniform_rule():
    net = models.build("resnet20", 1, 10, width=4)
    s = create("stochastic_depth", p=0.3, rule="uniform", drop_downsample=False)
    s.prepare_model(net)
    assert len(s.units) == 7 and s.drop == pytest.approx([0.3] * 7)  # 9 units, 2 down-sample
    assert [u.eval_branch_scale for u in s.units] == pytest.approx([0.7] * 7)


# ---------------------------------------------------------------- LayerDropBack
@pytest.mark.parametrize("s_", [1, 2, 3, 5])
def test_layerdropback_drop_epochs_follow_eq1(s_):
    net = models.build("resnet20", 1, 10, width=4)
    ldb = create("layerdropback", s=s_, kappa=2.0, p=0.3)
    ldb.setup(_ctx(net, epochs=12, batch_size=64))
    plans = [ldb.epoch_start(e) for e in range(12)]
    drops = [e for e, pl in enumerate(plans) if pl.batch_size is not None]
    assert drops == [e for e in range(12) if e > 0 and e % s_ == 0]  # Eq. 1: e mod s = 0 and e > 0
    assert drops == [e for e in range(12) if is_drop_epoch(e, s_)]
    for e, pl in enumerate(plans):
        assert (pl.batch_size, pl.lr_scale) == ((128, 2.0) if e in drops else (None, 1.0))  # Eq. 4, kappa = 2


@pytest.mark.parametrize("reading, keep_first", [("text", 4), ("equations", 4), ("text", 9)])
def test_layerdropback_selection(reading, keep_first):
    net = models.build("resnet20", 1, 10, width=4)
    ldb = create("layerdropback", s=1, p=0.3, reading=reading, resample="step", keep_first=keep_first)
    ldb.setup(_ctx(net, epochs=2, batch_size=64, seed=4))
    layers = layers_of(net)
    assert len(layers) == 22  # stem + 9 units x 2 convs + 2 projection convs, each with its BN; the head
    plan = ldb.epoch_start(1)
    assert plan.lr_scale == pytest.approx(2.0 if reading == "text" else 1 / 0.3)
    off, subsets, first_off = 0, set(), set()
    for step in range(300):
        ldb.step_start(1, step, 0.5)
        trains = [all(p.requires_grad for p in layer) for layer in layers]
        # the first keep_first layers (the paper's four by default) and the last always update
        assert all(trains[:keep_first]) and trains[-1]
        off += trains[keep_first:-1].count(False)
        first_off.add(trains[keep_first])
        subsets.add(tuple(trains))
    assert first_off == {True, False}  # the layer after them is drawn like the rest
    frac_off = off / (300 * (len(layers) - keep_first - 1))
    assert frac_off == pytest.approx(0.3 if reading == "text" else 0.7, abs=0.03)  # p = drop rate vs Eq. 2
    assert len(subsets) > 100  # resample: step draws every step
    ldb.teardown()
    assert all(p.requires_grad for p in net.parameters())


def test_layerdropback_drop_epochs_train_the_baselines_images():
    """At kappa x the batch size a DROP epoch trains as many images as a plain one (here 320 = 2 x 128
    + 64, the last batch short), so images left out are not counted as a saving: with p = 0 nothing
    is skipped and nothing is saved."""
    w = Workload(epochs=2, **(SMALL | {"subset": 320}))
    d = trim_test_set(load("fashion_mnist", subset=320, seed=SMALL["seed"]), 100)
    sizes = []
    ldb = create("layerdropback", s=1, p=0.0, kappa=2.0)
    step_start = ldb.step_start
    ldb.step_start = lambda e, i, t: (sizes.append((e, i)), step_start(e, i, t))[1]
    res = fit(w, ldb, data=d)
    assert res.status == "ok", res.error
    assert sizes == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]  # 5 x 64, then 128 + 128 + 64
    full = CostTable(models.build("resnet20", 1, 10, width=4), (1, 28, 28)).full_step()
    assert [r["epoch_flops"] for r in res.epochs] == [full * 320] * 2
    assert res.flops_saved == 0.0


def test_an_epoch_of_one_folded_step_reports_that_steps_loss():
    """kappa x 64 = 319 images a step on 320: the one image left joins that step (never a batch of
    one), so the DROP epoch is one step, and its train_loss is that step's loss, not half of it."""
    d = trim_test_set(load("fashion_mnist", subset=320, seed=SMALL["seed"]), 100)
    steps = []
    ldb = create("layerdropback", s=1, p=0.0, kappa=319 / 64)
    step_start = ldb.step_start
    ldb.step_start = lambda e, i, t: (steps.append((e, i, t)), step_start(e, i, t))[1]
    res = fit(Workload(epochs=2, **(SMALL | {"subset": 320})), ldb, data=d)
    assert res.status == "ok", res.error
    assert [s[:2] for s in steps if s[0] == 1] == [(1, 0)]
    # one epoch of 5 small steps barely moves the loss from ln(10) = 2.3; half of it would be ~1.1
    assert res.epochs[1]["train_loss"] > 0.8 * res.epochs[0]["train_loss"]


def test_layerdropback_run_skips_weight_gradients_only_in_drop_epochs(data):
    w = Workload(epochs=3, **SMALL)
    ldb = create("layerdropback", s=2, p=0.5)
    snaps = {}

    def snapshot(rec):
        snaps[rec["epoch"]] = ([p.detach().clone() for p in ldb.ctx.model.parameters()], list(ldb.off))

    res = fit(w, ldb, callback=snapshot, data=data)
    assert res.status == "ok"
    full = CostTable(models.build("resnet20", 1, 10, width=4), (1, 28, 28)).full_step()
    assert [r["epoch_flops"] for r in res.epochs[:2]] == [full * data.num_train] * 2  # plain SGD epochs
    assert res.epochs[2]["epoch_flops"] < full * data.num_train  # the DROP epoch (e = 2)
    # a left-out layer is not touched by SGD in its DROP epoch: no momentum, no weight decay
    before, _ = snaps[1]
    after, off = snaps[2]
    assert off
    params = list(ldb.ctx.model.parameters())
    off_ids = {id(p) for p in off}
    for p, b, a in zip(params, before, after):
        if id(p) in off_ids:
            assert torch.equal(a, b)
        else:
            assert not torch.equal(a, b)


def test_freezeout_puts_a_block_frozen_mid_epoch_in_eval_mode_at_once(data):
    """The card: from the first step with t >= t_i the block's BatchNorm is in eval mode, so its
    running statistics stop moving mid-epoch, not only from the next epoch's start."""
    class Probe(FreezeOut):
        def step_start(self, epoch, step, t):
            before = self.frozen
            super().step_start(epoch, step, t)
            if self.frozen > before and not hasattr(self, "snap"):
                self.snap = {k: v.clone() for k, v in self.blocks[0].state_dict().items()}

        def epoch_end(self, epoch):
            if hasattr(self, "snap") and not hasattr(self, "end"):
                self.end = {k: v.clone() for k, v in self.blocks[0].state_dict().items()}
            return super().epoch_end(epoch)
    s = Probe(t0=0.3, schedule="linear", scale_lr=False)
    assert fit(Workload(epochs=2, **SMALL), s, data=data).status == "ok"
    assert s.snap.keys() == s.end.keys() and all(torch.equal(s.snap[k], s.end[k]) for k in s.snap)
