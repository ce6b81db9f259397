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
ship() {  # SOURCE DESTINATION
    python3 - "$1" "$2" <<'PY'
import sys

import torch

from cascade.checkpoints import load_model, read_spec, save_model

source, destination = sys.argv[1:]
model = load_model(source)
_, metadata = read_spec(source)
metadata = {k: v for k, v in metadata.items() if k not in ("cascade.spec", "cascade.format")}
save_model(destination, model.spec, model.network.state_dict(), torch.float16, metadata)
PY
}
for stage in sr256 sr1024 base64; do
    ship "$out/run-$stage/model.safetensors" "$out/$stage.safetensors"
done
# sr256's default run, the shipped weights' 20-step run at fidelity 0.6, distilled into a
# student of 4 and 1 deterministic calls (`cascade distill`), both CPU threads, in two runs:
# 1. its outputs on 1,024 64² crops of the same photos (clean and JPEG q75 / q50 inputs), then
#    600 steps of L2 (trajectory distillation);
# 2. from there, its outputs on 768 128² crops, then 400 steps with the fine band's local RMS
#    matched as well (`--energy-weight 10`): the detail the first run's student smooths away.
distill() {  # NAME STEPS [cascade distill flags...]: start, or resume from the saved state
    local name=$1 steps=$2 resume=()
    shift 2
    [ -f "$out/$name/distill_state.pt" ] && resume=(--resume)
    OMP_NUM_THREADS=2 cascade distill --stage sr256 --teacher "$out/sr256.safetensors" \
        --data "$data/sr/train" --out "$out/$name" --steps "$steps" --max-minutes "$minutes" \
        "${resume[@]}" "$@" >> "$out/$name.log" 2>&1
}
finished() {  # MODEL STEPS: has this student been trained for STEPS steps?
    [ -f "$1" ] && python3 - "$1" "$2" <<'PY'
import sys

from cascade.checkpoints import read_spec

_, metadata = read_spec(sys.argv[1])
sys.exit(0 if int(metadata.get("distill.step", 0)) >= int(sys.argv[2]) else 1)
PY
}
distill distill-sr256 600 --batch-size 8
# (a run whose time ran out, while pooling or training, is taken up by running the script again)
if finished "$out/distill-sr256/model.safetensors" 600; then
    distill distill-sr256-detail 400 --crop 128 --pairs 768 --batch-size 4 --energy-weight 10 \
        --init "$out/distill-sr256/model.safetensors"
fi
if finished "$out/distill-sr256-detail/model.safetensors" 400; then
    ship "$out/distill-sr256-detail/model.safetensors" "$out/sr256.student.safetensors"
fi
# The JPEG pre-clean both upscalers' JPEG inputs pass through (`cascade train-deblock`: the
# photos reduced by 4 and 8, random 64² crops saved at JPEG q 30..95, L2 to the crop), both
# threads; resumable like the rest. It ships as is (float32, 1.2 MB).
OMP_NUM_THREADS=2 cascade train-deblock --data "$data/sr/train" --out "$out/deblock.safetensors" \
    --steps 6000 --max-minutes "$minutes" --resume >> "$out/deblock.log" 2>&1
