"""The loop: learns, reports per epoch, is seeded, stops on divergence, obeys a strategy's plan."""
import dataclasses

import pytest
import torch

from ldtune import strategies
from ldtune.strategies import EpochPlan, Strategy
from ldtune.train import Workload, fit

W = Workload(model="resnet20", width=8, dataset="fashion_mnist", subset=512, epochs=2, batch_size=32)


def test_baseline_learns_and_reports_each_epoch(fmnist_small):
    seen = []
    r = fit(dataclasses.replace(W, epochs=3), strategies.create("baseline"), callback=seen.append, data=fmnist_small)
    assert r.status == "ok"
    assert r.test_accuracy > 0.45  # 10 classes: chance is 0.1; 48 steps reach about 0.6
    assert [e["epoch"] for e in seen] == [0, 1, 2] and r.epochs == seen
    assert r.epochs[2]["train_loss"] < r.epochs[0]["train_loss"]
    assert r.train_flops == r.baseline_flops and r.flops_saved == 0.0
    assert all(e["active_blocks"] == 10 and e["epoch_time_s"] > 0 for e in r.epochs)
    assert r.eval_time_s > 0 and r.device_name.startswith("cpu")


def test_seeded_runs_repeat_exactly(fmnist_small):
    w = dataclasses.replace(W, epochs=1)
    a = fit(w, strategies.create("baseline"), data=fmnist_small)
    b = fit(w, strategies.create("baseline"), data=fmnist_small)
    c = fit(dataclasses.replace(w, seed=1), strategies.create("baseline"), data=fmnist_small)
    assert a.epochs[0]["train_loss"] == b.epochs[0]["train_loss"] and a.test_accuracy == b.test_accuracy
    assert c.epochs[0]["train_loss"] != a.epochs[0]["train_loss"]


class SeedProbe(Strategy):
    """Trains like the baseline and notes what each source of randomness gave the run: the initial
    weights, the first batch (the batch order) and the strategy's own generator (``ctx.rng``)."""
    name = ""  # not registered

    def setup(self, ctx):
        self.seen = {"weights": float(sum(p.detach().double().sum() for p in ctx.model.parameters())),
                     "draw": torch.rand(4, generator=ctx.rng).tolist()}
        self.hook = ctx.model.blocks[0].register_forward_pre_hook(self.first_batch)

    def first_batch(self, module, args):
        self.seen["batch"] = float(args[0].double().sum())
        self.hook.remove()


def test_the_seed_reaches_every_source_of_randomness(fmnist_small):
    w = dataclasses.replace(W, epochs=1)
    runs = [SeedProbe(), SeedProbe(), SeedProbe()]
    for probe, seed in zip(runs, (0, 0, 1)):
        assert fit(dataclasses.replace(w, seed=seed), probe, data=fmnist_small).status == "ok"
    a, b, c = (p.seen for p in runs)
    assert a == b and a.keys() == {"weights", "draw", "batch"}
    assert all(c[k] != a[k] for k in a), (a, c)  # another seed: other weights, another batch order, other draws


def test_divergence_is_a_status_not_a_crash(fmnist_small):
    r = fit(dataclasses.replace(W, lr=1e8, epochs=2), strategies.create("baseline"), data=fmnist_small)
    assert r.status == "diverged" and "non-finite" in r.error
    assert len(r.epochs) == 1
    # it stopped after one of two epochs: half the FLOPs, which is no saving
    assert r.train_flops == r.baseline_flops // 2 and r.flops_saved is None


def test_a_diverged_run_reports_no_saving_in_its_json_line(capsys):
    import json
    from ldtune.cli import main
    assert main(["train", "--dataset", "digits", "--width", "4", "--epochs", "2", "--subset", "256", "--lr", "1e30",
                 "--json"]) == 1
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["status"] == "diverged" and out["flops_saved"] is None and out["train_flops"] > 0


class _FreezeTwo(Strategy):
    """Test-only: freezes the first two blocks from the second epoch (not registered: no ``name``)."""

    def setup(self, ctx):
        self.ctx = ctx

    def epoch_start(self, epoch):
        if epoch == 1:
            self.snapshot = [p.detach().clone() for b in self.ctx.model.blocks[:2] for p in b.parameters()]
            self.bn_state = [t.clone() for b in self.ctx.model.blocks[:2] for t in b.state_dict().values()]
            self.later = [p.detach().clone() for p in self._later_params()]
        return EpochPlan(frozen=2 if epoch >= 1 else 0)

    def _later_params(self):
        return [p for m in [*self.ctx.model.blocks[2:], self.ctx.model.head] for p in m.parameters()]


