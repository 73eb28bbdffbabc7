#!/usr/bin/env bash
# The GPU checks of one session with an accelerator, as one short script (README "Known limits"):
#   1) the test suite on the GPU (CUDA paths of the evaluator, inference, the fused-kernel comparison if built);
#   2) tools/benchmark.py: EVA02-L-14 + Mask2Former (vltseg_gta.yaml) at 512x512 and 1024x1024 in bf16, and
#      the towers alone, each printed as a table with ratios to its first row.
# Run from the repository root with detectron2 / open_clip / vlt importable (on the lent machine:
#   bash .whl/install-wheels.sh && export PYTHONPATH=$PWD/.whl/site:$PWD/projects:$PWD && bash tools/device_check.sh).
# Writes everything under ${OUT:-output/device_check}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/device_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONWARNINGS="ignore::FutureWarning:torch.jit._script"
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' \
  | tee "$OUT/device.txt"
"$PY" -m pytest -q -p no:cacheprovider -x --durations=10 2>&1 | tail -25 | tee "$OUT/pytest.txt"
for size in 512 1024; do
  "$PY" tools/benchmark.py --config-file configs/vltseg_gta.yaml --size "$size" --batch 2 --amp bf16 --iters 5 \
    --test-size "$size" "$((size * 2))" 2>&1 | tail -8 | tee "$OUT/benchmark_vltseg_gta_${size}.txt"
done
"$PY" tools/benchmark.py --towers ViT-B-16 EVA02-B-16 ViT-L-14 EVA02-L-14 --size 512 --amp bf16 --iters 10 2>&1 \
  | tail -8 | tee "$OUT/benchmark_towers.txt"
