"""The cost table's per-step sums against FlopCounterMode on real training steps."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ldtune import models
from ldtune.cost import CostTable


def _real_step_flops(net, x, y, start=0, frozen=0):
    """FLOPs FlopCounterMode counts for one real step (forward + backward) as the loop runs it."""
    with FlopCounterMode(display=False) as fc:
        h = x
        with torch.no_grad():
            for b in net.blocks[start:frozen]:
                h = b(h)
        loss = F.cross_entropy(net.forward_from(h, max(frozen, start)), y)
        loss.backward()
    return fc.get_total_flops()


def _freeze(net, k):
    for b in net.blocks[:k]:
        b.eval()
        for p in b.parameters():
            p.requires_grad_(False)


@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn", "resnet18", "mobilenet_v2"])
def test_full_step_matches_flopcounter(name):
    torch.manual_seed(0)
    net = models.build(name, in_channels=1, num_classes=10, width=4, image_size=32)
    table = CostTable(net, (1, 32, 32))
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    real = _real_step_flops(net, x, y)
    assert table.step() * 4 == real
    assert table.full_step() * 4 == real


@pytest.mark.parametrize("k", [1, 4, 7])
def test_frozen_prefix_step_matches_flopcounter(k):
    torch.manual_seed(0)
    net = models.build("resnet20", in_channels=1, num_classes=10, width=4)
    table = CostTable(net, (1, 28, 28))
    _freeze(net, k)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    real = _real_step_flops(net, x, y, frozen=k)
    assert table.step(0, k) * 4 == real
    assert table.step(0, k) < table.full_step()
    # a cached prefix costs nothing at all per step
    cached_real = _real_step_flops(net, _prefix(net, x, k), y, start=k, frozen=k)
    assert table.step(k, k) * 4 == cached_real
    assert table.step(0, k) - table.step(k, k) == table.forward(0, k)


def _prefix(net, x, k):
    with torch.no_grad():
        for b in net.blocks[:k]:
            x = b(x)
    return x


def test_skipped_branches_and_frozen_weights_match_flopcounter():
    torch.manual_seed(0)
    net = models.build("resnet20", in_channels=1, num_classes=10, width=4)
    table = CostTable(net, (1, 28, 28))
    for u in models.residual_units(net)[::2]:
        u.run_branch = False
    # single layers without weight gradients inside trained blocks (LayerDropBack-style)
    net.blocks[3].branch[0].weight.requires_grad_(False)
    net.blocks[5].branch[3].weight.requires_grad_(False)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    real = _real_step_flops(net, x, y)
    assert table.step() * 4 == real
    assert table.step() < table.full_step()
