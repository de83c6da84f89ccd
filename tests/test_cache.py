"""The tiered feature cache: tier choice, exact round trips through the memmap tier, advancing
through more blocks (across tiers), batches that cover the training set, files removed at close,
and maps kept in the dtype the prefix made them in (bf16 under autocast)."""
from __future__ import annotations

import copy
import functools
import os

import numpy as np
import pytest
import torch

from ldtune import models
from ldtune.cache import FeatureCache
from ldtune.strategies.learn_drop import LearnDrop
from ldtune.train import Workload, fit, load_data

N = 256  # training images
# LDTUNE_TEST_DEVICE=cuda checks the pinned-host tier too (CI has no GPU: device and disk there)
DEVICE = os.environ.get("LDTUNE_TEST_DEVICE", "cpu")
BUDGETS = {"disk": dict(device_budget=0, host_budget=0)} | ({"host": dict(device_budget=0)} if DEVICE == "cuda" else {})


@pytest.fixture(scope="module")
def data():
    d = load_data(Workload(dataset="fashion_mnist", subset=N))
    d.test_x, d.test_y = d.test_x[:256], d.test_y[:256]
    return d


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = models.build("resnet20", 1, 10, width=4).eval()  # eval: as the loop freezes a prefix
    m.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def on_device(net):
    """(net, data) on DEVICE; the module's ``net`` and ``data`` stay on the CPU for the other tests."""
    return copy.deepcopy(net).to(DEVICE), load_data(Workload(dataset="fashion_mnist", subset=N, device=DEVICE))


def per_sample_bytes(net, data, depth):
    x = data.train_x[:1]
    for b in net.blocks[:depth]:
        x = b(x)
    return x[0].numel() * 4


def test_disk_tier_round_trips_exactly(data, net, tmp_path):
    ref = FeatureCache("cpu", device_budget=1 << 40)
    ref.build(net.blocks, data, 3)
    disk = FeatureCache("cpu", workdir=tmp_path, device_budget=0)
    disk.build(net.blocks, data, 3)
    assert (ref.tier, disk.tier) == ("device", "disk")
    assert disk.nbytes == ref.nbytes == N * per_sample_bytes(net, data, 3) and disk.depth == 3
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].stat().st_size == disk.nbytes
    raw = np.fromfile(files[0], dtype=np.float32).reshape(ref.features.shape)  # a raw array, no pickle
    assert torch.equal(torch.from_numpy(raw), ref.features)
    assert torch.equal(disk.features, ref.features) and torch.equal(disk.labels, data.train_y)
    disk.close()
    assert not list(tmp_path.iterdir()) and disk.tier == "none"
    ref.close()


@pytest.mark.parametrize("budget", ["device", "disk", "disk_then_device"])
def test_advance_equals_building_deeper(data, net, tmp_path, budget):
    small, big = per_sample_bytes(net, data, 5) * N, per_sample_bytes(net, data, 1) * N
    assert small < big  # stage 2 halves the maps' size
    b = {"device": None, "disk": 0, "disk_then_device": small}[budget]
    deep = FeatureCache("cpu")
    deep.build(net.blocks, data, 5)
    c = FeatureCache("cpu", workdir=tmp_path, device_budget=b)
    c.build(net.blocks, data, 1)
    assert c.tier == ("device" if budget == "device" else "disk")
    c.advance(net.blocks, 5)
    assert c.depth == 5 and c.tier == ("disk" if budget == "disk" else "device")
    assert len(list(tmp_path.iterdir())) == (budget == "disk")  # the old file is gone
    torch.testing.assert_close(c.features, deep.features, rtol=0, atol=1e-6)
    c.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("device_budget", [None, 0])
