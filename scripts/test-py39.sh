#!/usr/bin/env bash
# The device runtime's tests on Python 3.9 with tflite-runtime and no TensorFlow, on the shipped
# test models (tests/fixtures/models). This is what a Pi on Debian 11 runs. The extras are
# installed exactly as a user installs them: no pins here (setup.cfg keeps numpy<2 beside
# tflite-runtime, which is built for numpy 1.x).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-py39
scripts/make-venv.sh 3.9 "$venv" -e ".[tflite,onnx,s3]" pytest "moto[server]>=5.0" "hypothesis>=6.0"
"$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 9), sys.version'
"$venv/bin/python" -c 'import tflite_runtime, numpy, sys; print("tflite-runtime", tflite_runtime.__version__, "numpy", numpy.__version__, "on", sys.version.split()[0])'
if "$venv/bin/python" -c 'import tensorflow' 2>/dev/null; then echo "tensorflow must not be installed here" >&2; exit 1; fi
# The reliability suite drives `edge-agent run` and `cloud-trainer publish` as subprocesses
# (the trainer needs 3.10+); it runs in `make test`, on the same agent code.
exec "$venv/bin/python" -m pytest -q -m "not needs_tf" -p no:cacheprovider --ignore=tests/e2e/test_reliability.py tests
