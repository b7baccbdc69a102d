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
# unpinned torch pulls a multi-GB CUDA build). Triton 3.6 is the GPU image's version.
"${PIP[@]}" install -r requirements-dev.txt
"${PIP[@]}" install --no-build-isolation -e .
touch "$VENV/.lvtp-installed"
echo "==> environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
