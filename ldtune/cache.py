"""Feature cache: the output of a frozen prefix of blocks, computed once per training sample.

The loop builds it when a strategy's plan first serves blocks from the cache, and advances it
through newly frozen blocks (never recomputing from the images). Batches are then read from it
by training-set index.

The maps are stored in the dtype the prefix produced them in: float32, or bf16 under the CUDA
loop's autocast. So the cache holds exactly what the frozen prefix would hand the next block (an
upcast copy would change what an identity shortcut adds downstream) in half the bytes there.

Tiers, chosen at every build/advance from the size of the maps (all training samples):

* ``device``: one tensor on the training device, if it fits ``device_budget`` bytes;
* ``host``: pinned host memory (CUDA devices only), if it fits ``host_budget`` bytes; batches are
  gathered into pinned buffers and copied to the device asynchronously;
* ``disk``: a raw ``np.memmap`` file in the run's ``workdir`` (or a temporary directory), removed
  by ``close()``; bf16 rows are kept as their raw 16-bit words. Raw arrays only: nothing is
  pickled or unpickled.

Default budgets: half the free device memory (CUDA) or half the available RAM (CPU, where device
memory is host memory and there is no separate pinned tier) for ``device``; a quarter of the
available RAM for ``host``. The environment variables ``LDTUNE_CACHE_DEVICE_BYTES`` and
``LDTUNE_CACHE_HOST_BYTES`` (bytes) override the defaults; constructor arguments override both.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .data import Batch, epoch_slices
from .errors import env_number

TIERS = ("device", "host", "disk")
PREFETCH = 3  # batches gathered ahead off the device tier, one worker thread each


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def _env_bytes(name: str) -> int | None:
    v = env_number(name, float)  # bytes; "2e9" allowed
    return None if v is None else int(v)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy array sharing its memory; bf16 (which numpy lacks) as raw uint16 words."""
    return (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy()


class _Store:
    """Rows of maps of one dtype in one tier; reads return tensors on ``device``."""

    def __init__(self, tier: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 path: Path | None = None, memory_format: torch.memory_format = torch.contiguous_format):
        self.tier, self.shape, self.dtype, self.device, self.path = tier, shape, dtype, device, path
        self.t: torch.Tensor | None = None
        self.m: np.memmap | None = None
        if tier == "device":
            self.t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        elif tier == "host":
            self.t = torch.empty(shape, dtype=dtype, pin_memory=True)
        else:
            self.m = np.memmap(path, dtype=_numpy(torch.empty(0, dtype=dtype)).dtype, mode="w+", shape=shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        """Rows read from the memmap as a tensor of the store's dtype (no copy)."""
        t = torch.from_numpy(a)
        return t.view(self.dtype) if t.dtype != self.dtype else t

    def write(self, lo: int, x: torch.Tensor) -> None:
        """Rows lo .. lo+len(x), bit for bit."""
        hi = lo + x.shape[0]
        if self.m is not None:
            self.m[lo:hi] = _numpy(x.detach().cpu())
        else:
            self.t[lo:hi].copy_(x.detach())

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        if self.m is not None:
            return self._tensor(np.ascontiguousarray(self.m[lo:hi])).to(self.device)
        return self.t[lo:hi].to(self.device, non_blocking=True)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (a CPU tensor for host/disk, on the device for ``device``)."""
        if self.tier == "device":
            return self.t[idx]
        if self.tier == "disk" and self.device.type != "cuda":
            return self._tensor(self.m[idx.numpy()])
        # into pinned memory, so that the copy to the device is asynchronous
        buf = torch.empty((idx.numel(), *self.shape[1:]), dtype=self.dtype, pin_memory=True)
        if self.tier == "host":
            torch.index_select(self.t, 0, idx, out=buf)
        else:
            np.take(self.m, idx.numpy(), axis=0, out=_numpy(buf))
        return buf.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.t = None
        self.m = None  # the mapping goes when its last view does; the file goes now
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


class FeatureCache:
    def __init__(self, device: torch.device, workdir: str | Path | None = None, device_budget: int | None = None,
                 host_budget: int | None = None):
        self.device = torch.device(device)
        self.workdir = Path(workdir) if workdir is not None else None
        self.device_budget = device_budget  # bytes for the device tier; None: env or default
        self.host_budget = host_budget  # bytes for pinned host memory (CUDA only); None: env or default
        self.depth = 0  # blocks the cached features have gone through
        self.labels: torch.Tensor | None = None  # on the device, by training-set index
        self.store: _Store | None = None
        self._files = 0
        self._tmpdir: str | None = None

    # ---------------------------------------------------------------- state
    @property
    def tier(self) -> str:
        return "none" if self.store is None else self.store.tier

    @property
    def nbytes(self) -> int:
        return 0 if self.store is None else self.store.nbytes

    @property
    def num_samples(self) -> int:
        return 0 if self.store is None else self.store.shape[0]

    @property
    def features(self) -> torch.Tensor:
        """The cached maps as one tensor, without copying: on the device, in pinned host memory, or
        (disk tier) a CPU view of the memory-mapped file."""
        return self.store.t if self.store.m is None else self.store._tensor(self.store.m)

    def choose_tier(self, nbytes: int) -> str:
        cuda = self.device.type == "cuda"
        dev_budget = self.device_budget
        if dev_budget is None:
            dev_budget = _env_bytes("LDTUNE_CACHE_DEVICE_BYTES")
        if dev_budget is None:
            dev_budget = (torch.cuda.mem_get_info(self.device)[0] if cuda else available_ram()) // 2
        if nbytes <= dev_budget:
            return "device"
        if cuda:
            host_budget = self.host_budget
            if host_budget is None:
                host_budget = _env_bytes("LDTUNE_CACHE_HOST_BYTES")
            if host_budget is None:
                host_budget = available_ram() // 4
            if nbytes <= host_budget:
                return "host"
        return "disk"

    def _new_store(self, like: torch.Tensor, n: int) -> _Store:
        """A store for ``n`` rows shaped and typed like ``like``'s."""
        shape, dtype = (n, *like.shape[1:]), like.dtype
        tier = self.choose_tier(int(np.prod(shape)) * dtype.itemsize)
        path = None
        if tier == "disk":
            if self.workdir is None:
                self._tmpdir = self._tmpdir or tempfile.mkdtemp(prefix="ldtune-cache-")
                self.workdir = Path(self._tmpdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._files += 1
            suffix = str(dtype).removeprefix("torch.")
            path = self.workdir / f"feature-cache-{os.getpid()}-{id(self)}-{self._files}.{suffix}"
        # the device tier keeps the maps' layout (channels-last in the loop): a batch gathered from it
        # is what the prefix would hand the next block, with no transposing copy each step
        cl = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
        return _Store(tier, shape, dtype, self.device, path, torch.channels_last if cl else torch.contiguous_format)

    # ---------------------------------------------------------------- filling
    @torch.no_grad()
    def build(self, blocks, data, depth: int, batch_size: int = 256, autocast=None) -> None:
        """Run blocks[:depth] once over the training set, without augmentation, in the blocks'
        current mode (the loop freezes them, i.e. puts them in eval mode, first). ``batch_size``:
        images per forward (256: on CPU, 512 was a third slower for narrow ResNet-20)."""
        self.close()
        autocast = autocast or nullcontext
        labels = torch.empty(data.num_train, dtype=torch.long, device=self.device)
        lo = 0
        for b in data.train_plain(batch_size):
            x = b.x
            with autocast():
                for blk in blocks[:depth]:
                    x = blk(x)
            if self.store is None:
                self.store = self._new_store(x, data.num_train)
            self.store.write(lo, x)
            labels[lo:lo + x.shape[0]] = b.y.to(self.device)
            lo += x.shape[0]
        self.labels, self.depth = labels, depth

    @torch.no_grad()
    def advance(self, blocks, depth: int, batch_size: int = 256, autocast=None) -> None:
        """Push the cached features through blocks[self.depth:depth] into a new store (whose tier
        is chosen again for the new size); the old one is freed."""
        autocast = autocast or nullcontext
        old, new = self.store, None
        n = old.shape[0]
        for lo in range(0, n, batch_size):
            x = old.rows(lo, min(lo + batch_size, n))
            with autocast():
                for blk in blocks[self.depth:depth]:
                    x = blk(x)
            if new is None:
                new = self._new_store(x, n)
            new.write(lo, x)
        old.close()
        self.store, self.depth = new, depth

    # ---------------------------------------------------------------- reading
    def batches(self, batch_size: int, gen: torch.Generator, images: int | None = None) -> Iterator[Batch]:
        """One epoch of shuffled batches, sliced as ``data.epoch_slices`` says. On the disk tier a
        batch's rows are read in ascending order (the same set of samples, faster reads).

        Off the device tier, worker threads gather the next ``PREFETCH`` batches (index_select
        into pinned memory and its copy to the device, or the memmap read) while the caller
        trains on this one: the gathers release the GIL, so they overlap the step and each other
        instead of stalling it. The batches and their order are the same either way."""
        n = self.num_samples
        perm = torch.randperm(n, generator=gen, device=gen.device)
        if self.tier == "device":
            perm = perm.to(self.device)
            for s, e in epoch_slices(n, batch_size, images):
                idx = perm[s:e]
                yield Batch(self.store.gather(idx), self.labels[idx], idx)
            return
        idxs = [perm[s:e] for s, e in epoch_slices(n, batch_size, images)]
        if self.tier == "disk":
            idxs = [idx.sort().values for idx in idxs]
        with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="ldtune-cache") as pool:
            pending = deque(pool.submit(self.store.gather, idx) for idx in idxs[:PREFETCH])
            for i, idx in enumerate(idxs):
                x = pending.popleft().result()
                if i + PREFETCH < len(idxs):
                    pending.append(pool.submit(self.store.gather, idxs[i + PREFETCH]))
                dev_idx = idx.to(self.device, non_blocking=True)
                yield Batch(x, self.labels[dev_idx], dev_idx)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = self.labels = None
        self.depth = 0
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.workdir = None

