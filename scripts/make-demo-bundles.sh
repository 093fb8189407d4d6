#!/usr/bin/env bash
# Rebuild the two demo model bundles that `edge-agent demo` ships (SPEC §8):
#   edge_agent/demo/bundles/shapes-1.0.0  a short training (visibly worse)
#   edge_agent/demo/bundles/shapes-1.1.0  a longer one (better mAP, in its manifest's metrics)
# Both come from the same deterministic synthetic dataset, through cloud-trainer's own documented
# commands. Artifacts are int8 TFLite (the tflite backend) and ONNX (onnxruntime, and OpenCV's dnn:
# the demo runs with the base dependencies alone), nothing else, to keep the repository small.
# The bundles are left unsigned: the demo signs copies at run time with a throwaway key.
# The dataset is identical on every machine; the trained weights may differ in the last bits
# between machine types (the train command does not force TensorFlow's op determinism).
#
# Usage (from anywhere; needs the trainer extra in .venv): scripts/make-demo-bundles.sh
# About 8 minutes on 2 CPU cores (the two trainings: 1.6 and 5.5 minutes).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
trainer="$repo/.venv/bin/cloud-trainer"
if [[ ! -x "$trainer" ]]; then
    echo "make-demo-bundles: $trainer not found; run 'make venv' (with the trainer extra) first" >&2
    exit 1
fi

images=1000    # synthetic scenes, 20% of them held out for validation
seed=8         # the dataset and the training runs; the same seed gives the same dataset
img_size=256   # model input: small enough for a Pi's CPU, large enough for the smallest shapes
epochs_old=8   # version 1.0.0: stopped early on purpose
epochs_new=40  # version 1.1.0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export TF_CPP_MIN_LOG_LEVEL=2

"$trainer" synth --out "$work/data" --images "$images" --seed "$seed" --format yolo --width 320 --height 240

build() {  # build VERSION EPOCHS
    local version="$1" epochs="$2" run="$work/run-$1"
    "$trainer" train "$work/data" --format yolo --out "$run" --epochs "$epochs" --img-size "$img_size" \
        --seed "$seed" --eval-every "$epochs"
    "$trainer" export "$run" --formats tflite,onnx --name shapes --version "$version" --out "$run/bundle"
}
build 1.0.0 "$epochs_old"
build 1.1.0 "$epochs_new"

dest="$repo/edge_agent/demo/bundles"
mkdir -p "$dest"
for version in 1.0.0 1.1.0; do
    rm -rf "$dest/shapes-$version"
    cp -r "$work/run-$version/bundle" "$dest/shapes-$version"
done
du -sh "$dest"/shapes-*
