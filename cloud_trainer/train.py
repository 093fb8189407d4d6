"""Training: augmentation, progress, checkpoints, resume, early stopping; CPU or GPU.

A run directory holds everything about one training:

    RUN/run.json                  model spec, classes, input, decoder, training settings, data
    RUN/weights/last.weights.h5   after every epoch (resume starts from here)
    RUN/weights/best.weights.h5   the best validation mAP@0.5 so far
    RUN/state.json                epoch, best mAP, history

A run may start from an earlier model (``InitModel``, ``train --init``) instead of from nothing.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edge_agent.bundle import MANIFEST, load_bundle
from edge_agent.bundle.manifest import DecoderSpec, Defaults, InputSpec, Manifest
from edge_agent.detector import Detector

from .augment import PAD, Augment, prepare
from .data.dataset import Dataset, Sample
from .errors import DatasetError, TrainerError
from .evaluate import evaluate
from .keras_backend import KerasBackend
from .model import BACKBONES, ModelSpec, build, cell_grid, transfer_weights
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
    init: Optional[str] = None  # the run or bundle the weights started from (train --init)


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
    init: Optional[InitModel] = None,
) -> Dict[str, Any]:
    """Train a detector on ``dataset`` into the run directory ``run`` (or, with ``resume``,
    continue the run there up to ``cfg.epochs``; with ``init``, start a new run from that
    model's weights); the summary ``train_summary.json`` holds."""
    import tensorflow as tf

    start = None
    if init is not None:  # every refusal before the run directory is touched
        init.check_target(run, resume, cfg)
        start = init.load(echo)
    cfg, spec, info, state = _open_run(dataset, run, cfg, resume, data_path, data_format, echo, init)
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    items, val_set = _prepare_data(dataset, spec, cfg, echo)
    fitter = _Fitter(spec, cfg, items, weights_file(run, "last") if resume else None)
    if init is not None:
        echo(init.copy_into(start, fitter.model, dataset.classes))
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
    init: Optional[InitModel] = None,
) -> Tuple[TrainConfig, ModelSpec, RunInfo, TrainState]:
    """The run directory with its run.json written: a new run (from ``init``'s architecture when
    given), or (``resume``) the one there, whose settings win over ``cfg`` except for the
    number of epochs."""
    if init is not None:
        cfg = replace(cfg, init=str(init.where))
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
        if init is not None:
            spec = replace(init.info.model_spec, num_classes=len(dataset.classes))
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


