"""Learn&Drop and score-based freezing: Eqs. 2-4 and the median rule against hand computations,
and real runs (narrow ResNet-20 on a Fashion-MNIST subset) for what a drop must guarantee."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ldtune import cli, models, strategies
from ldtune.cache import FeatureCache
from ldtune.strategies.freezing import Freezing
from ldtune.strategies.layer_scores import (ScoreAccumulator, candidate_end, median_rule, select,
                                            standardize)
from ldtune.strategies.learn_drop import LearnDrop
from ldtune.train import Workload, fit, load_data

K = 4  # blocks dropped by the forced-drop runs (stem + the first three units of stage 1)
N = 256  # training images


@pytest.fixture(scope="module")
def data():
    d = load_data(Workload(dataset="fashion_mnist", subset=N))
    d.test_x, d.test_y = d.test_x[:256], d.test_y[:256]  # evaluation is not under test here
    return d


def workload(epochs=3):
    return Workload(model="resnet20", width=4, dataset="fashion_mnist", subset=N, epochs=epochs,
                    batch_size=64)


# ---------------------------------------------------------------- Eqs. 2 and 3 by hand
def test_scores_equal_eq2_and_eq3_computed_by_hand():
    g = torch.Generator().manual_seed(0)
    shapes = [[(2, 3), (4, 1, 1, 1)], [(3, 2)], [(2, 2)]]  # three blocks' weight tensors
    params = [[torch.zeros(s) for s in blk] for blk in shapes]
    steps = [[[torch.randn(s, generator=g) for s in blk] for blk in shapes] for _ in range(4)]
    steps[2][1] = [None]  # block 1 got no gradient in step 2: that step does not count for it
    steps[1][2] = [torch.ones(2, 2)]  # block 2: +1 then -1 at every weight in steps 1 and 3
    steps[3][2] = [-torch.ones(2, 2)]
    acc = ScoreAccumulator(params)
    for step in steps:
        acc.add([t for blk in step for t in blk])

    expect = []
    for b in range(len(shapes)):
        num = den = 0.0
        for t, shape in enumerate(shapes[b]):
            for i in range(int(np.prod(shape))):  # Eq. 2: sum_i |sum_j g_ij| / sum_i sum_j |g_ij|
                gs = [float(s[b][t].flatten()[i]) for s in steps if s[b][t] is not None]
                num += abs(sum(gs))
                den += sum(abs(v) for v in gs)
        expect.append(1.0 - num / den)
    got = acc.scores()
    assert got == pytest.approx(expect, abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in got)

    mean = sum(expect) / 3
    sd = (sum((p - mean) ** 2 for p in expect) / 3) ** 0.5  # Eq. 3, population std
    assert standardize(got) == pytest.approx([(p - mean) / sd for p in expect], abs=1e-5)
    assert standardize([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]


def test_score_extremes():
    w = [[torch.zeros(3)], [torch.zeros(3)]]
    acc = ScoreAccumulator(w)
    g = torch.tensor([1.0, -2.0, 0.5])
    acc.add([g, g])
    acc.add([-g, g])  # block 0's gradients cancel: it stopped moving; block 1's agree: it learns
    assert acc.scores() == pytest.approx([1.0, 0.0])


# ---------------------------------------------------------------- Eq. 4 and the median rule
@pytest.mark.parametrize("ps, eq4, mps", [
    ([1.0, 0.5, -1.0, 2.0, -1.0], 1, 3),  # Eq. 4 stops at the first sign change; the max sum does not
    ([-2.0, 1.0, -1.0, 0.5], 1, None),  # Eq. 4 as printed vs the text's max-sum prefix
    ([0.5, -1.0, 0.4, -1.0], 0, 0),  # the max-sum prefix stops where the sum peaks
    ([1.0, 1.0, 1.0, -3.0], 2, 2),  # everything but the last block
    ([1.0, 1.0, 5.0], None, 1),  # no negative follows (Eq. 4); the last block is never a candidate
    ([0.0, 0.0, 0.0], None, None),
    ([2.0], None, None),
])
def test_candidate_end_on_fixed_vectors(ps, eq4, mps):
    assert candidate_end(ps, "eq4") == eq4
    assert candidate_end(ps, "max_prefix_sum") == mps


def test_median_rule_and_select():
    assert median_rule([0.2, 0.4, 1.0], [])  # nothing dropped yet: passes
    assert median_rule([0.2, 0.4, 1.0], [0.3, 0.5])  # M_c = 0.4 >= M_d = 0.4
    assert not median_rule([0.2, 0.4, 1.0], [0.5])
    p = [0.9, 0.8, 0.2, 0.3, 0.1]  # raw P_l of the active blocks
    ps = standardize(p)  # [+, +, -, -, -]
    assert select(p, []) == (2, ps)
    assert select(p, [], min_drop=2)[0] == 2 and select(p, [], min_drop=3)[0] == 0
    m_c = float(np.median(ps[:2]))
    assert select(p, [m_c + 0.01])[0] == 0  # M_c < M_d: wait
    assert select(p, [m_c + 0.01], use_median=False)[0] == 2
    assert select(p, [m_c - 0.01])[0] == 2


# ---------------------------------------------------------------- the strategy's wiring, hand-fed
def _epoch(s, model, epoch, q):
    """One hand-fed epoch: two steps whose gradients are +1, then -q[b], on every weight of block b,
    so P_b = 1 - (1 - q_b) / (1 + q_b) (Eq. 2)."""
    plan = s.epoch_start(epoch)
    for sign in (1.0, -1.0):
        for b, blk in enumerate(model.blocks):
            for p in blk.parameters():
                p.grad = None if b < plan.frozen else torch.full_like(p, 1.0 if sign > 0 else -q[b])
        s.after_backward(0)
    return plan, s.epoch_end(epoch)


@pytest.mark.parametrize("standardize_over", ["head", "all"])
@pytest.mark.parametrize("use_median", [True, False])
def test_strategy_selects_from_its_scores(tmp_path, standardize_over, use_median):
    from ldtune.strategies import Context
    model = models.build("resnet20", 1, 10, width=4)
    ctx = Context(model=model, epochs=3, steps_per_epoch=2, batch_size=8, lr=0.1, device=torch.device("cpu"),
                  seed=0, rng=torch.Generator(), cost=None, workdir=tmp_path)
    s = LearnDrop(warmup_epochs=0, standardize=standardize_over, median_rule=use_median)
    s.setup(ctx)
    to_p = lambda q: 2 * q / (1 + q)  # noqa: E731
    q0 = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    plan, rec = _epoch(s, model, 0, q0)
    assert (plan.frozen, plan.cached) == (0, 0)
    assert rec["layer_scores"] == pytest.approx([to_p(q) for q in q0], rel=1e-4)  # float32 sums
    assert rec["drop_selected"] == 3  # blocks 0-2 stopped moving; no drop before: the median rule passes
    stored = rec["layer_scores_std"][:3]
    # epoch 1: blocks 3-5 are the next candidates, but less settled than 0-2 were
    q1 = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]
    plan, rec = _epoch(s, model, 1, q1)
    assert (plan.frozen, plan.cached) == (3, 3)
    p1 = [to_p(q) for q in q0[:3] + q1[3:]]  # dropped blocks keep their scores
    assert rec["layer_scores"] == pytest.approx(p1, rel=1e-4)
    assert rec["layer_scores_std"][:3] == stored
    ps = standardize(p1)[3:] if standardize_over == "all" else standardize(p1[3:])
    assert rec["layer_scores_std"][3:] == pytest.approx(ps, abs=1e-3)
    assert candidate_end(ps) == 2  # Eq. 4 proposes blocks 3-5 ...
    assert np.median(ps[:3]) < np.median(stored)  # ... but M_c < M_d
    assert rec["drop_selected"] == (3 if use_median else 6)


@pytest.mark.parametrize("name", ["learn_drop", "freezing"])
@pytest.mark.parametrize("selection, min_drop, selected", [("eq4", 1, 2), ("eq4", 3, 0),
                                                            ("max_prefix_sum", 1, 6), ("max_prefix_sum", 7, 0)])
def test_selection_and_min_drop_reach_the_strategys_choice(tmp_path, name, selection, min_drop, selected):
    """Scores whose P' signs are + + - + + + - - - -: Eq. 4 stops at the first sign change (2 blocks),
    the text's maximum-sum prefix takes 6; a drop of fewer than ``min_drop`` blocks waits."""
    from ldtune.strategies import Context
    model = models.build("resnet20", 1, 10, width=4)
    ctx = Context(model=model, epochs=3, steps_per_epoch=2, batch_size=8, lr=0.1, device=torch.device("cpu"),
                  seed=0, rng=torch.Generator(), cost=None, workdir=tmp_path)
    s = strategies.create(name, warmup_epochs=0, selection=selection, min_drop=min_drop)
    s.setup(ctx)
    _, rec = _epoch(s, model, 0, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert [x > 0 for x in rec["layer_scores_std"]] == [True, True, False, True, True, True, False, False, False, False]
    assert rec["drop_selected"] == selected
    assert s.epoch_start(1).frozen == selected


# ---------------------------------------------------------------- real runs
class _ForcedDrop:
    """Select K blocks at the end of epoch 0 (whatever the scores), and snapshot them at the start
    of epoch 1; everything else is the real strategy. FlopCounterMode watches all of epoch 2's
    training, from its epoch_start to its last backward pass: what the loop really ran."""

    counter = None

    def epoch_start(self, epoch):
        plan = super().epoch_start(epoch)
        if epoch == 1:
            self.snapshot = copy.deepcopy(self.ctx.model.state_dict())
        if epoch == 2:
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()
        return plan

    def after_backward(self, step):
        super().after_backward(step)
        if self.counter is not None and step == self.ctx.steps_per_epoch - 1:
            self.counter.__exit__(None, None, None)
            self.measured, self.counter = self.counter.get_total_flops(), None

    def epoch_end(self, epoch):
        rec = super().epoch_end(epoch)
        if epoch == 0:
            self.dropped = rec["drop_selected"] = K
        return rec


class ForcedLearnDrop(_ForcedDrop, LearnDrop):
    pass


class ForcedFreezing(_ForcedDrop, Freezing):
    pass


@pytest.mark.parametrize("cls", [ForcedLearnDrop, ForcedFreezing])
def test_dropped_prefix_is_bit_identical_and_costs_what_it_should(cls, data, tmp_path):
    s = cls(warmup_epochs=100)
    w = workload()
    r = fit(w, s, data=data, workdir=tmp_path)
    assert r.status == "ok"
    model, cost = s.ctx.model, s.ctx.cost
    end = model.state_dict()
    prefix = [k for k in end if k.startswith("blocks.") and int(k.split(".")[1]) < K]
    assert any("running_mean" in k for k in prefix)
    for k in prefix:  # weights and BN running statistics: not one bit moved
        assert torch.equal(end[k], s.snapshot[k]), k
    assert not torch.equal(end[f"blocks.{K}.branch.0.weight"], s.snapshot[f"blocks.{K}.branch.0.weight"])
    assert not torch.equal(end["head.2.weight"], s.snapshot["head.2.weight"])

    steps, bs = N // 64, 64
    e0, e1, e2 = r.epochs
    assert [e["dropped_blocks"] for e in r.epochs] == [0, K, K]
    assert [e["active_blocks"] for e in r.epochs] == [len(model.blocks), len(model.blocks) - K,
                                                     len(model.blocks) - K]
    assert e2["trainable_params"] == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.blocks[:K].parameters())
    assert len(e2["layer_scores"]) == len(model.blocks)
    assert e2["layer_scores"][:K] == e0["layer_scores"][:K]  # the dropped blocks keep their scores
    # cost: the cached prefix has no forward at all; the frozen one runs forward, no backward
    assert cost.step(K, K) == cost.step(0, K) - cost.forward(0, K)
    assert e0["epoch_flops"] == steps * bs * cost.full_step()
    assert s.measured == e2["epoch_flops"]  # a whole epoch counted as it ran (no second cache build)
    if cls is ForcedLearnDrop:
        assert e2["epoch_flops"] == steps * bs * cost.step(K, K)
        with torch.no_grad():  # a real step from cached maps, counted by FlopCounterMode: the table's figure
            x = data.train_x[:32]
            for b in model.blocks[:K]:
                x = b(x)
        with FlopCounterMode(display=False) as fc:
            F.cross_entropy(model.forward_from(x, K), data.train_y[:32]).backward()
        assert fc.get_total_flops() == 32 * cost.step(K, K)
        assert e1["epoch_flops"] == e2["epoch_flops"] + N * cost.forward(0, K)  # the one cache build
        assert e1["cache_tier"] == "device" and e1["cache_bytes"] == N * 4 * 28 * 28 * 4
    else:
        assert e1["epoch_flops"] == e2["epoch_flops"] == steps * bs * cost.step(0, K)
        assert e1["cache_tier"] == "none"
    assert not list(tmp_path.iterdir())  # nothing left in the run's directory


