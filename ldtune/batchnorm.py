"""BatchNorm for CPU training in channels-last layout, fused into two passes over the data each way.

Why: on a CPU, ATen's BatchNorm over a channels-last map with few channels (a width-8 CIFAR
ResNet's 8 or 16) is far slower than its memory traffic needs. At 64x8x28x28 one forward +
backward took 1.3-1.8 ms, the time of 25 copies of the map; fused here it takes 0.5-0.6 ms
(``scripts/bn_by_stage.py``). It was a fifth of a narrow net's step, which the FLOP count leaves
out, so it made every skip of convolution work save less time than FLOPs; a step is now 7-11%
faster (``scripts/bn_ab.py``).

What it computes: the batch statistics (one pass: sums shifted by the first pixel, added up in
double in a fixed order, so results do not depend on the thread count), then ``y`` (one pass);
backward: ``sum dy`` and ``sum (x - mean) dy`` (one pass), then ``dx`` (one pass, skipped when
``x`` needs no gradient). It matches ``F.batch_norm`` to float32 rounding and updates the running
statistics as ``nn.BatchNorm2d`` does. In eval mode with no gradient needed (a frozen prefix,
evaluation) it is one pass, ``y = (x - running_mean) * scale + bias``. Anything else (CUDA, NCHW,
bf16 under autocast, no affine parameters, eval mode inside a graph) runs PyTorch's own BatchNorm.

The kernel (``csrc/batch_norm_cl.cpp``) is compiled on first use, once per kernel source, torch
and Python version, into ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, under ``ldtune/``
(about 25 s, with ``torch.utils.cpp_extension``; ``scripts/setup.sh`` does it at install).
Without a C++ compiler ldtune warns once and trains with PyTorch's BatchNorm.
``LDTUNE_FUSED_BN=0`` turns it off (for A/B timing).

``recalibrate`` recomputes the running statistics for the net as it is evaluated (precise
BatchNorm), for strategies whose training net differs from it (Depth Dropout's ``recalibrate_bn``).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

SOURCE = Path(__file__).with_name("csrc") / "batch_norm_cl.cpp"


def _build_dir() -> tuple[str, Path]:
    """The library's name and build folder: one per kernel source, torch and Python version."""
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:10]
    name = (f"ldtune_batch_norm_{digest}_torch{re.sub(r'[^0-9a-zA-Z]', '_', torch.__version__)}"
            f"_py{sys.version_info.major}{sys.version_info.minor}")
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return name, Path(root) / "ldtune" / name


@functools.cache
def available() -> bool:
    """Load the kernel, building it the first time; False, with one warning, where that fails."""
    if os.environ.get("LDTUNE_FUSED_BN", "1") == "0":
        return False
    try:
        name, build = _build_dir()
        built = build / f"{name}.so"
        if built.is_file():  # loaded directly: no build lock to wait on, no ninja run per process
            torch.ops.load_library(str(built))
            return True
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
        from torch.utils import cpp_extension
        bin_dir = str(Path(sys.executable).parent)  # the venv's ninja, when PATH lacks it
        if shutil.which("ninja") is None and bin_dir not in os.environ.get("PATH", ""):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        build.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3", "-fopenmp-simd"], build_directory=str(build),
                           is_python_module=False, verbose=False)
        return True
    except Exception as e:  # no compiler, no ninja, a failed build: train with PyTorch's BatchNorm
        warnings.warn(f"ldtune: fused CPU BatchNorm unavailable, using PyTorch's ({type(e).__name__}: {e})")
        return False


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose CPU forward on channels-last float32 maps runs the fused kernels:
    batch statistics (training, with autograd), or running statistics where no gradient is needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.affine and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last) and self.weight.dtype == torch.float32):
            return super().forward(x)
        if self.training or self.running_mean is None:  # batch statistics, as nn.BatchNorm2d decides
            if x.numel() == x.shape[1]:
                return super().forward(x)  # one value per channel: PyTorch's own error
            update = self.training and self.track_running_stats  # running statistics: updated in the kernel
            factor = 0.0
            if update:
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            running = (self.running_mean, self.running_var) if update else (None, None)
            return torch.ops.ldtune.batch_norm_train(x, self.weight, self.bias, *running, factor, self.eps)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or self.bias.requires_grad):
            return super().forward(x)  # eval mode inside a graph: PyTorch's BatchNorm has the gradient
        return torch.ops.ldtune.batch_norm_eval(x, self.weight, self.bias, self.running_mean, self.running_var,
                                                self.eps)


def recalibrate(net: nn.Module, batches: Iterable[torch.Tensor], start: int = 0) -> int:
    """Precise BatchNorm: set the running statistics of every BatchNorm in ``net.blocks[start:]``
    to the plain average of its batch statistics over ``batches``, while every other module
    computes its evaluation function (every residual branch on, scaled as evaluation scales it).
    Running statistics gathered during training describe the net as it trained, which a strategy
    may differ from at evaluation (Depth Dropout: about half the branches off); after this they
    describe the net that is evaluated. The blocks before ``start`` (a frozen prefix) keep theirs.
    Runs the net forward without gradients and restores every module's train/eval mode;
    returns the number of images used."""
    modes = [(m, m.training) for m in net.modules()]
    bns = [m for b in net.blocks[start:] for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    net.eval()
    images = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # None: a cumulative average over the batches, not a moving one
            m.train()
        with torch.no_grad():
            for x in batches:
                net(x)  # the whole forward pass, as the loop charges it
                images += x.shape[0]
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return images


def use_fused(model: nn.Module) -> int:
    """Give every ``nn.BatchNorm2d`` of ``model`` the fused CPU BatchNorm, in place (same
    parameters, buffers and state-dict keys); returns how many. 0 where the kernel is unavailable."""
    bns = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    if not bns or not available():
        return 0
    for m in bns:
        m.__class__ = BatchNorm2d
    return len(bns)


if __name__ == "__main__":  # scripts/setup.sh: build the kernel at install time
    print("ldtune: fused CPU BatchNorm", "ready" if available() else "unavailable (PyTorch's BatchNorm is used)")
