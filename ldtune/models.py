"""Models as block sequences.

``build(name, in_channels, num_classes, ...)`` returns a :class:`BlockNet`: ``blocks`` (an
``nn.ModuleList`` of units that each take one tensor and return one tensor) and ``head``.
A residual unit holds its shortcut, so a block's output is all a feature cache needs.

Residual units are :class:`ResidualUnit` (``branch`` + ``shortcut`` + ``post``), whatever
net they came from, so strategies that skip a branch (stochastic depth, Depth Dropout) or
swap a shortcut find one shape everywhere. ``run_branch`` is a per-step switch: when it is
off the branch is not computed at all (no masking).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .errors import UserError


class ResidualUnit(nn.Module):
    """out = post(shortcut(x) + scale * branch(x)); the branch is skipped when ``run_branch`` is off."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, post: nn.Module | None = None,
                 downsample: bool = False, input_nonnegative: bool = False):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()
        self.downsample = downsample  # changes resolution or width: the shortcut is a projection
        self.input_nonnegative = input_nonnegative  # x is a ReLU's output (the stem's, or the unit before's)
        self.run_branch = True  # set per step by a strategy; off => branch not computed
        self.eval_branch_scale = 1.0  # multiplies the branch in eval mode (stochastic depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and not self.run_branch and self.input_nonnegative
                and isinstance(self.shortcut, nn.Identity) and isinstance(self.post, nn.ReLU)):
            # relu(x) == x for x >= 0, and its backward mask repeats the one x's own ReLU applies:
            # a skipped unit with an identity shortcut runs nothing at all, not even a ReLU pass
            return x
        out = self.shortcut(x)
        if self.training:
            if self.run_branch:
                out = out + self.branch(x)
        else:
            b = self.branch(x)
            out = out + (b if self.eval_branch_scale == 1.0 else b * self.eval_branch_scale)
        return self.post(out)


class Projection(nn.Conv2d):
    """A 1x1 convolution with stride s (a down-sampling shortcut), computed as a stride-1 1x1
    convolution of every s-th pixel: the same function, parameters and FLOPs.

    oneDNN's own strided 1x1 weight-gradient kernel (torch 2.14.1) reads out of bounds on
    channels-last inputs with few channels when it runs on more than one thread: a width-8
    ResNet-20 step with an odd batch size crashes the process (SIGSEGV), and two quickstart trials
    died in the same kernel. This path never calls it.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False):
        super().__init__(cin, cout, 1, stride, 0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(self.stride) != (1, 1):
            # every s-th pixel, as a 1x1 average pool: the same values as x[:, :, ::s, ::s], but its
            # backward keeps x's memory format, where slicing's backward returns a contiguous
            # (NCHW) gradient into a channels-last net, and every op it reaches runs its slow mixed-
            # layout path (a stage-1 ReLU backward: 2.4 ms instead of 0.2 ms)
            x = F.avg_pool2d(x, 1, self.stride)
        return F.conv2d(x, self.weight, self.bias)

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "Projection":
        """A Projection sharing ``conv``'s parameters (``conv``: 1x1, no padding, no groups)."""
        p = cls(conv.in_channels, conv.out_channels, conv.stride[0], bias=False)
        p.stride = conv.stride
        p.weight = conv.weight
        p.bias = conv.bias
        return p


class BlockNet(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: nn.Module, name: str = ""):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.arch = name

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        for b in self.blocks[start:]:
            x = b(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), _bn(cout)]


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), as ``AdaptiveAvgPool2d(1)``: the mean over each map, computed
    as a sum times 1 / (H W).

    ``AdaptiveAvgPool2d(1)``'s backward (and ``mean``'s) hands the last block a contiguous (NCHW)
    gradient; in a channels-last net the ReLU backward it reaches then runs its slow mixed-layout
    path (0.6 ms instead of 0.04 ms at 64x32x7x7 on one core). A sum's backward is a broadcast
    view, which every layout reads at full speed.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((2, 3), keepdim=True) * (1.0 / (x.shape[2] * x.shape[3]))


