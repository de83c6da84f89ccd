import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchvision

from ldtune import batchnorm, models
from ldtune.errors import UserError


def _randomize_bn(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _split_matches(tv: nn.Module, split, in_channels: int) -> models.BlockNet:
    """Split a copy of ``tv`` (BN statistics randomized) with ``split``; assert both compute the same."""
    _randomize_bn(tv)
    net = split(copy.deepcopy(tv))
    tv.eval(), net.eval()
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), tv(x), atol=1e-5, rtol=1e-4)
    return net


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_blocks_equal_unsplit_torchvision(name):
    torch.manual_seed(0)
    tv = models.adapt_torchvision_resnet(getattr(torchvision.models, name)(num_classes=7), in_channels=1)
    net = _split_matches(tv, models.resnet_blocks, in_channels=1)
    # one stem block, then one block per residual unit (ResNet-18: 8 units; ResNet-50: 16)
    assert len(net.blocks) == 1 + {"resnet18": 8, "resnet50": 16}[name]
    assert all(isinstance(b, models.ResidualUnit) for b in net.blocks[1:])


def test_vgg_blocks_equal_unsplit_torchvision():
    torch.manual_seed(0)
    tv = models.adapt_torchvision_vgg(torchvision.models.vgg11_bn(num_classes=10), in_channels=3, image_size=32)
    net = _split_matches(tv, models.vgg_blocks, in_channels=3)
    assert len(net.blocks) == 8  # VGG-11: one block per conv+BN+ReLU(+pool)


def test_vgg_on_28px_keeps_pools_that_fit():
    net = models.build("vgg11_bn", in_channels=1, num_classes=10, image_size=28)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert pools == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("depth,units", [(20, 9), (56, 27), (110, 54)])
def test_cifar_resnets(depth, units):
    net = models.build(f"resnet{depth}", in_channels=1, num_classes=10, width=4)
    assert len(net.blocks) == 1 + units
    convs = [m for b in net.blocks[1:] for m in b.branch.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 2 == depth  # stem conv + 2 per unit + the fc = 6n+2 weighted layers
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert sum(b.downsample for b in net.blocks[1:]) == 2


def test_width_scales_channels():
    narrow = models.build("resnet20", 1, 10, width=4)
    full = models.build("resnet20", 1, 10)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    assert n_params(full) > 10 * n_params(narrow)
    assert narrow.blocks[0][0].out_channels == 4 and full.blocks[0][0].out_channels == 16


@pytest.mark.parametrize("size", [28, 32])  # MNIST-likes as stored, and CIFAR
@pytest.mark.parametrize("name", ["mobilenet_v2", "densenet121", "efficientnet_b0", "resnet34", "vgg16_bn"])
def test_other_torchvision_nets_build_for_any_channels(name, size):
    net = models.build(name, in_channels=1, num_classes=5, image_size=size)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, size, size))
    assert out.shape == (2, 5)
    assert len(net.blocks) > 4


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0", "densenet121"])
def test_features_nets_blocks_equal_unsplit_torchvision(name):
    """One block per child of ``features``, then the head, compute torchvision's own forward
    (what freezing a prefix and caching its output rely on)."""
    torch.manual_seed(0)
    net = _split_matches(getattr(torchvision.models, name)(num_classes=5),
                         lambda tv: models.features_blocks(tv, name, in_channels=3), in_channels=3)
    assert len(net.blocks) > 4


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_forward_from_a_prefix_output_is_the_whole_net(name):
    """The loop runs a frozen prefix under no_grad (or takes it from the cache), then forward_from."""
    net = models.build(name, in_channels=1, num_classes=5, width=4 if name == "resnet20" else None, image_size=28)
    net.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        whole = net(x)
        for k in (1, 3, len(net.blocks)):
            prefix = x
            for b in net.blocks[:k]:
                prefix = b(prefix)
            assert torch.allclose(net.forward_from(prefix, k), whole, atol=1e-6)


