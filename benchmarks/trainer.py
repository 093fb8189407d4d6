"""The trainer's speed: training images per second and the time of each export (issue 11).

Everything runs in ``workdir`` (the caller's temporary folder), from data the project makes and
with no downloaded weights:

1. a synthetic dataset from the agent's scene generator (``cloud_trainer.data.synthesize``, what
   ``cloud-trainer synth`` writes), YOLO format, scenes of 2 x 1.5 times the input size (the
   trainer shrinks every image to 1.5 x its input anyway);
2. ``cloud_trainer.train.train`` from random initialisation (``backbone``, no ``pretrained``:
   nothing is downloaded) at ``size`` pixels, batch ``BATCH``. Throughput is
   the training images times the epochs after the first, divided by their time: the first epoch
   is left out, as its first step traces the ``tf.function`` training step and optimises its
   graph (``train_first_epoch_s``). An epoch's time is the span the trainer logs as
   ``epoch k/E ... 1.2s`` (the same call, ``_Fitter.epoch``, timed here to the microsecond):
   batch preparation with augmentation plus the training steps, without the checkpoint written
   after it. Validation runs once, after the last epoch (``eval_every`` = ``epochs``), and is
   timed apart (``train_validate_s``);
3. ``cloud_trainer.pipeline.export_run``, exactly as ``cloud-trainer export`` runs it, with
   every format and its evaluation. Each step is timed where it is called, by wrapping the
   project's own functions for the duration of the call: the int8 TFLite conversion (its
   calibration on the training images included), the ONNX conversion, the OpenVINO IR FP16
   conversion (which starts from that ONNX file: the ONNX step is not in it), the EdgeTPU compile
   (where ``edgetpu_compiler`` is not on PATH the trainer makes no artifact: ``export_skipped``
   gives its reason), the EdgeTPU static check of the int8 model, and the evaluation of the float
   model and of each artifact through its device runtime (loading and warming the runtime
   included). What ``export_run`` spends outside them (loading the run and its data, writing and
   hashing the bundle) is ``export_other_s``.

Run alone: ``python benchmarks/trainer.py [--quick]`` prints the figures as one JSON object on
stdout; the trainer's progress goes to stderr, the converters' listings of their saved models are
dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional
from unittest import mock

INPUT = 160  # model input, pixels (a multiple of 32)
BATCH = 16
FORMATS = ["tflite", "edgetpu", "openvino", "onnx"]  # what `cloud-trainer export` makes by default
# cloud_trainer.export's function for each format (openvino converts the onnx file onnx made).
EXPORT_FUNCTIONS = {"tflite_int8": "tflite", "edgetpu": "edgetpu", "onnx": "onnx", "openvino": "openvino"}
IMAGES, EPOCHS = 320, 5
QUICK_IMAGES, QUICK_EPOCHS = 96, 3

Log = Callable[[str], None]


class _Seconds:
    """Seconds spent per step, added up under a label."""

    def __init__(self) -> None:
        self.by_label: Dict[str, float] = {}
        self.epochs: List[float] = []

    def add(self, label: str, seconds: float) -> None:
        self.by_label[label] = self.by_label.get(label, 0.0) + seconds

    def adder(self, label: str) -> Callable[[float], None]:
        return functools.partial(self.add, label)

    def take(self, prefix: str) -> Dict[str, float]:
        """The labels under ``prefix:``, without it, rounded."""
        return {
            k.split(":", 1)[1]: round(v, 2) for k, v in self.by_label.items() if k.startswith(prefix + ":")
        }


def _timed(fn: Callable[..., Any], record: Callable[[float], None]) -> Callable[..., Any]:
    """``fn``, calling ``record`` with the seconds each call took."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(time.perf_counter() - t0)

    return wrapped


@contextlib.contextmanager
def _wrapped(owner: Any, name: str, record: Callable[[float], None]) -> Iterator[None]:
    """``owner.name`` (a module's function, a class's method) timed by ``record`` while the block
    runs."""
    with mock.patch.object(owner, name, _timed(getattr(owner, name), record)):
        yield


class _Chatter(io.TextIOBase):
    """A text stream that passes whole lines to ``log`` but for the converters' listings of the
    models they save (``Saved artifact at ...``, then a ``TensorSpec`` line per variable). What ``log``
    itself writes here (it may print to ``sys.stderr``, this stream then) goes to ``fallback``."""

    DROPPED = ("Saved artifact at", "* Endpoint", "Output Type:", "Captures:")

    def __init__(self, log: Log, fallback: Any) -> None:
        self.log, self.fallback, self.pending, self.busy = log, fallback, "", False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.busy:
            return int(self.fallback.write(s))
        *lines, self.pending = (self.pending + s).split("\n")
        self.busy = True
        try:
            for line in lines:
                if line.strip() and "TensorSpec(" not in line and not line.startswith(self.DROPPED):
                    self.log(line)
        finally:
            self.busy = False
        return len(s)


