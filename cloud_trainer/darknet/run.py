"""``import-darknet``: a darknet model as a run directory that ``export`` and ``evaluate`` take
like a trained one.

    RUN/run.json              spec {"kind": "darknet", cfg, weights, header, ...}, labels, input,
                              decoder, and the dataset when --data gave one
    RUN/darknet/model.cfg      copies of the cfg and weights: the model is rebuilt from them
    RUN/darknet/model.weights  whenever the run is loaded (one set of weights: best = last)

The manifest it leads to (SPEC §2): input RGB in [0, 1] at the cfg's width x height, resized by
stretching as darknet does (AlexeyAB's darknet and OpenCV resize without letterbox unless the
[net] section says ``letter_box=1``; then ``letterbox`` with darknet's grey 0.5, pad value 127);
decoder ``yolov2`` with the region layer's anchors (grid cells), or ``yolov3`` with the yolo
layers' anchors (input pixels) and their masks, the coarsest grid first as the decoder pairs them.

A dataset (``--data``) with the model's labels is what the exports calibrate int8 on and what
``export`` and ``evaluate`` measure mAP on: all of it (no training split, nothing was trained on
it). Without one, ``export --formats openvino,onnx --no-evaluate`` still works, and ``evaluate
RUN --data DATA`` measures on any dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..byom.labels import read_labels
from ..data import load_dataset
from ..train import RUN_FILE, RunInfo, float_detector
from .cfg import DarknetError, Network, Region, Yolo, parse_network
from .weights import Header, read_weights

KIND = "darknet"
FILES = "darknet"  # RUN/darknet/: the cfg and weights
LETTERBOX_PAD = 127  # darknet fills with 0.5


def is_imported(info: RunInfo) -> bool:
    return info.spec.get("kind") == KIND


def input_spec(net: Network) -> Dict[str, Any]:
    return {
        "width": net.width,
        "height": net.height,
        "color": "rgb",
        "resize": "letterbox" if net.letterbox else "stretch",
        "pad_value": LETTERBOX_PAD,
        "range": [0.0, 1.0],
    }


def decoder_spec(net: Network) -> Dict[str, Any]:
    heads = net.heads
    if isinstance(heads[0], Region):
        return {"type": "yolov2", "params": {"anchors": [list(a) for a in heads[0].anchors]}}
    yolos = sorted((h for h in heads if isinstance(h, Yolo)), key=lambda y: y.shape[0] * y.shape[1])
    if len({y.anchors for y in yolos}) == 1:
        anchors = [list(a) for a in yolos[0].anchors]
        masks = [list(y.mask) for y in yolos]
    else:  # each layer its own list: one list of the anchors in use, each layer's in turn
        anchors = [list(y.anchors[m]) for y in yolos for m in y.mask]
        starts = [sum(len(p.mask) for p in yolos[:i]) for i in range(len(yolos))]
        masks = [list(range(s, s + len(y.mask))) for s, y in zip(starts, yolos)]
    return {"type": "yolov3", "params": {"anchors": anchors, "masks": masks}}


def _labels(names: Path, net: Network) -> List[str]:
    labels = read_labels(names)
    head = net.heads[0]
    if len(labels) != head.classes:
        raise DarknetError(
            f"{names}: {len(labels)} labels, but {head.where}: [{head.kind}] classes={head.classes}"
        )
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise DarknetError(f"{names}: labels must be unique, repeated: {', '.join(dup)}")
    return labels


def _dataset(data: str, fmt: Optional[str], labels: List[str]) -> Dict[str, Any]:
    ds = load_dataset(data, fmt)
    if ds.classes != labels:
        raise DarknetError(
            f"{data}: its classes {ds.classes} are not the model's labels {labels} (in that order)"
        )
    return {
        "source": ds.source,
        "images": len(ds.samples),
        "sha256": ds.sha256(),
        "path": str(Path(data).resolve()),
        "format": fmt,
    }


def load(run: Path, info: Optional[RunInfo] = None) -> Tuple[RunInfo, Any, Any]:
    """(run info, model, export model) of an imported run: the same Keras model twice."""
    from .keras_model import build_model

    info = info or RunInfo.load(run)
    net = parse_network(run / info.spec["cfg"])
    _, params = read_weights(run / info.spec["weights"], net)
    model = build_model(net, params)
    return info, model, model


def import_darknet(
    cfg: Path,
    weights: Path,
    names: Path,
    out: Path,
    data: Optional[str] = None,
    fmt: Optional[str] = None,
) -> Dict[str, Any]:
    """Check and convert ``cfg`` + ``weights``, then write the run directory ``out`` (which
    must not hold a run yet). Returns a summary for the command to print."""
    from .keras_model import build_model

    net = parse_network(cfg)
    header, params = read_weights(weights, net)
    labels = _labels(names, net)
    if (out / RUN_FILE).exists():
        raise DarknetError(f"{out}: already holds a run ({RUN_FILE}); choose a new --out")
    info = RunInfo(
        spec=_spec(cfg, weights, net, header),
        classes=labels,
        input=input_spec(net),
        decoder=decoder_spec(net),
        config={"val_fraction": 1.0, "seed": 0},
        data=_dataset(data, fmt, labels) if data is not None else {},
    )
    model = build_model(net, params)
    # The agent's own pre-processing and decoder on the float model: output shapes checked.
    float_detector(info, model, out).warm()
    try:
        (out / FILES).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg, out / info.spec["cfg"])
        shutil.copyfile(weights, out / info.spec["weights"])
        info.save(out)  # last: a run.json means a complete run
    except OSError as e:
        raise DarknetError(f"{out}: cannot write the run: {e.strerror or e}") from e
    return {
        "run": str(out),
        "layers": len(net.layers),
        "parameters": sum(int(p.kernel.size + p.bias.size) for p in params.values()),
        "input": f"{net.width}x{net.height} {info.input['resize']}",
        "decoder": info.decoder,
        "labels": len(labels),
        "weights_header": header.as_dict(),
        "data": info.data.get("source"),
    }


def _spec(cfg: Path, weights: Path, net: Network, header: Header) -> Dict[str, Any]:
    return {
        "kind": KIND,
        "cfg": f"{FILES}/model.cfg",
        "weights": f"{FILES}/model.weights",
        "source": {"cfg": str(cfg.resolve()), "weights": str(weights.resolve())},
        "header": header.as_dict(),
        "layers": len(net.layers),
    }
