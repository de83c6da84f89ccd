import math

import pytest
import torch

from ldtune import data
from ldtune.errors import UserError


def test_fashion_mnist_subset_is_balanced_seeded_and_normalized(fmnist_small):
    d = fmnist_small
    assert d.train_x.shape == (512, 1, 28, 28) and d.test_x.shape == (2000, 1, 28, 28)
    assert torch.bincount(d.test_y, minlength=10).tolist() == [200] * 10
    counts = torch.bincount(d.train_y, minlength=10)
    assert counts.min() >= 51 and counts.max() <= 52
    threads = torch.get_num_threads()  # reload under another thread count: the bits must not depend on it
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        again = data.load("fashion_mnist", subset=512, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again.train_y, d.train_y) and torch.equal(again.train_x, d.train_x)
    other = data.load("fashion_mnist", subset=512, seed=1)
    assert not torch.equal(other.train_x, d.train_x)
    assert abs(float(d.train_x.mean())) < 0.05 and abs(float(d.train_x.std()) - 1) < 0.05


def test_crop_is_a_shift_and_flip_mirrors(fmnist_small):
    d = fmnist_small
    x = d.train_x[:8]
    g = torch.Generator().manual_seed(3)
    d2 = data.TensorData("t", x, d.train_y[:8], x, d.train_y[:8], 10, crop_pad=2, flip=False)
    out = d2.augment(x, g)
    assert out.shape == x.shape
    # each crop equals the zero-padded image at some offset in [0, 4]^2
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(8):
        fits = [(a, b) for a in range(5) for b in range(5) if torch.equal(out[i], xp[i, :, a:a + 28, b:b + 28])]
        assert len(fits) == 1, (i, fits)
        offsets += fits
    assert len(set(offsets)) > 1 and offsets != [(2, 2)] * 8  # the offsets are drawn, not fixed or unshifted
    d3 = data.TensorData("t", x, d.train_y[:8], x, d.train_y[:8], 10, crop_pad=0, flip=True)
    out = d3.augment(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2)) for i in range(8))
    assert any(not torch.equal(out[i], x[i]) for i in range(8))


