#!/usr/bin/env bash
# The GPU checks of one session with an accelerator, as one short script (README "Known limits", "Speed switches"):
#   pytest   the test suite on the GPU (CUDA paths of the evaluator, inference, the fused-kernel comparison if built);
#   compare  tools/benchmark.py --compare for vltseg_gta.yaml (EVA02-L-14 + Mask2Former) and rein_gta.yaml (frozen
#            EVA02-L + Rein), crop 512, batch 2 per GPU: each speed switch (bf16, torch.compile, fused deformable
#            attention, activation checkpointing, sliding windows per batch) on against the all-off baseline,
#            interleaved in one process; one table per config with ratios to the baseline;
#   towers   the open_clip towers' forward alone in bf16.
# Run from the repository root with detectron2 / open_clip / vlt importable (on the lent machine:
#   bash .whl/install-wheels.sh && export PYTHONPATH=$PWD/.whl/site:$PWD/projects:$PWD && bash tools/device_check.sh).
# Settings (environment): OUT (default output/device_check), PYTHON, STAGES (default "pytest compare towers"; e.g.
# STAGES=compare for the tables alone: about 5 minutes per config on one H100, most of it torch.compile), SIZE (512),
# BATCH (2), ROUNDS (3), ITERS (3), DEVICE (default: cuda when available), OPTS (config overrides for both configs).
# The CPU run of the same path (tests/test_benchmark.py, tiny towers):
#   STAGES=compare DEVICE=cpu SIZE=64 ROUNDS=1 ITERS=1 \
#   OPTS="MODEL.OPEN_CLIP.MODEL_NAME VLT-ViT-Tiny-16 MODEL.OPEN_CLIP.OUT_INDICES [0,1,2,3] MODEL.COMPILE.BACKEND eager" \
#   bash tools/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/device_check}
PY=${PYTHON:-python}
STAGES=${STAGES:-pytest compare towers}
SIZE=${SIZE:-512}
BATCH=${BATCH:-2}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-3}
DEVICE_ARGS=()
if [[ -n "${DEVICE:-}" ]]; then DEVICE_ARGS=(--device "$DEVICE"); fi
read -r -a EXTRA_OPTS <<< "${OPTS:-}"
mkdir -p "$OUT"
export PYTHONWARNINGS="ignore::FutureWarning:torch.jit._script"
status=0
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' \
  | tee "$OUT/device.txt"
if [[ " $STAGES " == *" pytest "* ]]; then
  "$PY" -m pytest -q -p no:cacheprovider -x --durations=10 2>&1 | tail -25 | tee "$OUT/pytest.txt"
fi
if [[ " $STAGES " == *" compare "* ]]; then
  for config in vltseg_gta rein_gta; do
    "$PY" tools/benchmark.py --config-file "configs/$config.yaml" --compare --size "$SIZE" --batch "$BATCH" \
      --rounds "$ROUNDS" --iters "$ITERS" "${DEVICE_ARGS[@]}" --opts "${EXTRA_OPTS[@]}" > "$OUT/compare_$config.log" 2>&1 \
      || status=1
    # the table (and the notes on rows left out), without the build / compile log lines
    sed -n -e '/row left out/p' -e '/^device:/,$p' "$OUT/compare_$config.log" | tee "$OUT/compare_$config.txt"
  done
fi
if [[ " $STAGES " == *" towers "* ]]; then
  "$PY" tools/benchmark.py --towers ViT-B-16 EVA02-B-16 ViT-L-14 EVA02-L-14 --size 512 --amp bf16 --iters 10 \
    "${DEVICE_ARGS[@]}" 2>&1 | tail -8 | tee "$OUT/benchmark_towers.txt"
fi
exit $status
