"""scripts/step_anatomy.py (the isolated step timings BENCHMARKS.md cites) runs and counts right."""
import pytest


def test_step_anatomy_variants_count_what_they_skip(load_script, capsys):
    rows = load_script("step_anatomy").main(["--model", "resnet20", "--width", "4", "--batch-size", "8",
                                             "--rounds", "1", "--steps", "1", "--profile", "1"])
    shares = rows.pop("profile")
    assert sum(shares.values()) == pytest.approx(1.0) and shares["conv"] > 0 and shares["batch norm"] > 0
    assert list(rows) == ["plain", "stage 1", "stage 2", "stage 3", "half off", "half fixed", "dd all on",
                          "dd half off", "no weight grads"]
    fs = {n: f for n, (_, f) in rows.items()}
    assert fs["plain"] == 0
    for k in (1, 2, 3):  # each stage holds about a third of the conv FLOPs
        assert 0.28 < fs[f"stage {k}"] < 0.37
    assert -0.06 < fs["dd all on"] < 0  # 7 shortcuts of 1/18 of a branch each: more FLOPs, not fewer
    assert fs["dd half off"] < fs["half off"]
    # 3 of the 7 non-down-sampling branches per step, each as costly as one of stage 1's three
    assert fs["half off"] == pytest.approx(fs["stage 1"], rel=0.01)
    assert fs["half fixed"] == pytest.approx(fs["half off"], rel=0.01)  # the same skipped work, one fixed half
    assert fs["no weight grads"] == pytest.approx(1 / 3, abs=0.02)  # weight gradients: a third of conv FLOPs
    assert "efficiency" in capsys.readouterr().out