@pytest.mark.parametrize("device_budget", [None, 0])  # device tier, then the memmap tier
def test_head_from_cache_matches_head_through_frozen_prefix(data, tmp_path, device_budget):
    torch.manual_seed(0)
    model = models.build("resnet20", 1, 10, width=4)
    for b in model.blocks[:K]:  # as the loop freezes: eval mode, no grad
        b.eval()
        b.requires_grad_(False)
    cache = FeatureCache("cpu", workdir=tmp_path, device_budget=device_budget)
    cache.build(model.blocks, data, K)
    assert cache.tier == ("device" if device_budget is None else "disk")
    batch = next(cache.batches(64, torch.Generator().manual_seed(1)))
    twin = copy.deepcopy(model)

    loss_cache = F.cross_entropy(model.forward_from(batch.x, K), batch.y)
    x = data.train_x[batch.idx]
    with torch.no_grad():
        for b in twin.blocks[:K]:
            x = b(x)
    loss_frozen = F.cross_entropy(twin.forward_from(x, K), data.train_y[batch.idx])
    assert loss_cache.item() == pytest.approx(loss_frozen.item(), rel=1e-5)
    loss_cache.backward()
    loss_frozen.backward()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    cache.close()
    assert not list(tmp_path.iterdir())


def test_real_selection_replays_from_the_record(data):
    """The real strategy's decisions follow from its recorded scores by Eqs. 3-4 and the median
    rule, from the end of the first epoch after warm-up on; during warm-up scores are recorded only."""
    s = strategies.create("learn_drop", warmup_epochs=1)
    recs = fit(workload(), s, data=data).epochs
    nb = len(s.ctx.model.blocks)
    assert recs[0]["drop_selected"] == 0 and select(recs[0]["layer_scores"], [])[0] > 0  # warm-up held it
    assert any(e["drop_selected"] > 0 for e in recs)  # this seed drops (so the replay checks a drop)
    for e, rec in enumerate(recs):
        z = rec["dropped_blocks"]
        assert rec["active_blocks"] == nb - z
        assert len(rec["layer_scores"]) == nb and all(0 <= p <= 1 for p in rec["layer_scores"])
        assert rec["layer_scores_std"][z:] == pytest.approx(standardize(rec["layer_scores"][z:]))
        if e >= 1:
            n, _ = select(rec["layer_scores"][z:], rec["layer_scores_std"][:z])
            assert rec["drop_selected"] == z + n
        assert rec["drop_selected"] < nb  # the last block and the head always train
        if e + 1 < len(recs):
            assert recs[e + 1]["dropped_blocks"] == rec["drop_selected"]
        assert rec["cache_tier"] == ("device" if z else "none")


