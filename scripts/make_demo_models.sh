#!/usr/bin/env bash
# The demo models committed in models/demo/: every file is made by one `kavach train` command below
# (also recorded in each checkpoint's meta and in manifest.json). CPU is enough: about 25 minutes on 2 cores.
# Usage: scripts/make_demo_models.sh [digits|fashion|all]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=models/demo
which=${1:-all}
mkdir -p "$OUT"
if [ "$which" = digits ] || [ "$which" = all ]; then
    for s in 0.25 0.5; do
        kavach train classifier --dataset digits --arch digits_cnn --method gaussian --sigma $s --epochs 60 \
            --batch-size 64 --seed 0 --out $OUT/digits_cnn_gaussian_$s.pt
    done
    kavach train denoiser --dataset digits --arch drunet_small --widths 8,16,32,32 --blocks 1 --sigmas 0.25,0.5 \
        --objective mse --epochs 60 --batch-size 64 --seed 0 --out $OUT/digits_drunet.pt
fi
if [ "$which" = fashion ] || [ "$which" = all ]; then
    kavach train classifier --dataset fashion_mnist --arch mnist_cnn --arch-kwargs '{"width": 16}' --method none --epochs 10 --seed 0 \
        --out $OUT/fashion_cnn_clean.pt
    for s in 0.25 0.5; do
        kavach train classifier --dataset fashion_mnist --arch mnist_cnn --arch-kwargs '{"width": 16}' --method gaussian --sigma $s --epochs 10 \
            --seed 0 --out $OUT/fashion_cnn_gaussian_$s.pt
    done
    kavach train denoiser --dataset fashion_mnist --arch drunet_small --widths 8,16,32,32 --blocks 1 \
        --sigmas 0.25,0.5 --objective mse+stability --epochs 2 --stability-epochs 1 \
        --classifier $OUT/fashion_cnn_clean.pt --seed 0 --out $OUT/fashion_drunet.pt
fi
python3 -m engine.train.manifest $OUT
