"""oneDNN's own time per pass of a 3x3 convolution at a ResNet-20's three stage shapes (the same
FLOPs at each), and the weight format it picked: a ``p`` in the format's flags means it padded the
channels to its block (BENCHMARKS.md, "A second CPU").

    .venv/bin/python scripts/conv_rates.py            # width 8: 8ch 28x28, 16ch 14x14, 32ch 7x7
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python scripts/conv_rates.py   # oneDNN's AVX2 kernels (block 8)

It runs the convolutions in a child process with ``ONEDNN_VERBOSE=1`` (one thread, channels last)
and prints the median of each pass's execution times after the warm-up calls.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys

PASSES = {"forward_training": "forward", "backward_data": "input gradient", "backward_weights": "weight gradient"}


def child(width: int, batch: int, calls: int) -> None:
    import torch
    torch.set_num_threads(1)
    for k in range(3):
        c, h = width * 2 ** k, 28 // 2 ** k
        x = torch.randn(batch, c, h, h).to(memory_format=torch.channels_last).requires_grad_()
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        for _ in range(calls):
            y = conv(x)
            y.backward(torch.ones_like(y))


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[float, str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=8, help="stage 1 channels")
    ap.add_argument("--batch-size", type=int, default=64, help="images per call")
    ap.add_argument("--calls", type=int, default=12, help="forward + backward calls per shape (the first 2 are warm-up)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.calls < 3:
        ap.error("--calls must be at least 3 (2 warm-up calls, then the timed ones)")
    if a.child:
        child(a.width, a.batch_size, a.calls)
        return {}
    out = subprocess.run([sys.executable, __file__, "--child", "--width", str(a.width), "--batch-size",
                          str(a.batch_size), "--calls", str(a.calls)], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True, check=True).stdout
    calls = collections.defaultdict(list)  # (shape, pass, weight flags and format) -> ms per call
    isa = "?"
    for line in out.splitlines():
        f = line.split(",")
        if f[2:4] == ["info", "cpu"] and f[4].startswith("isa:"):  # onednn_verbose,v1,info,cpu,isa:...
            isa = f[4].removeprefix("isa:")
        if len(f) < 10 or f[2:4] != ["primitive", "exec"] or f[5] != "convolution":
            continue
        desc = next(x for x in f if x.startswith("mb")).split("_")  # mb64, ic8oc8, ih28oh28kh3sh1..., ...
        shape = f"{desc[1]} {desc[2].split('oh')[0]}"  # e.g. "ic8oc8 ih28"
        _, _, flags, _, layout, *_ = next(x for x in f[8].split() if x.startswith("wei:")).split(":")
        calls[shape, PASSES.get(f[7], f[7]), f"{flags} {layout}"].append(float(f[-1]))
    print(f"3x3 convolutions, batch {a.batch_size}, one thread, channels last, oneDNN's ISA {isa}; "
          "its ms per call (median)")
    print(f"{'shape':<24}{'pass':<18}{'ms':>8}  weight flags/format")
    rows = {(shape, pass_): (statistics.median(ts[2:]), fmt) for (shape, pass_, fmt), ts in calls.items()}
    for (shape, pass_), (ms, fmt) in rows.items():
        print(f"{shape:<24}{pass_:<18}{ms:8.3f}  {fmt}")
    return rows


if __name__ == "__main__":
    main()
