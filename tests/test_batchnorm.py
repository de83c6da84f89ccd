"""ldtune's fused CPU BatchNorm (ldtune/batchnorm.py) computes what nn.BatchNorm2d computes."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldtune import batchnorm, models


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """The names of the ops a block of code dispatches."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def _cl(t):
    return t.to(memory_format=torch.channels_last)


def test_the_kernel_builds_here():
    # without it every CPU run silently trains with PyTorch's BatchNorm: slower, and not what BENCHMARKS.md measured
    assert batchnorm.available()


@pytest.mark.parametrize("shape,momentum", [((64, 8, 28, 28), 0.1), ((7, 24, 9, 9), 0.1), ((2, 3, 5, 5), None),
                                            ((16, 64, 4, 4), 0.3)])
def test_matches_pytorch_in_float64_forward_backward_and_running_statistics(shape, momentum):
    # 8, 64 channels: the kernel's fixed-width loops; 24, 3: its general loop. A mean of 50 over a
    # std of 3 is where summing x^2 in float32 would lose digits; the shifted sums must not.
    torch.manual_seed(0)
    c = shape[1]
    ref = nn.BatchNorm2d(c, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2)
        ref.bias.normal_()
    fused = copy.deepcopy(ref).float()
    assert batchnorm.use_fused(fused) == 1 and isinstance(fused, nn.BatchNorm2d)
    for _ in range(3):
        x = _cl(torch.randn(shape, dtype=torch.float64) * 3 + 50)
        dy = _cl(torch.randn(shape, dtype=torch.float64))
        xr, xf = x.clone().requires_grad_(), x.float().requires_grad_()
        yr, yf = ref(xr), fused(xf)
        yr.backward(dy)
        yf.backward(dy.float())
    for t in (yf, xf.grad):
        assert t.is_contiguous(memory_format=torch.channels_last)
    for got, want in [(yf, yr), (xf.grad, xr.grad), (fused.weight.grad, ref.weight.grad),
                      (fused.bias.grad, ref.bias.grad), (fused.running_mean, ref.running_mean),
                      (fused.running_var, ref.running_var)]:
        assert (got.double() - want).abs().max() <= 2e-6 * want.abs().max()
    assert fused.num_batches_tracked == ref.num_batches_tracked == 3


def test_eval_mode_matches_pytorch():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(24)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
        bn.weight.normal_()
        bn.bias.normal_()
    fused = copy.deepcopy(bn).eval()
    batchnorm.use_fused(fused)
    x = _cl(torch.randn(5, 24, 7, 7))
    with torch.no_grad():
        y = fused(x)
        assert torch.allclose(y, bn.eval()(x), rtol=1e-5, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_no_input_gradient_still_gives_weight_gradients():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    fused = copy.deepcopy(bn)
    batchnorm.use_fused(fused)
    x, dy = _cl(torch.randn(4, 8, 6, 6)), _cl(torch.randn(4, 8, 6, 6))
    bn(x).backward(dy)
    fused(x).backward(dy)
    assert torch.allclose(fused.weight.grad, bn.weight.grad, atol=1e-5)
    assert torch.allclose(fused.bias.grad, bn.bias.grad, atol=1e-5)


def test_runs_only_where_it_applies():
    bn = nn.BatchNorm2d(8)
    batchnorm.use_fused(bn)
    x = torch.randn(4, 8, 6, 6)
    xc = _cl(x)

    def ops(fn):
        with _Ops() as log:
            fn()
        return {n.split(".")[0] + "." + n.split(".")[1] for n in log.names}

    x_grad = _cl(x).requires_grad_()
    trained = ops(lambda: bn(x_grad).sum().backward())
    assert {"ldtune.batch_norm_train_forward", "ldtune.batch_norm_train_backward"} <= trained
    bn.eval()
    with torch.no_grad():
        assert ops(lambda: bn(xc)) == {"ldtune.batch_norm_eval"}  # a frozen layer, evaluation
    for other in (lambda: bn(xc),  # eval mode with gradients wanted: PyTorch's BatchNorm has them
                  lambda: bn.train()(x),  # NCHW
                  lambda: bn.double()(_cl(x.double()))):  # not float32
        assert not any(n.startswith("ldtune.") for n in ops(other))
    bn.float()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.float()(_cl(torch.randn(1, 8, 1, 1)))  # PyTorch's own error


def test_same_bits_on_one_and_two_threads():
    # partial sums over fixed chunks of pixels, added in order: the thread count cannot change a result
    torch.manual_seed(0)
    x, dy = _cl(torch.randn(64, 8, 28, 28)), _cl(torch.randn(64, 8, 28, 28))
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            bn = nn.BatchNorm2d(8)
            batchnorm.use_fused(bn)
            xr = x.clone().requires_grad_()
            y = bn(xr)
            y.backward(dy)
            out.append((y, xr.grad, bn.weight.grad, bn.running_var))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_a_whole_net_step_matches_and_every_batchnorm_is_fused():
    torch.manual_seed(0)
    net = _cl(models.build("resnet20", 1, 10, width=4, image_size=28)).train()
    fused = copy.deepcopy(net)
    n_bn = sum(type(m) is nn.BatchNorm2d for m in net.modules())
    assert batchnorm.use_fused(fused) == n_bn > 0
    assert fused.state_dict().keys() == net.state_dict().keys()
    x, y = _cl(torch.randn(16, 1, 28, 28)), torch.arange(16) % 10
    losses = []
    for m in (net, fused):
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for p, q in zip(net.parameters(), fused.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5)


def test_runs_without_the_kernel_are_named_apart(monkeypatch):
    # a node that cannot build the kernel trains slower; its runs must not share the others' baseline
    from ldtune.train import device_name
    assert not device_name(torch.device("cpu")).endswith(":aten-bn")
    monkeypatch.setattr(batchnorm, "available", lambda: False)
    assert device_name(torch.device("cpu")).endswith(":aten-bn")
    net = models.build("resnet20", 1, 10, width=4, image_size=28)
    assert batchnorm.use_fused(net) == 0 and all(type(m) is not batchnorm.BatchNorm2d for m in net.modules())


def test_ldtune_fused_bn_0_trains_with_pytorchs_batchnorm_and_says_so():
    """The README's switch: ``LDTUNE_FUSED_BN=0`` trains with PyTorch's BatchNorm, and the run's
    device_name says so, as a node without the kernel does."""
    import json
    import os
    import subprocess
    import sys
    argv = [sys.executable, "-m", "ldtune", "train", "--dataset", "digits", "--width", "4", "--epochs", "1",
            "--subset", "256", "--device", "cpu", "--json"]
    ran = subprocess.run(argv, env={**os.environ, "LDTUNE_FUSED_BN": "0", "LDTUNE_THREADS": "1"},
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.splitlines()[-1])
    assert out["status"] == "ok" and out["device_name"].endswith(":1t:aten-bn"), out["device_name"]
    assert batchnorm.available()  # without the switch, this machine trains with the kernel
