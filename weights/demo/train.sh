#!/usr/bin/env bash
# How the demo weights were made: the three stages trained side by side on one GPU, each for a
# fixed time budget, on the scikit-image photos (`cascade demo-data`), then stored as float16.
# Usage: weights/demo/train.sh OUT_DIR [MINUTES]
set -euo pipefail
out=${1:?output folder}
minutes=${2:-6.5}
mkdir -p "$out"
# Three trainings share the host: without a cap each would start one thread per core.
export OMP_NUM_THREADS=4
data=$(mktemp -d)
cascade demo-data --out "$data"
common=(--device cuda --precision bfloat16 --steps 1000000 --max-minutes "$minutes"
        --lr 2e-4 --warmup 200 --ema 0.999 --sample-every 0 --save-every 2000)
cascade train --stage base64 --data "$data/base" --batch-size 64 --out "$out/run-base64" \
    "${common[@]}" > "$out/train-base64.log" 2>&1 &
cascade train --stage sr256 --data "$data/sr/train" --crop 128 --batch-size 32 \
    --out "$out/run-sr256" "${common[@]}" > "$out/train-sr256.log" 2>&1 &
cascade train --stage sr1024 --data "$data/sr/train" --crop 128 --batch-size 32 \
    --out "$out/run-sr1024" "${common[@]}" > "$out/train-sr1024.log" 2>&1 &
wait
for stage in base64 sr256 sr1024; do
    python3 - "$out/run-$stage/model.safetensors" "$out/$stage.safetensors" <<'PY'
import sys

import torch

from cascade.checkpoints import load_model, read_spec, save_model

source, destination = sys.argv[1:]
model = load_model(source)
_, metadata = read_spec(source)
metadata = {k: v for k, v in metadata.items() if not k.startswith("cascade.spec")}
metadata.pop("cascade.format", None)
save_model(destination, model.spec, model.network.state_dict(), torch.float16, metadata)
PY
done
for stage in sr256 sr1024; do
    cascade eval --stage "$stage" --data "$data/sr/holdout" --checkpoint "$out/$stage.safetensors" \
        --crop 256 --steps 20 --sampler dpmpp_2m --device cuda --out "$out/eval-$stage"
done
