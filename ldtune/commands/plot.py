"""``ldtune plot DIR -o F.png``: accuracy-vs-time-saved fronts and per-epoch curves (see ldtune.plots)."""
from __future__ import annotations


def configure(p) -> None:
    p.add_argument("dir", metavar="DIR", help="results directory (DIR/<study>/trials.parquet) or one study's directory")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png",
                   help="figure file; Learn&Drop's layer scores go next to it as FILE_layer_scores.png")


def main(a) -> int:
    from ..plots import plot

    for path in plot(a.dir, a.output):
        print(path)
    return 0
