"""scripts/conv_rates.py (the oneDNN convolution times BENCHMARKS.md cites) reads oneDNN's own log."""


def test_conv_rates_reads_every_pass_of_every_stage_shape(load_script, capsys):
    rows = load_script("conv_rates").main(["--width", "4", "--batch-size", "4", "--calls", "3"])
    shapes = ["ic4oc4 ih28", "ic8oc8 ih14", "ic16oc16 ih7"]
    passes = ["forward", "input gradient", "weight gradient"]
    assert sorted(rows) == sorted((s, p) for s in shapes for p in passes)
    for ms, fmt in rows.values():
        flags, layout = fmt.split()
        assert ms > 0 and flags.startswith("a") and layout  # a format oneDNN named, padded or not
    out = capsys.readouterr().out
    assert "ms per call" in out and all(s in out for s in shapes)
    assert "oneDNN's ISA ?" not in out  # the ISA line of oneDNN's log was read