def test_loop_obeys_a_frozen_prefix(fmnist_small):
    s = _FreezeTwo()
    r = fit(dataclasses.replace(W, epochs=3), s, data=fmnist_small)
    assert r.status == "ok", r.error
    model = s.ctx.model
    assert len(s.later) == len(s._later_params())
    assert all(not torch.equal(a, p) for a, p in zip(s.later, s._later_params()))  # the rest and the head kept training
    after = [p.detach() for b in model.blocks[:2] for p in b.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(s.snapshot, after))  # no update, no momentum, no decay
    after_bn = [t for b in model.blocks[:2] for t in b.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(s.bn_state, after_bn))  # BN running stats untouched
    assert [e["active_blocks"] for e in r.epochs] == [10, 8, 8]
    assert r.epochs[2]["epoch_flops"] < r.epochs[0]["epoch_flops"] and 0 < r.flops_saved < 0.5
    assert r.epochs[1]["trainable_params"] < r.epochs[0]["trainable_params"]


def test_lr_schedules():
    from ldtune.train import lr_schedule
    assert [lr_schedule("cosine", t) for t in (0.0, 0.5, 1.0, 1.2)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert [lr_schedule("step", t) for t in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])  # x0.1 at 50% and at 75% of training
    assert {lr_schedule("constant", t) for t in (0.0, 0.5, 1.0)} == {1.0}


def test_cpu_sgd_matches_pytorchs_loop_when_parameters_start_and_skip_steps():
    # a skipped branch's parameters get no gradient on some steps, and their first one late; the
    # fused CPU SGD with zero-started momentum buffers must update exactly as PyTorch's loop SGD does
    from ldtune.train import sgd
    torch.manual_seed(0)
    ref = [torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last), torch.randn(8), torch.randn(3)]
    ours = [p.clone() for p in ref]
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opts = [torch.optim.SGD([{"params": ref[:2]}, {"params": ref[2:]}], foreach=False, **hp),
            sgd([{"params": ours[:2]}, {"params": ours[2:]}], torch.device("cpu"), **hp)]
    has_grad = [(True, False, False), (True, True, False), (False, True, False), (True, True, False)]
    for step in has_grad:
        grads = [torch.randn_like(p) for p in ref]
        for params, opt in zip((ref, ours), opts):
            for p, g, on in zip(params, grads, step):
                p.grad = g.clone() if on else None
            opt.step()
    for a, b in zip(ref, ours):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(opts[1].state[ours[2]]["momentum_buffer"], torch.zeros(3))  # never had a gradient: untouched


def test_cpu_sgd_matches_pytorchs_loop_on_a_channels_last_net():
    # fused SGD walks each parameter's memory as is: a gradient must have its parameter's layout,
    # as autograd makes it; on real channels-last steps (3x3 and 1x1 convs, BatchNorm, the head)
    # the updates match the loop SGD's
    import copy
    import torch.nn.functional as F
    from ldtune import models
    from ldtune.strategies.depth_dropout import branch_channels, trainable_shortcut
    from ldtune.train import sgd
    torch.manual_seed(0)
    net = models.build("resnet20", 1, 10, width=4, image_size=28)
    for u in models.residual_units(net):
        if not u.downsample:
            u.shortcut = trainable_shortcut(branch_channels(u))
    net = net.to(memory_format=torch.channels_last).train()
    ref = copy.deepcopy(net)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opts = [torch.optim.SGD(ref.parameters(), foreach=False, **hp), sgd(net.parameters(), torch.device("cpu"), **hp)]
    x, y = torch.randn(8, 1, 28, 28).to(memory_format=torch.channels_last), torch.arange(8) % 10
    for _ in range(3):
        for m, opt in zip((ref, net), opts):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(ref.parameters(), net.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cpu_run_is_named_by_its_cpu_model():
    """Trials share a baseline only on equal device names, so a cluster's nodes of different CPUs
    must be named apart: by the model, with its family and model numbers, since a VM may name
    every generation of a line alike ('AMD EPYC' for Zen 3 and Zen 4 here)."""
    import platform
    import re
    from pathlib import Path

    from ldtune.train import device_name
    cpuinfo = Path("/proc/cpuinfo")
    first = cpuinfo.read_text().split("\n\n")[0] if cpuinfo.is_file() else ""
    info = dict(re.findall(r"^(model name|cpu family|model)\s*:\s*(.*?)\s*$", first, re.M))
    model = (f"{info['model name']} (family {info['cpu family']}, model {info['model']})" if "model name" in info
             else platform.processor() or platform.machine())
    assert device_name(torch.device("cpu")) == f"cpu:{model}:{torch.get_num_threads()}t"
