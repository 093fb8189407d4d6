#!/usr/bin/env bash
# Exported IR must load in OpenVINO 2022.3 LTS, the last release that drives the NCS2, and
# give the same outputs; the agent's own openvino backend is what loads it (2022.3 API).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ov2022
scripts/make-venv.sh 3.10 "$venv" "numpy<1.27" "openvino==2022.3.*" -e .
: "${EDGEWATCH_TEST_MODELS:=$PWD/.cache/test-models}"
exec "$venv/bin/python" scripts/check_ov2022.py "$EDGEWATCH_TEST_MODELS"
