"""scripts/throughput.py (the images/s and data-wait figures BENCHMARKS.md cites) times what it says."""
import pytest
import torch

from ldtune.train import Workload, load_data


def test_one_batch_view_repeats_one_real_batch_for_a_whole_epoch(load_script):
    tp = load_script("throughput")
    data = load_data(Workload(dataset="digits", subset=200))
    one = tp.OneBatch(data, 32, torch.Generator().manual_seed(0))
    batches = list(one.train_batches(32, torch.Generator().manual_seed(1)))
    assert len(batches) == data.steps_per_epoch(32) == 6
    assert all(b is batches[0] for b in batches)
    assert torch.equal(batches[0].x, data.train_x[batches[0].idx])  # a real batch, not a synthetic one
    assert one.num_train == data.num_train and one.test_x is data.test_x  # the rest is the real dataset


def test_throughput_reports_images_per_second_and_data_wait(load_script, capsys):
    out = load_script("throughput").main(["--model", "resnet20", "--width", "4", "--dataset", "digits",
                                          "--image-size", "8", "--batch-size", "32", "--subset", "256",
                                          "--epochs", "2", "--rounds", "1", "--device", "cpu"])
    assert out["images_per_epoch"] == 256
    assert out["images_per_s"] == pytest.approx(256 / out["epoch_time_s"])
    assert out["data_wait_share"] == pytest.approx(1 - out["one_batch_epoch_time_s"] / out["epoch_time_s"])
    assert out["draw_share"] == pytest.approx(out["draw_time_s"] / out["epoch_time_s"])
    assert "images/s" in capsys.readouterr().out