def _head(c: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(GlobalAvgPool(), nn.Flatten(), nn.Linear(c, num_classes))


# ---------------------------------------------------------------- CIFAR ResNets (He et al. 2016, Sec. 4.2)
def cifar_resnet(depth: int, in_channels: int, num_classes: int, width: int = 16) -> BlockNet:
    """ResNet-(6n+2): a 3x3 stem, three stages of n basic units at width, 2*width, 4*width.

    ``width`` is the stem's channel count (16 in the paper); narrow nets (4, 8) keep CPU tests fast.
    Down-sampling units use a 1x1 conv + BN projection shortcut (option B).
    """
    if (depth - 2) % 6:
        raise UserError("model", f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    blocks: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, width), nn.ReLU(inplace=True))]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            branch = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout))
            down = stride != 1 or cin != cout
            shortcut = nn.Sequential(Projection(cin, cout, stride), _bn(cout)) if down else None
            blocks.append(ResidualUnit(branch, shortcut, nn.ReLU(), downsample=down, input_nonnegative=True))
            cin = cout
    net = BlockNet(blocks, _head(cin, num_classes), f"resnet{depth}")
    _init(net)
    return net


def _init(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- torchvision nets, adapted
def _small_stem(tv: nn.Module, in_channels: int, small_input: bool) -> None:
    """3x3 stride-1 first conv and no max-pool for small images (CIFAR practice); any channel count."""
    old = tv.conv1
    if small_input:
        tv.conv1 = nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=False)
        tv.maxpool = nn.Identity()
    elif in_channels != old.in_channels:
        tv.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)


def adapt_torchvision_resnet(tv: nn.Module, in_channels: int, small_input: bool = True) -> nn.Module:
    """Adapt a torchvision ResNet in place to small images and ``in_channels``; returns it."""
    _small_stem(tv, in_channels, small_input)
    tv.avgpool = GlobalAvgPool()
    return tv


def resnet_blocks(tv: nn.Module, name: str = "") -> BlockNet:
    """Split an (adapted) torchvision ResNet into a BlockNet sharing its modules.

    Block 0 is the stem; then one :class:`ResidualUnit` per BasicBlock/Bottleneck. The unit's
    branch reuses the torchvision layers in the order torchvision's ``forward`` runs them.
    """
    blocks: list[nn.Module] = [nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)]
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        for u in layer:
            if isinstance(u, torchvision.models.resnet.Bottleneck):
                branch = nn.Sequential(u.conv1, u.bn1, nn.ReLU(inplace=True), u.conv2, u.bn2,
                                       nn.ReLU(inplace=True), u.conv3, u.bn3)
            else:
                branch = nn.Sequential(u.conv1, u.bn1, nn.ReLU(inplace=True), u.conv2, u.bn2)
            if u.downsample is not None:
                u.downsample[0] = Projection.replacing(u.downsample[0])
            blocks.append(ResidualUnit(branch, u.downsample, nn.ReLU(), downsample=u.downsample is not None,
                                       input_nonnegative=True))  # the stem ends in ReLU (+ max-pool)
    return BlockNet(blocks, nn.Sequential(tv.avgpool, nn.Flatten(), tv.fc), name)


def adapt_torchvision_vgg(tv: nn.Module, in_channels: int, image_size: int = 32) -> nn.Module:
    """Adapt a torchvision VGG-BN in place: first conv to ``in_channels``, global pooling and one
    linear classifier (the CIFAR-style VGG head), and drop max-pools that would shrink the map
    below 1x1 (28x28 inputs keep four of the five)."""
    feats = list(tv.features)
    if in_channels != feats[0].in_channels:
        feats[0] = nn.Conv2d(in_channels, feats[0].out_channels, 3, padding=1)
    size, kept = image_size, []
    for m in feats:
        if isinstance(m, nn.MaxPool2d):
            if size // 2 < 1:
                continue
            size //= 2
        kept.append(m)
    tv.features = nn.Sequential(*kept)
    tv.avgpool = GlobalAvgPool()
    tv.classifier = nn.Linear(512, tv.classifier[-1].out_features)
    return tv


