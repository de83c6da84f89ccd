#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, on a machine with a CUDA GPU and PyTorch. By default the
# strategy tables and throughput; STEPS="anatomy tiers epochs bench_dd56 tests" runs the rest.
#
#   bash scripts/gpu_figures.sh [OUTDIR]        (default: ./gpu-figures)
#
# Needs torch, torchvision, numpy and pyyaml only (`ldtune bench` and `ldtune train` import neither Ray
# nor Optuna). Fashion-MNIST comes from /usr/share/datasets/fashion-mnist; on a machine that cannot
# download, put the four .gz files in data/fashion-mnist and they are copied there first.
# Each step runs under its own time limit and writes OUTDIR/<step>.log; STEPS=... picks steps,
# DEVICE=cpu SUBSET=512 makes a dry run on a CPU (minutes: ResNet-18 and VGG are slow there).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-figures}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
sys_dir=/usr/share/datasets/fashion-mnist
if [ ! -d $sys_dir ] && [ -d data/fashion-mnist ]; then
  mkdir -p "$(dirname $sys_dir)" && cp -r data/fashion-mnist $sys_dir
fi

# the strategies and settings of the CPU table, so the two tables compare
all=learn_drop,freezing,freezeout,layerdropback,depth_dropout,stochastic_depth
sets="--set learn_drop.warmup_epochs=1 --set freezing.warmup_epochs=1 --set layerdropback.s=1
      --set layerdropback.p=0.5 --set depth_dropout.p=0.5 --set stochastic_depth.p=0.5"
w32="--device ${DEVICE:-cuda} --dataset fashion_mnist --image-size 32 --batch-size 256"
bench="--epochs 4 --repeats ${REPEATS:-2} --subset ${SUBSET:-20000}"  # subset: training images

step() {  # step NAME SECONDS COMMAND...: run it under a limit, log to $out/NAME.log, show its end
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $?, $((SECONDS - t0)) s"
  grep -v '^{' "$out/$name.log" | tail -n 12
}

for s in ${STEPS:-env smoke bench_resnet18 tp_resnet18 bench_vgg tp_vgg}; do
  case $s in
    env) step env 60 bash -c "nvidia-smi || true; $py -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)'" ;;
    # every strategy through the device's code path once, small and quick, before the long steps
    smoke) step smoke 120 $py -m ldtune bench --model resnet20 --width 8 --subset 2048 --epochs 2 --repeats 1 \
             --device ${DEVICE:-cuda} --strategies $all $sets ;;
    tp_resnet18) step tp_resnet18 150 $py scripts/throughput.py --model resnet18 $w32 ${SUBSET:+--subset $SUBSET} \
             --rounds ${TP_ROUNDS:-2} --json ;;
    tp_vgg) step tp_vgg 120 $py scripts/throughput.py --model vgg11_bn $w32 ${SUBSET:+--subset $SUBSET} \
             --rounds ${TP_ROUNDS:-2} --json ;;
    # isolated step timings: which skips turn FLOPs into time on this device (see step_anatomy.py)
    anatomy) step anatomy 150 bash -c "$py scripts/step_anatomy.py --model resnet18 --image-size 32 --batch-size 256 \
             --device ${DEVICE:-cuda} && $py scripts/step_anatomy.py --model resnet20 --width 8 --batch-size 256 \
             --device ${DEVICE:-cuda} && $py scripts/step_anatomy.py --model resnet56 --width 8 --batch-size 256 \
             --device ${DEVICE:-cuda}" ;;
    # per-epoch times of the freezing strategies beside the baseline's (scoring overhead, cache build)
    epochs) step epochs 120 bash -c "for s in baseline learn_drop freezing; do echo \$s; $py -m ldtune train \
             --model resnet18 $w32 --subset ${SUBSET:-20000} --epochs 4 --strategy \$s \
             \$([ \$s = baseline ] || echo --set warmup_epochs=1); done" ;;
    bench_resnet18) step bench_resnet18 ${BENCH_LIMIT:-240} $py -m ldtune bench --model resnet18 $w32 $bench \
             --strategies $all $sets --json ;;
    bench_vgg) step bench_vgg 150 $py -m ldtune bench --model vgg11_bn $w32 $bench --strategies learn_drop,freezing \
             --set learn_drop.warmup_epochs=1 --set freezing.warmup_epochs=1 --json ;;
    bench_dd56) step bench_dd56 150 $py -m ldtune bench --model resnet56 --width 8 $w32 $bench \
             --strategies depth_dropout --set depth_dropout.p=0.5 --json ;;
    # Learn&Drop's feature cache forced into each tier through the budgets, one process per tier
    tiers) step tiers 330 bash -c "for t in device host disk; do echo tier \$t; \
             LDTUNE_CACHE_DEVICE_BYTES=\$([ \$t = device ] || echo 1) LDTUNE_CACHE_HOST_BYTES=\$([ \$t = disk ] && echo 1) \
             $py -m ldtune bench --model resnet18 $w32 $bench --strategies learn_drop --set learn_drop.warmup_epochs=1; \
             done" ;;
    # the conformance suite and the cache tests on the device (pinned tier, bf16 caches); needs pytest
    tests) step tests 300 env LDTUNE_TEST_DEVICE=${DEVICE:-cuda} $py -m pytest -q tests/test_conformance.py \
             tests/test_cache.py ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
