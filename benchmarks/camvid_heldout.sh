#!/usr/bin/env bash
# The sequence-disjoint protocol of docs/results.md for one held-out sequence of the
# CamVid train+val pool (0001TP, 0006R0, 0016E5): train a reference model that never sees
# it (resumable: rerun to continue), then score LVTP and the baselines on it with 95 %
# bootstrap intervals over its images. Needs ../shared/camvid (or DATA=...).
#   bash benchmarks/camvid_heldout.sh 0006R0 [EPOCHS]     # default 50 epochs, ~45 min on one core
# Writes out/loso_SEQ/ (the model) and docs/results/heldout_SEQ_{methods,ablations}.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ=${1:?usage: camvid_heldout.sh SEQUENCE [EPOCHS]}
EPOCHS=${2:-50}
DATA=${DATA:-../shared/camvid}
RESULTS=${RESULTS:-docs/results}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-out/loso_$SEQ}
mkdir -p "$RESULTS"
# scale 0.33-1.33 of the original photo = 0.5-2.0 of the model's 240x320 input scale
"$PY" -m lvtp_kernels train-reference --data "$DATA" --out "$RUN" --epochs "$EPOCHS" --eval-every 10 \
  --threads 1 --bf16 --no-progress --train-split "except:$SEQ" --val-split "seq:$SEQ" --scale 0.33,1.33
args=(--data "$DATA" --split "seq:$SEQ" --model "$RUN/model.safetensors" --no-progress)
"$PY" -m lvtp_kernels eval "${args[@]}" --reductions 0.2,0.3,0.45 \
  --methods lvtp,lvtp-spec,evit,tome,tome-every-layer,random --json "$RESULTS/heldout_${SEQ}_methods.json"
[ "${ABLATIONS:-1}" = 1 ] && "$PY" -m lvtp_kernels eval "${args[@]}" --reductions 0.3,0.45 \
  --methods lvtp,lvtp-ranked,lvtp-residual,lvtp-frozen,lvtp-low,lvtp-no-edge,lvtp-edge-only,lvtp-entropy-only,lvtp-no-cluster,random \
  --json "$RESULTS/heldout_${SEQ}_ablations.json"
