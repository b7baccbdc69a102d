#!/usr/bin/env bash
# The CamVid val tables of docs/results.md: LVTP against the baselines at three budgets,
# then the ablations. Needs ../shared/camvid (or DATA=...); ~10 min on the 2-core CPU.
#   bash benchmarks/camvid_eval.sh [MODEL]      # default: the bundled reference model
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/camvid}
OUT=${OUT:-docs/results}
PY=${PY:-.venv/bin/python}
MODEL=${1:-}
mkdir -p "$OUT"
args=(--data "$DATA" --split val --no-progress)
[ -n "$MODEL" ] && args+=(--model "$MODEL")
"$PY" -m lvtp_kernels eval "${args[@]}" --reductions 0.2,0.3,0.45 \
  --methods lvtp,lvtp-spec,evit,tome,tome-every-layer,random --json "$OUT/val_methods.json"
"$PY" -m lvtp_kernels eval "${args[@]}" --reductions 0.3,0.45 \
  --methods lvtp-spec,lvtp-ranked,lvtp-residual,lvtp-frozen,lvtp-low,lvtp-high,lvtp-no-edge,lvtp-edge-only,lvtp-entropy-only,lvtp-shannon,lvtp-equal-weights,lvtp-no-cluster,lvtp-iters10,lvtp-iters1 \
  --json "$OUT/val_ablations.json"
