"""Feature cache: the output of a frozen prefix of blocks, computed once per training sample.

The loop builds it when a strategy's plan first serves blocks from the cache, and advances it
through newly frozen blocks (never recomputing from the images). Batches are then read from it
by training-set index.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .data import Batch


class FeatureCache:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.depth = 0  # blocks the cached features have gone through
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.tier = "none"

    @property
    def nbytes(self) -> int:
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    @torch.no_grad()
    def build(self, blocks, data, depth: int, batch_size: int = 512, autocast=None) -> None:
        """Run blocks[:depth] (eval mode) once over the training set, without augmentation."""
        feats, labels = [], []
        for b in data.train_plain(batch_size):
            x = b.x
            with autocast():
                for blk in blocks[:depth]:
                    x = blk(x)
            feats.append(x.float())
            labels.append(b.y)
        self.features, self.labels = torch.cat(feats), torch.cat(labels)
        self.depth, self.tier = depth, "device"

    @torch.no_grad()
    def advance(self, blocks, depth: int, batch_size: int = 512, autocast=None) -> None:
        """Push the cached features through blocks[self.depth:depth]."""
        out = []
        for s in range(0, self.features.shape[0], batch_size):
            x = self.features[s:s + batch_size]
            with autocast():
                for blk in blocks[self.depth:depth]:
                    x = blk(x)
            out.append(x.float())
        self.features, self.depth = torch.cat(out), depth

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        n = self.features.shape[0]
        perm = torch.randperm(n, generator=gen, device=gen.device).to(self.device)
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s:s + batch_size]
            yield Batch(self.features[idx], self.labels[idx], idx)

    def close(self) -> None:
        self.features = self.labels = None
