#!/usr/bin/env bash
# How the demo weights' model cards were measured: each upscaler against bicubic on the held-out
# photos (`cascade demo-data`'s sr/holdout: scikit-image's chelsea and coffee, three Debian
# wallpaper photographs), LR made by antialiased bicubic /4 from center crops.
# Usage: weights/demo/evaluate.sh DATA_DIR OUT_DIR [WEIGHTS_DIR]
set -euo pipefail
data=${1:?demo data folder (cascade demo-data --out DATA_DIR)}
out=${2:?output folder}
weights=${3:-weights/demo}
holdout="$data/sr/holdout"
mkdir -p "$out"
eval_sr() {  # NAME STAGE [cascade eval flags...]
    local name=$1 stage=$2
    shift 2
    cascade eval --stage "$stage" --data "$holdout" --checkpoint "$weights/$stage.safetensors" \
        --out "$out/$name" "$@" > "$out/$name.txt" 2>&1
    grep -E "^MEAN|PSNR:" "$out/$name.txt" | sed "s/^/$name: /"
}
# The service default (dpmpp_2m, 20 steps, the stage's default fidelity) and fidelity 1.
eval_sr sr256-default sr256 --sampler dpmpp_2m --steps 20
# Fidelity sweep (the default is chosen from it).
for fidelity in 0.9 0.8 0.7 0.6 0.5 0.3 0.0; do
    eval_sr "sr256-fidelity$fidelity" sr256 --sampler dpmpp_2m --steps 20 --fidelity "$fidelity"
done
# Sampler criteria at the default fidelity: 20 vs 200 DPM-Solver++ steps, and 1000-step
# ancestral (the reference's algorithm) on the first two photos.
eval_sr sr256-dpmpp200 sr256 --sampler dpmpp_2m --steps 200
eval_sr sr256-dpmpp20-first2 sr256 --sampler dpmpp_2m --steps 20 --limit 2
eval_sr sr256-ancestral1000-first2 sr256 --sampler ancestral --steps 1000 --limit 2
# 256 -> 1024 on the photos large enough for a 1024 crop.
eval_sr sr1024-default sr1024 --sampler dpmpp_2m --steps 20
