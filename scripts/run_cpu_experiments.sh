#!/usr/bin/env bash
# The exact commands that produced results/cpu_features/ (chapter 20) and results/fmnist_lt/ (chapter 21).
#   scripts/run_cpu_experiments.sh [features|heads|fmnist|all]
# Runs on CPU: encoding with 2 threads, the small trainings with 1 thread (on a shared, oversubscribed 2-core machine
# one thread per process was 5-20x faster in wall time for these small matrices than two). Needs cifar10-jpeg.tar.gz under $MARGIN_NOTES_DATA and the Debian package
# dataset-fashion-mnist. The feature cache goes to margin_notes.core.cache_dir('features'), never into the repo;
# the chapters' `#| slow` cells (run here through nbdev_test with smoke mode off) write the result files.
set -euo pipefail
cd "$(dirname "$0")/.."
export MARGIN_NOTES_DATA="${MARGIN_NOTES_DATA:-../shared/data}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${OMP_NUM_THREADS:-2}" MPLBACKEND=Agg
BIN="${BIN:-.venv/bin}"
step="${1:-all}"

if [[ "$step" == features || "$step" == all ]]; then
  # 1. EfficientNet-Lite0 features at 64x64 px: 3,000 test images (300/class) and the 20,431 training
  #    images that the balanced (500/class), IF-100 and IF-10 settings need (cached in chunks).
  "$BIN/python" -c "
from margin_notes.probe import cifar10_probe_features, cifar10_probe_settings
f = cifar10_probe_features(cifar10_probe_settings(), size=64, test_per_class=300)
print(f['info'])"
fi
if [[ "$step" == heads || "$step" == all ]]; then
  # 2. every method x 3 seeds on the cached features (chapter 20's slow cells)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MARGIN_NOTES_SMOKE=0 "$BIN/nbdev_test" --flags slow --path nbs/20_cpu_features.ipynb
fi
if [[ "$step" == fmnist || "$step" == all ]]; then
  # 3. the small CNN on Fashion-MNIST-LT, every method and the MR2 sweep x 3 seeds (chapter 21's slow cells)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MARGIN_NOTES_SMOKE=0 "$BIN/nbdev_test" --flags slow --path nbs/21_fmnist_lt.ipynb
fi