def vgg_blocks(tv: nn.Module, name: str = "") -> BlockNet:
    """One block per conv+BN+ReLU, with the max-pool that follows it (if any)."""
    blocks, cur = [], []
    for m in tv.features:
        if isinstance(m, nn.Conv2d) and cur:
            blocks.append(nn.Sequential(*cur))
            cur = []
        cur.append(m)
    blocks.append(nn.Sequential(*cur))
    return BlockNet(blocks, nn.Sequential(tv.avgpool, nn.Flatten(), tv.classifier), name)


def features_blocks(tv: nn.Module, name: str, in_channels: int, small_input: bool = False) -> BlockNet:
    """Nets whose ``features`` is already a sequence of units (MobileNetV2, EfficientNet, DenseNet):
    one block per child of ``features``; the first conv takes ``in_channels``. For small images a
    DenseNet gets a 3x3 stride-1 stem without its max-pool (else its third transition pools 1x1 maps)."""
    feats = list(tv.features.children())
    if name.startswith("densenet") and small_input:
        feats[0] = nn.Conv2d(in_channels, feats[0].out_channels, 3, 1, 1, bias=False)
        feats[3] = nn.Identity()
    first = feats[0]
    conv = first if isinstance(first, nn.Conv2d) else first[0]
    if conv.in_channels != in_channels:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
        if isinstance(first, nn.Conv2d):
            feats[0] = new
        else:
            first[0] = new
    if name.startswith("densenet"):
        # DenseNet: conv0/norm0/relu0/pool0 are one stem block; the final norm joins the head.
        stem = nn.Sequential(*feats[:4])
        feats = [stem] + feats[4:-1]
        head = nn.Sequential(tv.features[-1], nn.ReLU(inplace=True), GlobalAvgPool(), nn.Flatten(),
                             tv.classifier)
    else:
        head = nn.Sequential(GlobalAvgPool(), nn.Flatten(), tv.classifier)
    return BlockNet(feats, head, name)


_TV_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_TV_VGGS = ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
_TV_FEATURES = ("mobilenet_v2", "efficientnet_b0", "densenet121")
_CIFAR = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
CIFAR_RESNETS = tuple(_CIFAR)  # the nets whose width ``build`` sets

MODELS = CIFAR_RESNETS + _TV_RESNETS + _TV_VGGS + _TV_FEATURES


def build(name: str, in_channels: int = 3, num_classes: int = 10, width: int | None = None,
          image_size: int = 32) -> BlockNet:
    """Build model ``name`` as a BlockNet.

    ``width``: stem channels of CIFAR ResNets (default 16, the paper's); ignored by others.
    ``image_size``: input side in pixels; below 64 the torchvision nets get the small-image stem.
    """
    if name in _CIFAR:
        return cifar_resnet(_CIFAR[name], in_channels, num_classes, width or 16)
    ctor: Callable[..., nn.Module] | None = getattr(torchvision.models, name, None)
    small = image_size < 64
    if name in _TV_RESNETS:
        return resnet_blocks(adapt_torchvision_resnet(ctor(num_classes=num_classes), in_channels, small), name)
    if name in _TV_VGGS:
        return vgg_blocks(adapt_torchvision_vgg(ctor(num_classes=num_classes), in_channels, image_size), name)
    if name in _TV_FEATURES:
        return features_blocks(ctor(num_classes=num_classes), name, in_channels, small)
    raise UserError("model", f"unknown model {name!r}; known: {', '.join(MODELS)}")


def residual_units(net: BlockNet) -> list[ResidualUnit]:
    """The net's blocks that are ResidualUnits, in order."""
    return [b for b in net.blocks if isinstance(b, ResidualUnit)]
