#!/usr/bin/env bash
# The exact commands that produced results/cpu_features/ (chapter 26), results/fmnist_lt/ (chapter 27),
# results/premise/ (chapter 29) and results/defaults/ (chapter 29).
#   scripts/run_cpu_experiments.sh [features|heads|premise|defaults|fmnist|dbm-digits|all]
# Runs on CPU: encoding with 2 threads, the small trainings with 1 thread each (on a shared, oversubscribed 2-core
# machine one thread per process was 5-20x faster in wall time for these small matrices than two). Needs
# cifar10-jpeg.tar.gz and weights/resnet32-d509ac18.th under $MARGIN_NOTES_DATA and the Debian package
# dataset-fashion-mnist. The feature cache goes to margin_notes.core.cache_dir('features'), never into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
export MARGIN_NOTES_DATA="${MARGIN_NOTES_DATA:-../shared/data}" MPLBACKEND=Agg PYTHONUNBUFFERED=1
BIN="${BIN:-.venv/bin}"
step="${1:-all}"
one() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice "$BIN/python" "$@"; }

if [[ "$step" == features || "$step" == all ]]; then
  # 1. EfficientNet-Lite0 features at 64x64 px: 4,000 test images (400/class: 0-299 scored, 300-399 validation)
  #    and the 20,431 training images of the balanced (500/class), IF-100 and IF-10 settings (cached in chunks keyed
  #    by their images, so the IF-10 chunk of 6,416 images was added later without re-encoding the others)
  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 nice "$BIN/python" scripts/encode_cifar_probe.py
fi
if [[ "$step" == heads || "$step" == all ]]; then
  # 2. chapter 26: every method x 5 seeds on the cached features, validation protocol (the committed IF-100 file was
  #    run as three processes, --settings lt100 --only ... --tag=-A/-B/-C, then --merge; one process gives the same runs;
  #    the rows 'dbm s=8' (both settings) and 'focal' (IF 100) were added the same way with --only ... --tag=-D/-F)
  one scripts/referee_experiments.py probe
  one scripts/referee_experiments.py probe --settings lt10
fi
if [[ "$step" == premise || "$step" == all ]]; then
  # 3. chapter 29: per-class statistics of ERM models vs their per-class error (two processes)
  one scripts/referee_experiments.py premise --parts resnet,digits &
  one scripts/referee_experiments.py premise --parts effnet,fmnist
  wait
fi
if [[ "$step" == defaults || "$step" == all ]]; then
  # 4. chapter 29: a new user's CNN on Fashion-MNIST-LT IF 50, 3 epochs, 3 seeds, every candidate default
  one scripts/referee_experiments.py defaults
fi
if [[ "$step" == fmnist ]]; then
  # 5. chapter 27's reduced rerun under the validation protocol (5 seeds) -> results/fmnist_lt/validated.json,
  #    run as three processes and merged; not part of 'all'. grid.json is the earlier 3-seed run of the chapter's #| slow cell
  one scripts/referee_experiments.py fmnist --only 'erm|la-posthoc|marc|bs' --tag=-A &
  one scripts/referee_experiments.py fmnist --only 'mr2 λ=0.1 (paper)|mr2 λ=0.1 released' --tag=-B &
  one scripts/referee_experiments.py fmnist --only 'mr2 λ=0.1 normalised|lwr' --tag=-C
  wait
  one scripts/referee_experiments.py fmnist --merge 'results/fmnist_lt/validated-A.json|results/fmnist_lt/validated-B.json|results/fmnist_lt/validated-C.json'
  # later additions (same data, protocol and seeds), merged into the same file
  one scripts/referee_experiments.py fmnist --only 'ldam-drw|dbm|dbm s=8' --tag=-D &
  one scripts/referee_experiments.py fmnist --only 'focal|mr2 λ=1e-2' --tag=-E
  wait
  one scripts/referee_experiments.py fmnist --merge 'results/fmnist_lt/validated.json|results/fmnist_lt/validated-D.json|results/fmnist_lt/validated-E.json'
fi
if [[ "$step" == dbm-digits || "$step" == all ]]; then
  # 6. chapter 29: DBM-BS at s = 8, 16, 32 against ERM and BS on the engine's digits-lt recipe (5 seeds)
  one scripts/referee_experiments.py dbm-digits
fi
