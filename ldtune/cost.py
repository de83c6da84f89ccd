"""Cost accounting from one table.

Each parameter-holding leaf (conv, linear, BN) is measured once with
``torch.utils.flop_counter.FlopCounterMode``: its forward FLOPs, its input-gradient FLOPs and its
weight-gradient FLOPs, per sample. A training step's FLOPs are then the sum over what that step
actually ran: which blocks were cached (no forward), which ran under ``no_grad`` (forward only),
which residual branches were skipped (nothing), and, for every leaf, whether its input needed a
gradient (something upstream trains) and whether its weight did (``requires_grad``), read live
from the model. ``tests/test_cost.py`` checks the sum against FlopCounterMode on real steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .models import BlockNet, ResidualUnit


@dataclass
class Leaf:
    module: nn.Module
    fwd: int  # forward FLOPs per sample
    bwd_in: int  # input-gradient FLOPs per sample
    bwd_w: int  # weight-gradient FLOPs per sample
    params: list = field(default_factory=list)

    @property
    def trains(self) -> bool:
        return any(p.requires_grad for p in self.params)

    @property
    def weight_trains(self) -> bool:
        w = getattr(self.module, "weight", None)
        return bool(w is not None and w.requires_grad)


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _measure_leaf(m: nn.Module, shape: torch.Size, dtype, device) -> tuple[int, int, int]:
    """(forward, input-gradient, weight-gradient) FLOPs per sample of leaf ``m`` at input ``shape``."""
    saved = {p: p.requires_grad for p in m.parameters(recurse=False)}
    n = shape[0]
    x = torch.zeros(shape, dtype=dtype, device=device)
    was_training = m.training
    m.eval()
    try:
        fwd = _count(lambda: m(x))
        if fwd == 0:  # BN and other leaves FlopCounterMode does not count
            return 0, 0, 0
        for p in saved:  # input gradient only
            p.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        bwd_in = _count(lambda: out.backward(torch.ones_like(out)))
        bwd_w = 0
        w = getattr(m, "weight", None)
        if w is not None:  # weight gradient only
            w.requires_grad_(True)
            out = m(x)
            bwd_w = _count(lambda: out.backward(torch.ones_like(out)))
            w.grad = None
    finally:
        for p, r in saved.items():
            p.requires_grad_(r)
        m.train(was_training)
    return fwd // n, bwd_in // n, bwd_w // n


def _signature(m: nn.Module, shape, dtype) -> tuple:
    """Leaves with equal signatures cost the same: measure each signature once."""
    return (type(m), m.extra_repr(), tuple((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False)),
            tuple(shape), dtype)


class CostTable:
    """Per-leaf FLOP table of a BlockNet, measured once for one input shape (C, H, W)."""

    def __init__(self, model: BlockNet, input_shape: tuple[int, ...], device="cpu"):
        self.model = model
        order: list[nn.Module] = []
        shapes: dict[nn.Module, tuple] = {}

        def hook(m, inp, out):
            if m not in shapes:
                order.append(m)
                shapes[m] = (inp[0].shape, inp[0].dtype)

        leaves = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        hs = [m.register_forward_hook(hook) for m in leaves]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros((2, *input_shape), device=device))
        finally:
            for h in hs:
                h.remove()
            model.train(was_training)
        # the fewest values per channel a BatchNorm normalises per image (H*W of its input; 1 at 1x1)
        self.fewest_norm_values = min((math.prod(shapes[m][0][2:]) for m in order
                                       if isinstance(m, nn.modules.batchnorm._BatchNorm)), default=None)
        flops: dict[tuple, tuple[int, int, int]] = {}
        measured = {}
        for m in order:
            key = _signature(m, *shapes[m])
            if key not in flops:
                flops[key] = _measure_leaf(m, *shapes[m], device)
            measured[m] = Leaf(m, *flops[key], list(m.parameters(recurse=False)))

        def seq(mod: nn.Module) -> list[Leaf]:
            ids = {id(x) for x in mod.modules()}
            return [measured[m] for m in order if id(m) in ids]

        # per block: ("seq", leaves) or ("res", branch_leaves, shortcut_leaves, unit)
        self.blocks: list[tuple] = []
        for b in model.blocks:
            if isinstance(b, ResidualUnit):
                self.blocks.append(("res", seq(b.branch), seq(b.shortcut), b))
            else:
                self.blocks.append(("seq", seq(b)))
        self.head = seq(model.head)

    # ---------------------------------------------------------------- queries (per sample)
    def forward(self, lo: int = 0, hi: int | None = None) -> int:
        """Forward FLOPs of blocks[lo:hi] (every branch run), per sample."""
        total = 0
        for blk in self.blocks[lo:hi]:
            for part in blk[1:3] if blk[0] == "res" else blk[1:2]:
                total += sum(leaf.fwd for leaf in part)
        return total

    def full_step(self) -> int:
        """A baseline training step per sample: every block and branch runs, every weight trains."""
        return self._walk(0, 0, live=False)

    def step(self, start: int = 0, frozen: int = 0) -> int:
        """FLOPs of one training step per sample as the model is set now.

        ``start``: blocks before it come from a cache (no forward at all).
        ``frozen``: blocks before it run forward under ``no_grad`` (no backward).
        Skipped residual branches (``run_branch`` off) cost nothing; a leaf computes its weight
        gradient iff its weight requires grad, its input gradient iff something upstream trains.
        """
        return self._walk(start, frozen, live=True)

    def _walk(self, start: int, frozen: int, live: bool) -> int:
        total, flowing = 0, False  # flowing: the current activation requires grad
        for bi in range(start, len(self.blocks) + 1):
            grad = bi >= frozen
            if bi == len(self.blocks):
                parts = [self.head]
            elif self.blocks[bi][0] == "res":
                _, branch, shortcut, unit = self.blocks[bi]
                parts = [shortcut] + ([branch] if unit.run_branch or not live else [])
            else:
                parts = [self.blocks[bi][1]]
            out_flow = flowing
            for part in parts:
                f = flowing
                for leaf in part:
                    total += leaf.fwd
                    if grad:
                        w = leaf.weight_trains if live else True
                        total += (leaf.bwd_in if f else 0) + (leaf.bwd_w if w else 0)
                        f = f or (leaf.trains if live else bool(leaf.params))
                out_flow = out_flow or f
            flowing = out_flow if grad else False
        return total
