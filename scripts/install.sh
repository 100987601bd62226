#!/usr/bin/env bash
# Installs everything the project needs from nothing: a venv from Debian's python3.11 (the
# tritonserver python-backend stub needs Debian's 3.11, see export/README.md), the project, and the
# tritonserver binary from the nvidia-pytriton wheel, kept apart from the venv (it pins numpy<2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${APRON_PYTHON:-/usr/bin/python3.11}
[ -x "$PY" ] || PY=$(command -v python3.11)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
if [ ! -x third_party/pytriton/pytriton/tritonserver/bin/tritonserver ]; then
  .venv/bin/pip install -q --no-deps --target third_party/pytriton nvidia-pytriton==0.7.0
fi
echo "installed: .venv (python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])')), tritonserver in third_party/pytriton"
