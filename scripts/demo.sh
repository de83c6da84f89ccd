#!/usr/bin/env bash
# The README's demo: sets up .venv (scripts/setup.sh), runs studies/quickstart.yaml on a local,
# embedded Ray instance, then prints its Pareto table and writes its plot.
# Each run writes to a fresh results/demo-<time>/ so earlier results are never touched.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out=results/demo-$(date +%Y%m%d-%H%M%S)
status=0
.venv/bin/ldtune run studies/quickstart.yaml --output "$out" || status=$?
[ "$status" -le 1 ] || exit "$status"  # 1: some trial failed; the others' fronts still print
echo
.venv/bin/ldtune pareto "$out" --by strategy
echo
.venv/bin/ldtune plot "$out" -o "$out/quickstart.png"
exit "$status"
