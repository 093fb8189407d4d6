#!/usr/bin/env bash
# The device runtime's tests on Python 3.9 with tflite-runtime and no TensorFlow, on the model
# files `make test` built (EDGEWATCH_TEST_MODELS). This is what a Pi on Debian 11 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-py39
# tflite-runtime 2.14 is built against numpy 1.x
scripts/make-venv.sh 3.9 "$venv" "numpy<2" -e ".[tflite,onnx,s3]" pytest "moto[server]>=5.0"
"$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 9), sys.version'
"$venv/bin/python" -c 'import tflite_runtime, sys; print("tflite-runtime", tflite_runtime.__version__, "on", sys.version.split()[0])'
if "$venv/bin/python" -c 'import tensorflow' 2>/dev/null; then echo "tensorflow must not be installed here" >&2; exit 1; fi
: "${EDGEWATCH_TEST_MODELS:=$PWD/.cache/test-models}"
export EDGEWATCH_TEST_MODELS EDGEWATCH_REQUIRE_MODELS=1
exec "$venv/bin/python" -m pytest -q -m "not needs_tf" -p no:cacheprovider tests
