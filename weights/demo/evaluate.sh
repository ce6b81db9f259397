#!/usr/bin/env bash
# How the demo weights' model cards were measured: each upscaler against bicubic on the held-out
# photos (`cascade demo-data`'s sr/holdout: scikit-image's chelsea and coffee, three Debian
# wallpaper photographs), LR made by antialiased bicubic /4 from center crops (and, at the end,
# by the real-input degradations of it).
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
# The 20-step run (dpmpp_2m, the stage's default fidelity and low band) and fidelity 1 (the
# self-ensemble of eight views).
eval_sr sr256-default sr256 --sampler dpmpp_2m --steps 20
# The service default: the student beside the weights in four calls, and its one-call mode.
for degradation in bicubic jpeg75 jpeg50 noise5; do
    eval_sr "sr256-student4-$degradation" sr256 --degradation "$degradation"
done
for degradation in bicubic jpeg75; do
    eval_sr "sr256-student1-$degradation" sr256 --steps 1 --degradation "$degradation"
done
# JPEG inputs without the pre-clean beside the weights (deblock.safetensors), as before it.
for degradation in jpeg75 jpeg50; do
    eval_sr "sr256-student4-$degradation-raw" sr256 --degradation "$degradation" --preclean none
done
# Fidelity sweep (the default is chosen from it), and the sample as is beside the low band.
for fidelity in 0.8 0.5 0.4 0.2 0.0; do
    eval_sr "sr256-fidelity$fidelity" sr256 --sampler dpmpp_2m --steps 20 --fidelity "$fidelity"
done
eval_sr sr256-fidelity0.5-sample sr256 --sampler dpmpp_2m --steps 20 --fidelity 0.5 \
    --low-band sample
# 256 -> 1024 on the photos large enough for a 1024 crop: the 20-step run (and fidelity 1), then
# the fidelity sweep at 512 px crops (a quarter of the time).
eval_sr sr1024-steps20 sr1024 --sampler dpmpp_2m --steps 20 --fidelity 0.95
eval_sr sr1024-steps20-sample sr1024 --sampler dpmpp_2m --steps 20 --fidelity 0.95 --low-band sample
for run in 0.95:estimate 0.9:estimate 0.8:estimate 0.7:estimate \
    0.95:sample 0.9:sample 0.8:sample 0.5:sample; do
    fidelity=${run%%:*} band=${run##*:}
    eval_sr "sr1024-512-fidelity$fidelity-$band" sr1024 --sampler dpmpp_2m --steps 20 \
        --crop 512 --fidelity "$fidelity" --low-band "$band"
done
# Real inputs: the same photos' low-res versions saved as JPEG (q75, q50), with Gaussian noise
# (sigma 5/255), and through the second-order chain (seeded by the image's index), every output
# scored against the clean ground truth (bicubic, Lanczos, the default and fidelity 1).
for degradation in jpeg75 jpeg50 noise5 realistic; do
    eval_sr "sr256-$degradation" sr256 --sampler dpmpp_2m --steps 20 --degradation "$degradation"
done
# sr1024 at its default run (3 steps from fidelity 0.945), 512 px crops; clean also at 1024 px.
for degradation in bicubic jpeg75 jpeg50 noise5 realistic; do
    eval_sr "sr1024-default-$degradation" sr1024 --crop 512 --degradation "$degradation"
done
eval_sr sr1024-default-1024 sr1024
# The cards' grids: per photo, clean and JPEG q75 rows with a 3x zoom of the most detailed window.
python3 -m bench.card_grid "$weights/sr256.safetensors" --data "$holdout" \
    --degradations bicubic jpeg75 --limit 3 --out "$out/grid-sr256.png"
python3 -m bench.card_grid "$weights/sr1024.safetensors" --data "$holdout" --crop 384 --limit 2 \
    --degradations bicubic jpeg75 --out "$out/grid-sr1024.png"
# The sampler criteria (each sampler against its own 200-step result and against 1000-step
# ancestral) are `cascade bench --only samplers --data "$holdout"` (BENCHMARKS.md).
