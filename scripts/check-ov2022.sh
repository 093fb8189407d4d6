#!/usr/bin/env bash
# Exported IR must load in OpenVINO 2022.3 LTS, the last release that drives the NCS2, and
# give the same outputs; the agent's own openvino backend is what loads it (2022.3 API). The IR
# is the shipped test model's (tests/fixtures/models/shapes, with its recorded reference outputs).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ov2022
# openvino 2022.3 itself requires numpy<1.25: what a user who installs it for an NCS2 gets.
scripts/make-venv.sh 3.10 "$venv" "openvino==2022.3.*" -e .
exec "$venv/bin/python" scripts/check_ov2022.py tests/fixtures/models
