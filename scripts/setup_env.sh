#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install everything the demo
# and the tests need. Idempotent: a second run only re-installs the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip "setuptools>=77" wheel
# torch is pinned: 2.13.0 is the CPU build that installs from local disk here (an
# unpinned torch pulls a multi-GB CUDA build); on a stock index it is a CUDA build that
# pins its own Triton, which requirements-dev.txt's `triton>=3.6` leaves free. torch goes
# first, so that the Triton choice below can read its requirements.
"${PIP[@]}" install "$(grep -E '^torch[=<>~ ]' requirements-dev.txt)"
# Where torch pins no Triton (a CPU build), prove the oldest supported one
# (constraints-oldest.txt: the GPU image's Triton 3.6). LVTP_TRITON=latest takes the newest.
CONSTRAINTS=()
if [ "${LVTP_TRITON:-oldest}" = oldest ] && ! "$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
reqs = md.requires("torch") or []
sys.exit(0 if any(r.replace(" ", "").lower().startswith("triton") for r in reqs) else 1)
PY
then
  CONSTRAINTS=(-c constraints-oldest.txt)
fi
"${PIP[@]}" install -r requirements-dev.txt "${CONSTRAINTS[@]}"
"${PIP[@]}" install --no-build-isolation -e .
touch "$VENV/.lvtp-installed"
echo "==> environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
