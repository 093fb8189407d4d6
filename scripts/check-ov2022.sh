#!/usr/bin/env bash
# Exported IR must load in OpenVINO 2022.3 LTS, the last release that drives the NCS2, and
# give the same outputs; the agent's own openvino backend is what loads it (2022.3 API).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/find-python.sh 3.10)
venv=.venv-ov2022
if [ ! -f "$venv/.installed" ] || [ setup.cfg -nt "$venv/.installed" ]; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "numpy<1.27" "openvino==2022.3.*" -e .
  touch "$venv/.installed"
fi
: "${EDGEWATCH_TEST_MODELS:=$PWD/.cache/test-models}"
exec "$venv/bin/python" scripts/check_ov2022.py "$EDGEWATCH_TEST_MODELS"
