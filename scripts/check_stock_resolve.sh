#!/usr/bin/env bash
# Proves that requirements-dev.txt and requirements-timm.txt resolve on a stock package
# index (PyPI alone, where torch is a CUDA build that pins its own Triton), not only with
# this machine's local wheels: pip --isolated ignores the machine's pip config (local
# wheel folders, the torch cap) and --dry-run installs nothing (it fetches metadata, and
# the wheels that publish none). Exits non-zero on ResolutionImpossible.
set -euo pipefail
cd "$(dirname "$0")/.."
INDEX=${STOCK_INDEX:-https://pypi.org/simple}
PY=${VENV:-.venv}/bin/python
for req in requirements-dev.txt requirements-timm.txt; do
  echo "==> $req against $INDEX (dry run)"
  "$PY" -m pip --isolated --disable-pip-version-check install -q --dry-run --ignore-installed --no-cache-dir --index-url "$INDEX" \
    --report /tmp/lvtp-resolve-$$.json -r "$req"
  "$PY" - "$req" /tmp/lvtp-resolve-$$.json <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in r["install"]}
print(f"    {sys.argv[1]} resolves: " + ", ".join(f"{k}=={got[k]}" for k in ("torch", "triton", "torchvision", "timm") if k in got))
PY
done
rm -f /tmp/lvtp-resolve-$$.json
