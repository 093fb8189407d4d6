#!/usr/bin/env bash
# Exported IR must load in OpenVINO 2022.3 LTS, the last release that drives the NCS2, and
# give the same outputs; the agent's own openvino backend is what loads it (2022.3 API). The IRs
# are the shipped test model's (tests/fixtures/models/shapes, with its recorded reference outputs)
# and that of a Tiny YOLOv2 brought in by `cloud-trainer import-darknet`, made first with the
# trainer's environment (.venv, `make venv`; random weights in darknet's format, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ov2022
# openvino 2022.3 itself requires numpy<1.25: what a user who installs it for an NCS2 gets.
scripts/make-venv.sh 3.10 "$venv" "openvino==2022.3.*" -e .
darknet=.cache/ov2022-darknet
rm -rf "$darknet"
.venv/bin/python -m tests.darknet_models "$darknet"
exec "$venv/bin/python" scripts/check_ov2022.py tests/fixtures/models "$darknet"