def test_batches_cover_the_training_set_once(data, net, tmp_path, device_budget):
    c = FeatureCache("cpu", workdir=tmp_path, device_budget=device_budget)
    c.build(net.blocks, data, 2)
    seen = []
    for b in c.batches(60, torch.Generator().manual_seed(3)):
        assert b.x.shape[0] == 60 and b.x.device.type == "cpu"
        assert torch.equal(b.x, c.features[b.idx]) and torch.equal(b.y, data.train_y[b.idx])
        seen.append(b.idx)
    seen = torch.cat(seen)
    assert len(seen) == (N // 60) * 60 and len(set(seen.tolist())) == len(seen)  # last partial batch dropped
    c.close()


def test_device_tier_keeps_the_prefix_layout(data, net):
    # the loop's net is channels-last: its cached maps, and the batches read from them, stay so
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    c = FeatureCache("cpu")
    c.build(cl.blocks, data, 2)
    b = next(c.batches(60, torch.Generator().manual_seed(3)))
    assert c.tier == "device" and b.x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(b.x, cl.blocks[1](cl.blocks[0](data.train_x[b.idx])))
    c.close()


def test_tier_choice(monkeypatch):
    c = FeatureCache("cpu", device_budget=100)
    assert c.choose_tier(100) == "device" and c.choose_tier(101) == "disk"  # no pinned tier without CUDA
    monkeypatch.setenv("LDTUNE_CACHE_DEVICE_BYTES", "10")
    assert FeatureCache("cpu").choose_tier(11) == "disk"
    assert FeatureCache("cpu", device_budget=11).choose_tier(11) == "device"  # the argument wins
    monkeypatch.delenv("LDTUNE_CACHE_DEVICE_BYTES")
    assert FeatureCache("cpu").choose_tier(1 << 20) == "device"  # default: half the available RAM


class _DropAfterFirstEpoch(LearnDrop):
    def epoch_end(self, epoch):
        rec = super().epoch_end(epoch)
        self.dropped = rec["drop_selected"] = 3
        return rec


def test_a_run_uses_the_disk_tier_in_its_workdir_and_cleans_up(data, tmp_path, monkeypatch):
    monkeypatch.setenv("LDTUNE_CACHE_DEVICE_BYTES", "0")
    seen = []
    w = Workload(model="resnet20", width=4, dataset="fashion_mnist", subset=N, epochs=2, batch_size=64)
    r = fit(w, _DropAfterFirstEpoch(), data=data, workdir=tmp_path,
            callback=lambda rec: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    assert r.status == "ok"
    assert [e["cache_tier"] for e in r.epochs] == ["none", "disk"]
    assert r.epochs[1]["cache_bytes"] == N * 4 * 28 * 28 * 4
    assert seen[0] == [] and len(seen[1]) == 1 and seen[1][0].endswith(".float32")  # the file, during the run
    assert not list(tmp_path.iterdir())  # removed when the run ends


@pytest.mark.parametrize("tier", sorted(BUDGETS))
def test_off_device_tiers_give_the_device_tiers_batches(tier, on_device, tmp_path):
    """Off the device tier, batches are gathered ahead on worker threads: the same batches in the
    same order (on the disk tier each batch's rows ascending), also when the consumer stops early."""
    dev_net, dev_data = on_device
    ref = FeatureCache(DEVICE)
    ref.build(dev_net.blocks, dev_data, 2)
    c = FeatureCache(DEVICE, workdir=tmp_path, **BUDGETS[tier])
    c.build(dev_net.blocks, dev_data, 2)
    assert (ref.tier, c.tier) == ("device", tier)
    got = list(c.batches(50, torch.Generator().manual_seed(7)))
    want = list(ref.batches(50, torch.Generator().manual_seed(7)))
    assert len(got) == len(want) == N // 50
    # a given number of images (an epoch at another batch size): the last batch short, the same on every tier
    got_short = list(c.batches(64, torch.Generator().manual_seed(8), images=N - 40))
    want_short = list(ref.batches(64, torch.Generator().manual_seed(8), images=N - 40))
    assert [len(b.idx) for b in got_short] == [len(b.idx) for b in want_short] == [64, 64, 64, 24]
    for g, w in [*zip(got, want), *zip(got_short, want_short)]:
        order = w.idx.argsort() if tier == "disk" else torch.arange(len(w.idx), device=w.idx.device)
        assert g.x.device == w.x.device and torch.equal(g.idx, w.idx[order])
        assert torch.equal(g.x, w.x[order]) and torch.equal(g.y, w.y[order])
    it = c.batches(50, torch.Generator().manual_seed(7))
    first = next(it)
    it.close()  # abandons the epoch: the workers' pending gathers are awaited, nothing leaks
    assert torch.equal(first.x, got[0].x)
    c.close()
    ref.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tier", ["device"] + sorted(BUDGETS))
def test_under_autocast_the_cache_holds_the_prefix_output_bit_for_bit(tier, on_device, data, net, tmp_path):
    """Under bf16 autocast (the CUDA loop's; here the CPU's) a prefix hands the next block bf16 maps.
    The cache keeps them as such, in half the bytes of float32, and the rest of the net run from
    cached maps gives exactly what it gives from the images (an upcast copy would not: an identity
    shortcut would then add in float32)."""
    dev_net, dev_data = on_device
    autocast = functools.partial(torch.autocast, DEVICE, dtype=torch.bfloat16)
    depth = 2  # the next block is a residual unit with an identity shortcut
    c = FeatureCache(DEVICE, workdir=tmp_path, **BUDGETS.get(tier, {}))
    c.build(dev_net.blocks, dev_data, depth, autocast=autocast)
    assert c.tier == tier and c.features.dtype == torch.bfloat16
    assert c.nbytes == N * per_sample_bytes(net, data, depth) // 2
    x = dev_data.train_x[:N]  # one batch, as the build ran it
    with torch.no_grad(), autocast():
        prefix = dev_net.blocks[0](x)
        for b in dev_net.blocks[1:depth]:
            prefix = b(prefix)
        want = dev_net(x)
        got = dev_net.forward_from(c.features.to(DEVICE), depth)
    assert torch.equal(c.features.to(DEVICE), prefix)
    assert torch.equal(got, want)
    batch = next(iter(c.batches(50, torch.Generator().manual_seed(1))))
    assert batch.x.dtype == torch.bfloat16 and torch.equal(batch.x, prefix[batch.idx])
    c.advance(dev_net.blocks, depth + 2, autocast=autocast)  # a deeper prefix stays bf16 too
    assert c.features.dtype == torch.bfloat16
    c.close()
    assert not list(tmp_path.iterdir())