@dataclass(frozen=True)
class InitModel:
    """The earlier model a new run starts from (``train --init``): a run's weights, named directly
    or through a bundle exported from it. A bundle beside its run (``RUN/bundle``, where ``export``
    puts it) gives the run's weights, checked against its ONNX model where it has one; a bundle on
    its own gives the weights of its fp32 ONNX model, mapped back onto the trainer's Keras model
    (batch normalisation is folded into its convolutions: the BN layers start as the identity)."""

    where: Path  # the run or bundle the user named
    run: Optional[Path]  # None: a bundle on its own
    info: RunInfo
    bundle: Optional[Path] = None

    @classmethod
    def open(cls, path: Path) -> InitModel:
        """Find the run behind ``path`` and check it is a model this trainer can continue (no
        TensorFlow needed: the refusals come first)."""
        if (path / RUN_FILE).is_file():
            run, bundle = path, None
        elif (path / MANIFEST).is_file():
            found, bundle = _run_of_bundle(path), path
            if found is None:
                return cls(path.resolve(), None, _bundle_info(path), path)
            run = found
        else:
            raise TrainerError(
                f"{path}: neither a training run (no {RUN_FILE}) nor a bundle (no {MANIFEST}); "
                "--init takes either"
            )
        info = RunInfo.load(run)
        if info.spec.get("backbone") not in BACKBONES:  # e.g. a darknet model import-darknet made
            kind = info.spec.get("backbone") or info.spec.get("kind") or "unknown"
            raise TrainerError(
                f"{run / RUN_FILE}: a {kind!r} model; --init continues the detectors `train` makes "
                f"(backbones {', '.join(BACKBONES)})"
            )
        if not weights_file(run, "best").is_file() and not weights_file(run, "last").is_file():
            raise TrainerError(f"{run}: no weights yet; has `cloud-trainer train` finished an epoch there?")
        return cls(path.resolve(), run, info, bundle)

    def settle(self, img_size: Optional[int], backbone: Optional[str]) -> Tuple[int, str]:
        """The input size and backbone of the new run: the earlier model's; one given that
        differs is refused."""
        spec = self.info.model_spec
        for option, given, own in (
            ("--img-size", img_size, spec.img_size),
            ("--backbone", backbone, spec.backbone),
        ):
            if given is not None and given != own:
                raise TrainerError(
                    f"{option} {given} differs from {own}, what {self.where} was trained with: --init "
                    f"continues a model at its own input size and architecture; leave {option} out"
                )
        return spec.img_size, spec.backbone

    def check_target(self, run: Path, resume: bool, cfg: TrainConfig) -> None:
        """Refuse what cannot go with --init: a resume, the same run as the target, ImageNet
        weights, another input size or architecture."""
        if resume:
            raise TrainerError(
                "--init starts a new run from another model; --resume continues the run in --out"
            )
        if run.resolve() == (self.run or self.where).resolve():
            raise TrainerError(f"{run}: --out is the --init run itself; give a new run directory")
        if cfg.pretrained is not None:
            raise TrainerError(
                f"--pretrained {cfg.pretrained} and --init both give the starting weights; choose one"
            )
        self.settle(cfg.img_size, cfg.backbone)

    def load(self, echo: Callable[[str], None]) -> Any:
        """The earlier model with its weights (saying which)."""
        if self.run is None:
            return self._from_onnx(echo)
        source, export = build(self.info.model_spec, batch_size=1)
        which, note = self._load_weights(source, export)
        echo(f"init: {weights_file(self.run, which)}{note}")
        return source

    def copy_into(self, source: Any, model: Any, classes: List[str]) -> str:
        """Copy the weights of ``source`` (from ``load``) into ``model`` (built for ``classes``):
        every layer, but for the class heads, where classes both have keep their weights
        (matched by name) and the others are initialised afresh. A line that says what was kept."""
        return f"init: {'; '.join(transfer_weights(source, model, self.info.classes, classes).lines())}"

    def _from_onnx(self, echo: Callable[[str], None]) -> Any:
        """The Keras model rebuilt from a bundle on its own: its fp32 ONNX model's weights."""
        from .init_from_bundle import MappingError, keras_from_onnx

        assert self.bundle is not None
        art = load_bundle(self.bundle, runtimes=["onnx"]).manifest.artifact_for("onnx")
        assert art is not None  # _bundle_info refused a bundle without one
        path = self.bundle / art.file
        try:
            source, _, diff = keras_from_onnx(path, self.info.model_spec)
        except MappingError as e:
            raise TrainerError(f"{path}: its layers do not map onto the trainer's model ({e})") from e
        except ImportError as e:
            raise TrainerError(f"{path}: --init from a bundle needs onnx and onnxruntime ({e})") from e
        except Exception as e:  # onnx and onnxruntime errors (DecodeError, Fail...) derive from it
            raise TrainerError(f"{path}: cannot read it as an ONNX model: {e}") from e
        echo(
            f"init: weights from {path} (batch norm folded: BN layers start as identity, the folded "
            f"shift as their beta; outputs agree within {diff:.1g})"
        )
        return source

    def _load_weights(self, source: Any, export: Any) -> Tuple[str, str]:
        """Load the run's best weights (its last when it has no best) into ``source``; for a
        bundle, the ones its ONNX model was exported from. (which, a note for the user)."""
        assert self.run is not None
        candidates = [w for w in ("best", "last") if weights_file(self.run, w).is_file()]
        reference = self._onnx_output() if self.bundle is not None else None
        if reference is None:
            source.load_weights(weights_file(self.run, candidates[0]))
            note = (
                ""
                if self.bundle is None
                else " (not checked against the bundle: no fp32 onnx artifact or onnxruntime)"
            )
            return candidates[0], note
        x, expected = reference
        for which in candidates:
            source.load_weights(weights_file(self.run, which))
            if float(np.abs(np.asarray(export(x)) - expected).max()) < 1e-3:
                return which, f" (the weights of {self.bundle}: its model.onnx gives the same outputs)"
        raise TrainerError(
            f"{self.bundle}: the weights in {self.run} are no longer those the bundle was exported from "
            f"(trained further since?); --init {self.run} starts from the run's current weights"
        )

    def _onnx_output(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(an input, the bundle's fp32 ONNX model's output for it), or None where the bundle has
        no such model or onnxruntime is not installed."""
        assert self.bundle is not None
        bundle = load_bundle(self.bundle, runtimes=["onnx"])  # its file checked against the manifest
        art = bundle.manifest.artifact_for("onnx")
        if art is None or art.precision != "fp32":
            return None
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        spec = self.info.model_spec
        lo, hi = spec.input_range
        x = np.random.default_rng(0).uniform(lo, hi, (1, spec.img_size, spec.img_size, 3)).astype(np.float32)
        path = self.bundle / art.file
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            first = session.get_inputs()[0]
            feed = x.transpose(0, 3, 1, 2) if first.shape[1] == 3 else x  # the trainer's ONNX is NCHW
            return x, np.asarray(session.run(None, {first.name: feed})[0])
        except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail...) derive from Exception
            raise TrainerError(f"{path}: onnxruntime cannot run it: {e}") from e


def _run_of_bundle(bundle: Path) -> Optional[Path]:
    """The run a bundle was exported from where it is beside it, as ``export`` leaves it
    (RUN/bundle); None for a bundle on its own. A bundle this trainer did not make is refused."""
    source = load_bundle(bundle, verify=False).manifest.source
    if not str(source.get("producer") or "").startswith("cloud_trainer"):
        raise TrainerError(
            f"{bundle / MANIFEST}: not exported by cloud-trainer (its source.producer is "
            f"{source.get('producer')!r}); --init continues the models this trainer made; without --init, "
            "training starts from scratch"
        )
    name, model = source.get("run"), source.get("model")
    run = bundle.resolve().parent
    if name and model and (run / RUN_FILE).is_file() and RunInfo.load(run).spec == model:
        return run
    return None


def _bundle_info(bundle: Path) -> RunInfo:
    """What a bundle on its own says of its model, as its run's run.json would: the input size
    and classes from the manifest, the backbone from its ``source.model`` or, where that does not
    name one, from the shapes of its ONNX model's convolutions."""
    manifest = load_bundle(bundle, runtimes=["onnx"]).manifest  # its onnx file checked against it
    art = manifest.artifact_for("onnx")
    if art is None or art.precision != "fp32":
        raise TrainerError(
            f"{bundle}: no fp32 onnx artifact to take the weights from (a bundle away from its run gives "
            "them through its model.onnx); export the run with --formats onnx, or pass the run itself"
        )
    size, decoder = manifest.input.width, manifest.decoder.type
    model = dict(manifest.source.get("model") or {})
    kind = model.get("backbone") or model.get("kind")
    if (model and kind not in BACKBONES) or decoder != "yolov8" or manifest.input.height != size:
        raise TrainerError(
            f"{bundle / MANIFEST}: a {kind or decoder!r} model, input {size}x{manifest.input.height}; --init "
            f"continues the detectors `train` makes (backbones {', '.join(BACKBONES)})"
        )
    spec = ModelSpec(len(manifest.labels), size, str(kind or BACKBONES[0]), int(model.get("width", 64)))
    if kind is None:
        spec = _infer_backbone(bundle / art.file, spec)
    return RunInfo(
        spec=asdict(spec),
        classes=list(manifest.labels),
        input=manifest.input.model_dump(),
        decoder=manifest.decoder.model_dump(),
        config={},
    )


def _infer_backbone(path: Path, spec: ModelSpec) -> ModelSpec:
    """``spec`` with the backbone whose convolutions have the shapes of the ONNX model's."""
    from .init_from_bundle import infer_backbone

    try:
        found = infer_backbone(path, [replace(spec, backbone=b) for b in BACKBONES])
    except Exception as e:  # onnx's parse errors (DecodeError...) derive from Exception
        raise TrainerError(f"{path}: cannot read it as an ONNX model: {e}") from e
    if found is None:
        raise TrainerError(
            f"{path}: its layers do not map onto the trainer's model (its manifest names no backbone, and "
            f"no backbone of {', '.join(BACKBONES)} at input {spec.img_size} has its convolutions' shapes)"
        )
    return found
