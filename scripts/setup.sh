#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: makes .venv/ in the repo root and installs everything ldtune needs.
# Idempotent: a second run installs nothing unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Fashion-MNIST from Debian (the four IDX files torchvision reads) when missing and we may install it.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  echo "ldtune setup: installing dataset-fashion-mnist (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.ldtune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "ldtune setup: installing Python packages into .venv (first run: a minute or two)" >&2
  # torch/torchvision pinned to the builds this project is tested with (pip finds them on local disk here)
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
  .venv/bin/python -m ldtune.batchnorm >&2  # compile the fused CPU BatchNorm once (about 30 s)
  touch "$stamp"
fi