def test_batches_cover_the_epoch_once(fmnist_small):
    seen = torch.cat([b.idx for b in fmnist_small.train_batches(100, torch.Generator().manual_seed(0))])
    assert len(seen) == 500 and len(set(seen.tolist())) == 500  # the last partial batch is dropped
    # a given number of images (the baseline epoch's, at another batch size): the last batch is short
    batches = list(fmnist_small.train_batches(128, torch.Generator().manual_seed(0), images=500))
    assert [len(b.idx) for b in batches] == [128, 128, 128, 116]
    seen = torch.cat([b.idx for b in batches])
    assert len(set(seen.tolist())) == 500 and all(len(b.x) == len(b.y) == len(b.idx) for b in batches)
    assert data.epoch_slices(10, 4) == [(0, 4), (4, 8)] and data.epoch_slices(10, 4, 10)[-1] == (8, 10)
    assert data.epoch_slices(9, 4, 9) == [(0, 4), (4, 9)]  # never a batch of one (BatchNorm at 1x1 maps)
    with pytest.raises(ValueError):
        data.epoch_slices(10, 4, 11)


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder tree: 2 classes, 10 training and 2 validation images each, 12x12 random RGB."""
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 10), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                rgb = torch.randint(0, 256, (12, 12, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(rgb).save(tmp_path / split / cls / f"{i}.png")
    return tmp_path


# 4 DataLoader workers on this 2-core machine, deliberately: the worker count is part of what a seed reproduces
@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_image_folder_streams_batches_like_tensor_data(image_folder):
    d = data.load(f"imagefolder:{image_folder}", image_size=8)
    assert (d.num_train, d.num_classes, d.in_channels, d.image_size) == (20, 2, 3, 8)
    batches = list(d.train_batches(6, torch.Generator().manual_seed(1)))
    assert [len(b.idx) for b in batches] == [6, 6, 6]  # the last partial batch is dropped
    batches = list(d.train_batches(8, torch.Generator().manual_seed(1), images=18))
    assert [(len(b.x), len(b.y), len(b.idx)) for b in batches] == [(8, 8, 8), (8, 8, 8), (2, 2, 2)]
    assert len(set(torch.cat([b.idx for b in batches]).tolist())) == 18 and batches[0].x.shape[1:] == (3, 8, 8)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_a_streamed_set_caches_its_images_without_augmentation(image_folder):
    """What a feature cache is built from (``train_plain``) is each training image under the test
    transform, every time: not one random crop or flip frozen into the cache for the whole run."""
    from PIL import Image
    d = data.load(f"imagefolder:{image_folder}", subset=12, image_size=8)
    first, again = list(d.train_plain(5)), list(d.train_plain(5))
    x, idx = torch.cat([b.x for b in first]), torch.cat([b.idx for b in first])
    assert idx.tolist() == list(range(12)) and torch.equal(x, torch.cat([b.x for b in again]))
    for i in (0, 7):
        path = d.train_set.dataset.samples[d.train_set.indices[i]][0]
        assert torch.equal(x[i], d.test_set.transform(Image.open(path).convert("RGB")))
    # and a run whose frozen prefix is served from that cache trains on it
    from ldtune.strategies import create
    from ldtune.train import Workload, fit
    w = Workload(model="resnet20", width=4, dataset=f"imagefolder:{image_folder}", subset=12, image_size=8,
                 epochs=3, batch_size=4)
    res = fit(w, create("freezeout", t0=0.3, schedule="linear", scale_lr=False, cache=True), data=d)
    assert res.status == "ok" and res.epochs[-1]["active_blocks"] < res.epochs[0]["active_blocks"]
    assert all(math.isfinite(e["train_loss"]) for e in res.epochs) and res.flops_saved > 0


def test_streamed_sets_take_a_balanced_subset_within_their_size(tmp_path):
    from PIL import Image
    root = tmp_path / "imagenette2-160"  # torchvision's Imagenette layout (two of its classes), no download
    for split, n in (("train", 3), ("val", 1)):
        for wnid in ("n01440764", "n02979186"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / split / wnid / f"{i}.JPEG")
    d = data.load("imagenette", root=str(tmp_path), subset=4, image_size=16)
    assert d.num_train == 4 and sorted(d.train_set.dataset._samples[i][1] for i in d.train_set.indices) == [0, 0, 1, 1]
    with pytest.raises(UserError) as e:
        data.load("imagenette", root=str(tmp_path), subset=7)
    assert (e.value.field, e.value.message) == ("subset", "must be in 1..6 for imagenette, got 7")


def test_digits_and_mnist5k(digits):
    assert digits.train_x.shape[1:] == (1, 8, 8) and digits.num_classes == 10
    assert digits.train_x.shape[0] + digits.test_x.shape[0] == 1797
    m = data.load("mnist5k")
    assert m.train_x.shape == (4000, 1, 28, 28) and m.test_x.shape == (1000, 1, 28, 28)
    assert set(torch.unique(m.train_y).tolist()) == set(range(10))


def test_pad_to_32():
    d8, d = data.load("digits"), data.load("digits", image_size=32)
    assert d.train_x.shape[-2:] == (32, 32) and d.test_x.shape[-2:] == (32, 32)
    assert torch.allclose(d.train_x[..., 12:20, 12:20], d8.train_x, atol=1e-6)  # the image, centred
    border = torch.ones(32, 32, dtype=torch.bool)
    border[12:20, 12:20] = False
    assert torch.equal(d.train_x[..., border], d.pad_value.view(1, -1, 1).expand(len(d8.train_x), -1, int(border.sum())))


def test_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(UserError) as e:
        data.load("svhn")
    assert e.value.field == "dataset"
    with pytest.raises(UserError) as e:
        data.load("digits", subset=10**6)
    assert e.value.field == "subset"
    assert data.trim_test_set(data.load("digits"), 2000).test_x.shape[0] == 359  # more than there are: all
    with pytest.raises(UserError) as e:
        data.load("mnist", root=str(tmp_path))  # no files and no network
    assert e.value.field == "data_root"


def test_a_failed_download_leaves_no_new_empty_directories(tmp_path):
    from ldtune.data import _no_new_empty_dirs
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "f").write_text("x")
    root = tmp_path / "cache" / "ldtune" / "data"

    def download():  # what torchvision does offline: makes its folders, then fails
        (root / "cifar-10" / "raw").mkdir(parents=True)
        (tmp_path / "kept" / "sub").mkdir()
        raise OSError("no network")

    with pytest.raises(OSError), _no_new_empty_dirs(str(root)):
        download()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f", "kept", "sub"]  # outside root: not its to remove
    root.mkdir(parents=True)
    (root / "partial.tar.gz").write_text("x")
    (root / "mine").mkdir()  # empty, but there before
    with pytest.raises(OSError), _no_new_empty_dirs(str(root)):
        (root / "MNIST" / "raw").mkdir(parents=True)
        raise OSError("no network")
    assert sorted(p.name for p in root.iterdir()) == ["mine", "partial.tar.gz"]  # a file stays, and so its folder


def test_an_error_message_is_one_line_whatever_the_library_said():
    e = UserError("data_root", "cannot load mnist: Error downloading x:\nTried a, got:\n  <urlopen error>\n")
    assert e.message == "cannot load mnist: Error downloading x: Tried a, got: <urlopen error>"
    assert str(e) == f"data_root: {e.message}"


def test_data_that_cannot_load_names_what_set_its_directory(tmp_path, monkeypatch):
    """The directory came from --data-root / workload.data_root, or from LDTUNE_DATA: the error says which."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LDTUNE_DATA", str(empty))
    with pytest.raises(UserError) as e:
        data.load("cifar10", download=False)
    assert e.value.field == "LDTUNE_DATA" and str(empty) in e.value.message
    with pytest.raises(UserError) as e:
        data.load("cifar10", root=str(empty), download=False)
    assert e.value.field == "data_root"
    monkeypatch.delenv("LDTUNE_DATA")
    with pytest.raises(UserError) as e:
        data.load(f"imagefolder:{empty}")
    assert e.value.field == "dataset"