def test_skipped_branch_is_not_computed():
    net = models.build("resnet20", 1, 10, width=4)
    unit = net.blocks[2]
    calls = []
    unit.branch.register_forward_hook(lambda *a: calls.append("branch"))
    unit.post.register_forward_hook(lambda *a: calls.append("post"))
    x = torch.relu(torch.randn(2, 4, 28, 28))  # a unit's input is a ReLU's output
    unit.train()
    unit.run_branch = False
    out = unit(x)
    assert calls == [] and torch.equal(out, x)  # with an identity shortcut, not even the ReLU runs
    unit.run_branch = True
    unit(x)
    assert calls == ["branch", "post"]


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_skipping_a_units_relu_changes_no_output_and_no_gradient(name):
    """relu(x) == x for a unit input x that came out of a ReLU, and the gradients match too."""
    torch.manual_seed(0)
    net = models.build(name, 1, 10, width=4) if name == "resnet20" else models.build(name, 1, 10)
    explicit = copy.deepcopy(net)
    units = [b for b in net.blocks if isinstance(b, models.ResidualUnit)]
    assert all(u.input_nonnegative for u in units)
    for m in (net, explicit):
        m.train()
        for i, u in enumerate(b for b in m.blocks if isinstance(b, models.ResidualUnit)):
            u.run_branch = i % 2 == 0 or u.downsample
    for u in (b for b in explicit.blocks if isinstance(b, models.ResidualUnit)):
        u.input_nonnegative = False  # the same net computing relu(x) where a unit is skipped
    x = torch.randn(4, 1, 28, 28)
    outs = []
    for m in (net, explicit):
        out = m(x)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in m.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]) if a is not None or b is not None)


def test_unknown_model_names_the_field():
    with pytest.raises(UserError) as e:
        models.build("resnet21")
    assert e.value.field == "model"


def test_projection_is_a_strided_1x1_conv():
    conv = torch.nn.Conv2d(8, 16, 1, 2, 0, bias=False)
    proj = models.Projection.replacing(conv)
    assert proj.weight is conv.weight and proj.stride == (2, 2)
    x = torch.randn(3, 8, 28, 28).to(memory_format=torch.channels_last)
    assert torch.allclose(proj(x), conv(x), atol=1e-6)
    assert list(dict(proj.named_parameters())) == ["weight"]  # state dicts keep their keys


def test_narrow_resnet_trains_channels_last_on_two_threads_with_odd_batches():
    # oneDNN's strided 1x1 weight-gradient kernel crashes the process here; run it in a child
    code = ("import torch\nfrom ldtune import models\ntorch.set_num_threads(2)\n"
            "m = models.build('resnet20', 1, 10, width=8).to(memory_format=torch.channels_last)\n"
            "for n in (3, 9, 17):\n"
            "    m(torch.randn(n, 1, 28, 28).to(memory_format=torch.channels_last)).sum().backward()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


class _LayoutLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that gets an activation-sized tensor (first dim == ``batch``) which is not
    channels-last: a contiguous (NCHW) gradient meeting channels-last activations sends an op down
    its slow mixed-layout path, work no skip can save."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch, self.ops = batch, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for a in [*args, *(kwargs or {}).values()]:
            if (isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[0] == self.batch and 0 not in a.stride()
                    and not a.is_contiguous(memory_format=torch.channels_last)):
                self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,off", [("resnet20", "none"), ("resnet20", "all"), ("resnet20", "downsampling"),
                                      ("resnet18", "all"), ("vgg11_bn", "none"), ("mobilenet_v2", "none")])
@pytest.mark.parametrize("bn", ["fused", "native"])  # CPU training runs the fused BatchNorm; CUDA, PyTorch's
def test_a_channels_last_step_keeps_every_tensor_channels_last(name, off, bn):
    # the slices of a down-sampling shortcut and the head's average pool used to return NCHW
    # gradients (where a unit's branch was off, they reached every op back to the stem)
    torch.manual_seed(0)
    net = models.build(name, 1, 10, width=4 if name == "resnet20" else None, image_size=28)
    for u in models.residual_units(net):
        u.run_branch = off == "none" or (off == "downsampling" and not u.downsample)
    net = net.to(memory_format=torch.channels_last).train()
    if bn == "fused":
        assert batchnorm.use_fused(net) > 0
    x = torch.randn(6, 1, 28, 28).to(memory_format=torch.channels_last)
    log = _LayoutLog(batch=6)
    with log:
        torch.nn.functional.cross_entropy(net(x), torch.arange(6) % 10).backward()
    assert not log.ops
