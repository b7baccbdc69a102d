#!/usr/bin/env bash
# The timm adapter's tests, where timm imports. In the main venv (a CPU torch) timm cannot
# import (its torchvision needs a CUDA torch), so they run here in a second venv,
# .venv-timm (requirements-timm.txt, ~5.5 GB; a CUDA build of torch that runs on the CPU),
# against the source tree with the compiled ops off (they are built for the main venv's
# torch) and LVTP_REQUIRE_TIMM=1 (a timm that does not import fails instead of skipping).
# LVTP_SKIP_TIMM=1 skips this step (then the timm tests have only run if the main venv has timm).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN=${VENV:-.venv}
TVENV=${TIMM_VENV:-.venv-timm}
PYTHON=${PYTHON:-python3}
if [ "${LVTP_SKIP_TIMM:-0}" = 1 ]; then
  echo "==> LVTP_SKIP_TIMM=1: the timm adapter tests in $TVENV are skipped"; exit 0
fi
if "$MAIN/bin/python" -c "import timm.models.vision_transformer" >/dev/null 2>&1; then
  echo "==> timm imports in $MAIN: its tests ran in the main suite"; exit 0
fi
if [ ! -f "$TVENV/.lvtp-installed" ] || [ requirements-timm.txt -nt "$TVENV/.lvtp-installed" ]; then
  echo "==> creating $TVENV (torch 2.14.1 + torchvision 0.29.1 + timm)"
  [ -x "$TVENV/bin/python" ] || "$PYTHON" -m venv "$TVENV"
  "$TVENV/bin/python" -m pip --disable-pip-version-check -q install -r requirements-timm.txt
  touch "$TVENV/.lvtp-installed"
fi
LVTP_DISABLE_EXT=1 LVTP_REQUIRE_TIMM=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  "$TVENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_adapters.py tests/test_dense_adapters.py tests/test_model.py -k timm "$@"
