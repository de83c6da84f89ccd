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
    with pytest.raises(UserError) as e:
        data.load("mnist", root=str(tmp_path))  # no files and no network
    assert e.value.field == "data_root"
