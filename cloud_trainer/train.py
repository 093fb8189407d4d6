"""Training: augmentation, progress, checkpoints, resume, early stopping; CPU or GPU.

A run directory holds everything about one training:

    RUN/run.json                  model spec, classes, input, decoder, training settings, data
    RUN/weights/last.weights.h5   after every epoch (resume starts from here)
    RUN/weights/best.weights.h5   the best validation mAP@0.5 so far
    RUN/state.json                epoch, best mAP, history
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edge_agent.bundle.manifest import DecoderSpec, Defaults, InputSpec, Manifest
from edge_agent.detector import Detector

from .augment import PAD, Augment, prepare
from .data.dataset import Dataset, Sample
from .errors import DatasetError, TrainerError
from .evaluate import evaluate
from .keras_backend import KerasBackend
from .model import ModelSpec, build, cell_grid
from .targets import encode, make_loss
from .targets import width as target_width

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
STATE_FILE = "state.json"

# The thresholds a trained model's bundle (and its float model, evaluated in memory) comes with:
# the manifest's defaults but for the score. Scores are IoU-aware (a class score approximates the
# IoU its box reaches), so they run lower than plain class confidences: 0.3 keeps the recall of
# a 0.4 plain threshold.
TRAINED_DEFAULTS = Defaults(score_threshold=0.3)


def weights_file(run: Path, which: str) -> Path:
    """``RUN/weights/last.weights.h5`` (after every epoch) or ``best.weights.h5``."""
    return run / "weights" / f"{which}.weights.h5"


@dataclass
class TrainConfig:
    epochs: int = 80
    batch: int = 32
    img_size: int = 320
    backbone: str = "tiny"
    pretrained: Optional[str] = None  # "imagenet" (mobilenetv2 only)
    lr: float = 3e-3
    warmup_epochs: float = 2.0
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 20  # epochs without a better val mAP@0.5 before stopping
    eval_every: int = 5
    max_minutes: Optional[float] = None  # stop (keeping the best) after this long
    # Same seed, same data, same machine type -> the same weights (TF op determinism).
    deterministic: bool = False


@dataclass
class RunInfo:
    """What ``run.json`` records: enough to rebuild the model and describe its bundle."""

    spec: Dict[str, Any]
    classes: List[str]
    input: Dict[str, Any]
    decoder: Dict[str, Any]
    config: Dict[str, Any]
    data: Dict[str, Any] = field(default_factory=dict)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(**self.spec)

    def manifest(self, name: str = "model", version: str = "0.0.0") -> Manifest:
        """An in-memory manifest without artifacts, for evaluating the float model through the
        agent's Detector (exports get a real manifest from ``package``)."""
        return Manifest.model_construct(
            schema_=1,
            name=name,
            version=version,
            task="detect",
            labels=list(self.classes),
            input=InputSpec(**self.input),
            decoder=DecoderSpec(**self.decoder),
            artifacts=[],
            defaults=TRAINED_DEFAULTS,
            metrics={},
            source={},
        )

    @classmethod
    def load(cls, run: Path) -> RunInfo:
        path = run / RUN_FILE
        if not path.is_file():
            raise TrainerError(
                f"{run}: not a training run (no {RUN_FILE}); train one with `cloud-trainer train`"
            )
        return cls(**json.loads(path.read_text()))

    def save(self, run: Path) -> None:
        (run / RUN_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class TrainState:
    """Where a training stands, as ``state.json`` records it: a resume continues from here."""

    epoch: int = 0  # epochs done
    best_map50: float = -1.0  # the best validation mAP@0.5 so far; -1 before the first
    best_epoch: int = 0  # the epoch (from 1) whose weights are best.weights.h5
    history: List[Dict[str, float]] = field(default_factory=list)  # epoch, loss[, map50, map50_95]

    @classmethod
    def load(cls, run: Path) -> TrainState:
        return cls(**json.loads((run / STATE_FILE).read_text()))

    def save(self, run: Path) -> None:
        (run / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def run_info(dataset: Dataset, spec: ModelSpec, cfg: TrainConfig) -> RunInfo:
    lo, hi = spec.input_range
    return RunInfo(
        spec=asdict(spec),
        classes=list(dataset.classes),
        input={
            "width": spec.img_size,
            "height": spec.img_size,
            "color": "rgb",
            "resize": "letterbox",
            "pad_value": PAD,
            "range": [lo, hi],
        },
        decoder={"type": "yolov8", "params": {"boxes": "normalized"}},
        config=asdict(cfg),
        data={"source": dataset.source, "images": len(dataset.samples), "sha256": dataset.sha256()},
    )


def float_detector(info: RunInfo, model: Any, run: Path) -> Detector:
    """The agent's Detector over the Keras model of ``run``, as the exports will be run."""
    return Detector(info.manifest(), KerasBackend(model), where=str(run / RUN_FILE))


def load_images(samples: List[Sample], size: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Decode every image once, shrunk so its long side is at most 1.5x the input (enough for
    the largest augmentation scale), with its boxes [K,5] scaled alike."""
    out = []
    for s in samples:
        image = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"{s.image}: cannot read image")
        boxes = np.array([[b.class_id, b.xmin, b.ymin, b.xmax, b.ymax] for b in s.boxes], np.float32).reshape(
            -1, 5
        )
        r = 1.5 * size / max(image.shape[:2])
        if r < 1:
            image = cv2.resize(image, None, fx=r, fy=r, interpolation=cv2.INTER_AREA)
            boxes[:, 1:] *= r
        out.append((image, boxes))
    return out


class Batches:
    """Augmented batches (inputs as the model takes them, targets) for one epoch."""

    def __init__(
        self, items: List[Tuple[np.ndarray, np.ndarray]], spec: ModelSpec, batch: int, augment: bool
    ):
        self.items, self.spec, self.batch, self.augment = items, spec, batch, augment
        self.grid = cell_grid(spec)
        lo, hi = spec.input_range
        self.lut = (lo + np.arange(256, dtype=np.float32) * (hi - lo) / 255.0).astype(np.float32)
        self.aug = Augment()

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch)

    def epoch(self, rng: np.random.Generator) -> Any:
        order = rng.permutation(len(self.items)) if self.augment else np.arange(len(self.items))
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            xs = np.empty((len(idx), self.spec.img_size, self.spec.img_size, 3), np.float32)
            ys = np.empty((len(idx), self.spec.num_cells, target_width(self.spec)), np.float32)
            for j, i in enumerate(idx):
                image, boxes = self.items[i]
                canvas, placed = prepare(
                    image,
                    boxes,
                    self.spec.img_size,
                    rng if self.augment else None,
                    self.aug if self.augment else None,
                )
                xs[j] = self.lut[canvas[..., ::-1]]  # BGR -> RGB, then the manifest's range
                ys[j] = encode(placed, self.spec, self.grid)
            yield xs, ys


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(
    dataset: Dataset,
    run: Path,
    cfg: TrainConfig,
    resume: bool = False,
    data_path: Optional[str] = None,
    data_format: Optional[str] = None,
    echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> Dict[str, Any]:
    """Train a detector on ``dataset`` into the run directory ``run`` (or, with ``resume``,
    continue the run there up to ``cfg.epochs``); the summary ``train_summary.json`` holds."""
    import tensorflow as tf

    cfg, spec, info, state = _open_run(dataset, run, cfg, resume, data_path, data_format, echo)
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    items, val_set = _prepare_data(dataset, spec, cfg, echo)
    fitter = _Fitter(spec, cfg, items, weights_file(run, "last") if resume else None)
    detector = float_detector(info, fitter.model, run)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    params = fitter.model.count_params()
    echo(f"model: {spec.backbone}, input {spec.img_size}, {params:,} parameters, on {device}")
    started = time.time()
    _fit(run, cfg, state, fitter, detector, val_set, started, echo)
    return _finish(run, fitter.model, state, started)


def _open_run(
    dataset: Dataset,
    run: Path,
    cfg: TrainConfig,
    resume: bool,
    data_path: Optional[str],
    data_format: Optional[str],
    echo: Callable[[str], None],
) -> Tuple[TrainConfig, ModelSpec, RunInfo, TrainState]:
    """The run directory with its run.json written: a new run, or (``resume``) the one there,
    whose settings win over ``cfg`` except for the number of epochs."""
    run.mkdir(parents=True, exist_ok=True)
    weights_file(run, "last").parent.mkdir(exist_ok=True)
    if resume:
        if not ((run / STATE_FILE).is_file() and weights_file(run, "last").is_file()):
            raise TrainerError(f"{run}: nothing to resume (no {STATE_FILE} and weights/last.weights.h5)")
        info = RunInfo.load(run)
        if info.data.get("sha256") != dataset.sha256():
            echo(f"warning: the dataset differs from the one {run} was trained on")
        cfg = TrainConfig(**{**info.config, "epochs": cfg.epochs})
        spec = info.model_spec
        state = TrainState.load(run)
    else:
        spec = ModelSpec(num_classes=len(dataset.classes), img_size=cfg.img_size, backbone=cfg.backbone)
        info = run_info(dataset, spec, cfg)
        state = TrainState()
    if data_path is not None:
        # Export and evaluate re-read the data: its absolute path and format go in run.json.
        info.data.update(path=str(Path(data_path).resolve()), format=data_format)
    info.save(run)
    return cfg, spec, info, state


def _prepare_data(
    dataset: Dataset, spec: ModelSpec, cfg: TrainConfig, echo: Callable[[str], None]
) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], Dataset]:
    """(the decoded training images, the validation set): the run's split of ``dataset``."""
    train_set, val_set = dataset.split(cfg.val_fraction, cfg.seed)
    if not train_set.samples or not val_set.samples:
        raise TrainerError(
            f"{dataset.source}: {len(dataset.samples)} images split into {len(train_set.samples)} train / "
            f"{len(val_set.samples)} val; need at least one of each"
        )
    echo(
        f"data: {len(train_set.samples)} train / {len(val_set.samples)} val images, "
        f"{len(dataset.classes)} classes ({', '.join(dataset.classes)})"
    )
    t0 = time.time()
    items = load_images(train_set.samples, spec.img_size)
    echo(f"loaded {len(items)} training images in {time.time() - t0:.1f}s")
    return items, val_set


class _Fitter:
    """The model (from ``weights`` when given), its optimizer with the learning-rate schedule
    (warm-up, then cosine) and the compiled training step, over augmented batches of ``items``."""

    def __init__(
        self,
        spec: ModelSpec,
        cfg: TrainConfig,
        items: List[Tuple[np.ndarray, np.ndarray]],
        weights: Optional[Path],
    ) -> None:
        import tensorflow as tf

        self.cfg = cfg
        self.model, _ = build(spec, pretrained=cfg.pretrained == "imagenet")
        if weights is not None:
            self.model.load_weights(weights)
        self.batches = Batches(items, spec, cfg.batch, augment=True)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        model = self.model
        optimizer = self.optimizer = tf.keras.optimizers.AdamW(
            learning_rate=cfg.lr, weight_decay=5e-4, global_clipnorm=10.0
        )
        loss_fn = make_loss(spec)

        @tf.function(reduce_retracing=True)
        def step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self.step = step

    def epoch(self, epoch: int) -> Tuple[float, float]:
        """Train epoch ``epoch`` (from 0); (its mean loss, the learning rate at its end)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        losses = []
        for i, (x, y) in enumerate(self.batches.epoch(rng)):
            n = epoch * self.steps_per_epoch + i
            self.optimizer.learning_rate.assign(_lr_at(n, self.total_steps, self.warmup, self.cfg.lr))
            losses.append(float(self.step(x, y)))
        return float(np.mean(losses)), float(self.optimizer.learning_rate.numpy())


def _fit(
    run: Path,
    cfg: TrainConfig,
    state: TrainState,
    fitter: _Fitter,
    detector: Detector,
    val_set: Dataset,
    started: float,
    echo: Callable[[str], None],
) -> None:
    """The epochs from ``state.epoch`` to ``cfg.epochs``, one line each: after every epoch the
    last weights and state.json; every ``eval_every`` epochs, at the end and when out of time,
    validation (which keeps the best weights). Stops early after ``patience`` epochs without a
    better mAP@0.5, or after ``max_minutes`` from ``started``."""
    since_best = 0  # epochs since the best val mAP, as of the last evaluation
    for epoch in range(state.epoch, cfg.epochs):
        e0 = time.time()
        loss, lr = fitter.epoch(epoch)
        line = f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} lr {lr:.2e} {time.time() - e0:.1f}s"
        fitter.model.save_weights(weights_file(run, "last"))
        record: Dict[str, float] = {"epoch": epoch + 1, "loss": round(loss, 5)}
        last = epoch + 1 == cfg.epochs
        out_of_time = cfg.max_minutes is not None and (time.time() - started) / 60 > cfg.max_minutes
        if (epoch + 1) % cfg.eval_every == 0 or last or out_of_time:
            line += _validate(run, state, epoch + 1, fitter.model, detector, val_set, record)
            since_best = epoch + 1 - state.best_epoch
        state.epoch = epoch + 1
        state.history.append(record)
        state.save(run)
        echo(line)
        if since_best >= cfg.patience:
            echo(f"early stop: no better val mAP@0.5 for {since_best} epochs")
            break
        if out_of_time:
            echo(f"stopping: --max-minutes {cfg.max_minutes} reached")
            break


def _validate(
    run: Path,
    state: TrainState,
    epoch: int,
    model: Any,
    detector: Detector,
    val_set: Dataset,
    record: Dict[str, float],
) -> str:
    """Measure the validation mAP after ``epoch`` (from 1) into ``record``; a better mAP@0.5
    than any before is the new best, its weights saved. The words for the epoch's line."""
    m = evaluate(detector, val_set)
    record.update(map50=round(m.map50, 4), map50_95=round(m.map50_95, 4))
    words = f" val mAP@0.5 {m.map50:.3f} mAP@.5:.95 {m.map50_95:.3f}"
    if m.map50 > state.best_map50:
        state.best_map50, state.best_epoch = m.map50, epoch
        model.save_weights(weights_file(run, "best"))
        words += " (best)"
    return words


def _finish(run: Path, model: Any, state: TrainState, started: float) -> Dict[str, Any]:
    """Best weights whatever happened (the last ones when no validation ran) and the summary,
    written to train_summary.json."""
    if not weights_file(run, "best").is_file():
        model.save_weights(weights_file(run, "best"))
    summary = {
        "run": str(run),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "best_map50": round(state.best_map50, 4),
        "minutes": round((time.time() - started) / 60, 2),
    }
    (run / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_model(run: Path, which: str = "best") -> Tuple[RunInfo, Any, Any]:
    """(run info, model, export model with a static batch of 1), with the run's ``which``
    weights. Both share the same layers, so they are the same network."""
    info = RunInfo.load(run)
    path = weights_file(run, which)
    if not path.is_file():
        raise TrainerError(f"{path}: missing; has `cloud-trainer train` finished an epoch in {run}?")
    model, export = build(info.model_spec, batch_size=1)
    model.load_weights(path)
    return info, model, export
