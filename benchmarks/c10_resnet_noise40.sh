#!/usr/bin/env bash
# docs/RESULTS.md §2: CIFAR-10 with PreActResNet-18 (width 32), a seeded 10,000-image training subset with 40 %
# symmetric label noise, no augmentation (the pilot: with crop + flip ERM did not memorise the noise in 30 epochs),
# bf16 autocast on CPU, batch 128, SGD 0.05 momentum 0.9 wd 5e-4, cosine, 30 epochs; the full 10,000-image test set;
# 5 core methods × 3 seeds, every analysis. Resumable: run the same command again (finished runs are reused,
# interrupted ones resume from their last epoch).
#
#   bash benchmarks/c10_resnet_noise40.sh [OUT] [DATA_ROOT] [JOBS]
#
# needs ../shared/data/cifar10-jpeg.tar.gz (unpacked into DATA_ROOT if DATA_ROOT has no train/) and
# pip install 'embedlab[cluster]' (submitit, for --launcher local).
set -euo pipefail
OUT=${1:-runs/c10-resnet-noise40}
DATA=${2:-data/cifar10}
JOBS=${3:-2}
if [ ! -d "$DATA/train" ]; then
  mkdir -p "$DATA" && tar -xzf "$(dirname "$0")/../../shared/data/cifar10-jpeg.tar.gz" -C "$DATA"
fi
export OMP_NUM_THREADS=1
exec embedlab study benchmark --recipe digits --dataset imagefolder --data-root "$DATA" --subset 10000 \
  --data-opt val_fraction=0.02 --data-opt label_noise=0.4 --data-opt augment=none --epochs 30 \
  --set model=preact-resnet18 --set model_options.width=32 --set batch_size=128 --set amp=bf16 \
  --seeds 0,1,2 --methods erm,mixup,manifold_mixup,multimix,dense_multimix --analyses all \
  --no-progress --no-report --launcher local --jobs "$JOBS" --out "$OUT"