def _quiet_tensorflow() -> None:
    """TensorFlow's C++ and Python logging down to errors (the C++ part only before TensorFlow is
    first imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl", "tf2onnx", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _make_data(root: Path, images: int, seed: int, size: int) -> Path:
    from cloud_trainer.data import synthesize

    data = root / "data"
    synthesize(data, images, seed, "yolo", size * 2, size * 3 // 2)
    return data


def _train(data: Path, run: Path, epochs: int, log: Log, backbone: str, size: int) -> Dict[str, Any]:
    """Train from random weights; each epoch's seconds, the steady-state throughput."""
    from cloud_trainer import train as trainer
    from cloud_trainer.data import load_dataset

    dataset = load_dataset(str(data), None)
    cfg = trainer.TrainConfig(
        epochs=epochs, batch=BATCH, img_size=size, backbone=backbone, pretrained=None, eval_every=epochs
    )
    train_images = len(dataset.split(cfg.val_fraction, cfg.seed)[0].samples)
    seconds = _Seconds()
    t0 = time.perf_counter()
    with (
        _wrapped(trainer._Fitter, "epoch", seconds.epochs.append),
        _wrapped(trainer, "evaluate", seconds.adder("validate")),
    ):
        trainer.train(dataset, run, cfg, data_path=str(data), echo=log)
    total = time.perf_counter() - t0
    first, steady = seconds.epochs[0], seconds.epochs[1:]
    return {
        "train_images_per_s": round(train_images * len(steady) / sum(steady), 1),
        "train_images": train_images,
        "train_epochs_timed": len(steady),
        "train_timed": "epochs 2..N; epoch 1 (tf.function tracing, graph optimisation) left out",
        "train_epoch_s": [round(s, 3) for s in seconds.epochs],
        "train_first_epoch_s": round(first, 2),
        "train_validate_s": round(seconds.by_label.get("validate", 0.0), 2),
        "val_images": len(dataset.samples) - train_images,
        "train_total_s": round(total, 2),
    }


@contextlib.contextmanager
def _timing_export(seconds: _Seconds) -> Iterator[None]:
    """Time the export functions ``export_all`` calls, the EdgeTPU static check, and each
    evaluation ``export_run`` makes, labelled with the artifact opened before it ("float" for the
    Keras model, evaluated first)."""
    from cloud_trainer import export, pipeline

    current = ["float"]
    opener = pipeline.open_artifact

    def open_artifact(bundle_dir: Path, art: Any) -> Any:
        current[0] = art.runtime
        return opener(bundle_dir, art)

    def evaluation(s: float) -> None:
        seconds.add(f"eval:{current[0]}", s)

    with contextlib.ExitStack() as stack:
        for name, label in EXPORT_FUNCTIONS.items():
            stack.enter_context(_wrapped(export, name, seconds.adder(f"export:{label}")))
        stack.enter_context(_wrapped(pipeline, "edgetpu_check", seconds.adder("check:edgetpu")))
        stack.enter_context(_wrapped(pipeline, "evaluate", evaluation))
        stack.enter_context(mock.patch.object(pipeline, "open_artifact", _timed(open_artifact, evaluation)))
        yield


def _export(run: Path, log: Log) -> Dict[str, Any]:
    """``export_run`` with every format and its evaluation; each step's seconds."""
    from cloud_trainer.pipeline import export_run

    seconds = _Seconds()
    chatter = _Chatter(log, sys.stderr)
    t0 = time.perf_counter()
    with _timing_export(seconds), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        result = export_run(run, list(FORMATS), evaluate=True)
    total = time.perf_counter() - t0
    per_artifact = result.get("metrics", {}).get("per_artifact", {})
    skipped = {k: str(v["skipped"]) for k, v in per_artifact.items() if "skipped" in v}
    if "edgetpu" in result:  # the pipeline's note when it made no EdgeTPU artifact
        skipped["edgetpu"] = str(result["edgetpu"])
    return {
        "export_s": seconds.take("export"),
        "export_skipped": skipped,
        "edgetpu_check_s": seconds.take("check").get("edgetpu"),
        "eval_s": seconds.take("eval"),
        "export_other_s": round(total - sum(seconds.by_label.values()), 2),
        "export_total_s": round(total, 2),
        "artifacts": result.get("artifacts", []),
        "map50": {"float": result.get("metrics", {}).get("map50"), **_map50(per_artifact)},
    }


def _map50(per_artifact: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v["map50"] for k, v in per_artifact.items() if "map50" in v}


def measure_trainer(
    workdir: Path,
    images: int = IMAGES,
    epochs: int = EPOCHS,
    quick: bool = False,
    seed: int = 0,
    log: Optional[Log] = None,
    backbone: str = "tiny",
    size: int = INPUT,
) -> Dict[str, Any]:
    """Synthesize ``images`` scenes in ``workdir``, train ``epochs`` epochs on them (80 % train,
    20 % validation), export every format with its evaluation; the figures as a JSON-able dict.

    ``quick`` caps the run for a fast loop (at most ``QUICK_IMAGES`` images, ``QUICK_EPOCHS``
    epochs). ``log`` takes the trainer's progress lines (default: dropped)."""
    if quick:
        images, epochs = min(images, QUICK_IMAGES), min(epochs, QUICK_EPOCHS)
    if epochs < 2:
        raise ValueError("epochs must be at least 2: the first one is left out of the throughput")
    _quiet_tensorflow()
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    data = _make_data(workdir, images, seed, size)
    out: Dict[str, Any] = {"input": f"{size}x{size}", "backbone": backbone, "batch": BATCH, "images": images}
    out["synth_s"] = round(time.perf_counter() - t0, 2)
    out.update(_train(data, workdir / "run", epochs, say, backbone, size))
    out.update(_export(workdir / "run", say))
    out["bundle"] = str(workdir / "run" / "bundle")
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="The trainer's images/s and each export's time, as JSON.")
    p.add_argument("--images", type=int, default=IMAGES, help=f"synthetic scenes (default {IMAGES})")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"at least 2 (default {EPOCHS})")
    p.add_argument(
        "--quick", action="store_true", help=f"at most {QUICK_IMAGES} images, {QUICK_EPOCHS} epochs"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        result = measure_trainer(
            Path(tmp),
            args.images,
            args.epochs,
            args.quick,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
