#!/usr/bin/env bash
# One device run, about 9 minutes on an H100/H200: the forward variant matrix (small presets at
# batch 1, 8, 32; compiles at 8; profiles at 8) and `cascade bench --device cuda` on the demo
# weights (forward against the reference, service, throughput). Everything lands in OUT;
# then, back on the main machine:
#   cascade bench --report-only --json bench.json --out . --report BENCHMARKS.md --merge OUT/bench/bench.json
# PYTHON: an interpreter with CUDA torch and the project's requirements (default python3).
set -uo pipefail
OUT=${1:?usage: bench/gpu.sh OUT}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt"
"$PYTHON" -m bench.gpu --out "$OUT/matrix" --device cuda \
  --presets base64-small@64,sr256-small@256,sr1024-small@1024 \
  --batches 1,8,32 --compile-batches 8 --max-minutes 5 2>&1 | tee "$OUT/matrix.log"
# `cascade bench` and the workers it starts find their subcommands through the package's entry
# points: install it (no dependencies, no network) where it is not.
registered="import importlib.metadata as m, sys
sys.exit(not any(e.name == 'bench' for e in m.entry_points(group='cascade.commands')))"
if ! "$PYTHON" -c "$registered"; then
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tee "$OUT/install.log"
fi
"$PYTHON" -m cascade.cli bench --device cuda --out "$OUT/bench" --only forward,service,throughput \
  2>&1 | tee "$OUT/bench.log"