@pytest.mark.parametrize("setting, field", [("warmup_epochs=-1", "learn_drop.warmup_epochs"),
                                            ("selection=median", "learn_drop.selection"),
                                            ("min_drop=0", "learn_drop.min_drop"),
                                            ("median_rule=maybe", "learn_drop.median_rule"),
                                            ("standardize=some", "learn_drop.standardize"),
                                            ("no_such=1", "learn_drop.no_such")])
def test_bad_hyperparameter_exits_2_naming_the_field(setting, field, capsys):
    assert cli.main(["train", "--strategy", "learn_drop", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ldtune: error: {field}:")


class _TwoDrops(LearnDrop):
    """Selects 2 blocks at the end of epoch 0 and 4 at the end of epoch 1; FlopCounterMode watches
    from each epoch_start to the first step (where the loop builds or advances the cache)."""

    def setup(self, ctx):
        super().setup(ctx)
        self.before, self.counter = [], None

    def epoch_start(self, epoch):
        plan = super().epoch_start(epoch)
        self.counter = FlopCounterMode(display=False)
        self.counter.__enter__()
        return plan

    def step_start(self, epoch, step, t):
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.before.append(self.counter.get_total_flops())
            self.counter = None

    def epoch_end(self, epoch):
        rec = super().epoch_end(epoch)
        self.dropped = rec["drop_selected"] = {0: 2, 1: 4}.get(epoch, self.dropped)
        return rec


def test_a_later_drop_advances_the_cache_from_its_maps_not_from_the_images(data):
    s = _TwoDrops(warmup_epochs=100)
    r = fit(workload(3), s, data=data)
    assert r.status == "ok" and [e["dropped_blocks"] for e in r.epochs] == [0, 2, 4]
    cost = s.ctx.cost
    # epoch 1 builds the cache through blocks 0-1; epoch 2 pushes it through blocks 2-3 only
    assert s.before == [0, N * cost.forward(0, 2), N * cost.forward(2, 4)]
