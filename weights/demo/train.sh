#!/usr/bin/env bash
# How the demo weights are made: the three stages trained side by side on a CPU, each with a
# time budget, on the demo photos (`cascade demo-data`: scikit-image plus the Debian wallpaper
# photographs), resumable: run it again with the same OUT_DIR to continue where it stopped.
# Usage: weights/demo/train.sh OUT_DIR [MINUTES] [DEVICE]
set -euo pipefail
out=${1:?output folder}
minutes=${2:-100}
device=${3:-cpu}
mkdir -p "$out"
data="$out/data"
[ -f "$data/DATA.md" ] || cascade demo-data --out "$data"
# Three trainings share the machine: one thread each (a 2-core host runs them ~1.5x slower
# than alone, but all three advance).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--device "$device" --steps 1000000 --max-minutes "$minutes" --lr 4e-4 --warmup 200
        --ema 0.995 --batch-size 16 --crop 64 --sample-every 0 --save-every 200)
train() {  # STAGE DATA: start, or resume from the saved state
    local stage=$1 folder=$2 resume=()
    [ -f "$out/run-$stage/train_state.pt" ] && resume=(--resume "$out/run-$stage/train_state.pt")
    cascade train --stage "$stage" --data "$folder" --out "$out/run-$stage" "${common[@]}" \
        "${resume[@]}" >> "$out/train-$stage.log" 2>&1
}
train sr256 "$data/sr/train" &
train sr1024 "$data/sr/train" &
train base64 "$data/base" &
wait
# The shipped files: the EMA weights in float16 with the training metadata (loads as float32).
for stage in sr256 sr1024 base64; do
    python3 - "$out/run-$stage/model.safetensors" "$out/$stage.safetensors" <<'PY'
import sys

import torch

from cascade.checkpoints import load_model, read_spec, save_model

source, destination = sys.argv[1:]
model = load_model(source)
_, metadata = read_spec(source)
metadata = {k: v for k, v in metadata.items() if k not in ("cascade.spec", "cascade.format")}
save_model(destination, model.spec, model.network.state_dict(), torch.float16, metadata)
PY
done
