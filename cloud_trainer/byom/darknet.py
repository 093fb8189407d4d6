"""Darknet YOLO models (``yolov3-tiny.cfg`` + ``.weights``) packaged as they are, for OpenCV's
darknet reader (artifact runtime ``opencv``: file = the .weights, config = the .cfg; the opencv
backend hands the decoder the raw convolution outputs that feed darknet's heads). To convert one
for the other runtimes instead, ``cloud-trainer import-darknet`` makes a run to ``export``.

Given as ``--model X.cfg --weights Y.weights``, or either file alone with the other beside it
under the same name. Labels: ``--labels`` (darknet's ``.names``), one per class of the cfg.

Read from the cfg (cloud_trainer.darknet.cfg, darknet's own reading): the input size
(``[net]`` width, height), the heads and with them the decoder, ``yolov2`` for a ``[region]``
layer (anchors in grid cells) or ``yolov3`` for ``[yolo]`` layers (anchors in input pixels, each
layer's mask, ordered the way the decoder pairs them with outputs: by grid size, smallest
first), classes, and ``letter_box``. The weights file is checked against the cfg (its header and
its size: exactly the parameters the cfg's convolutions need).
Darknet's own conventions, said in the notes: RGB scaled to [0, 1]; the image stretched to the
input (AlexeyAB's darknet and OpenCV's samples), or letterboxed with darknet's grey (0.5) where
``[net] letter_box=1`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..darknet.cfg import DarknetError, Network, Region, Yolo, parse_network
from ..darknet.run import decoder_spec
from ..darknet.weights import expected_size, read_header
from ..errors import PackageError
from .base import ArtifactFiles, Inferred, ModelFiles
from .common import check_decoder, given_labels, input_section

DARKNET_GREY = 127  # darknet's letterbox fills with 0.5


class DarknetKind:
    name = "darknet"

    def claims(self, files: ModelFiles) -> bool:
        return files.model.is_file() and files.model.suffix.lower() in (".cfg", ".weights")

    def inspect(self, files: ModelFiles) -> Inferred:
        cfg, weights = _files(files)
        try:
            net = parse_network(cfg)
        except DarknetError as e:
            raise PackageError(str(e)) from e
        _check_weights(weights, net)
        notes = [f"artifact: opencv {weights.name} with its cfg {cfg.name} (OpenCV's darknet reader)"]
        decoder, classes = _decoder(net, notes)
        check_decoder(files, decoder["type"], f"darknet [{net.heads[0].kind}] layers")
        labels, source = given_labels(files, "no labels: a darknet model carries none")
        if len(labels) != classes:
            raise PackageError(
                f"{source}: {len(labels)} labels, but {cfg.name} has classes={classes} "
                f"({net.heads[0].where}); give its .names file"
            )
        notes.append(f"labels: {len(labels)} from {source}")
        notes.append(f"input: {net.width}x{net.height} from {cfg.name} [net] width, height")
        notes.append("range [0, 1], color rgb: darknet's own (RGB pixels / 255)")
        if net.letterbox:
            resize, pad = "letterbox", DARKNET_GREY
            notes.append(f"resize letterbox, pad {pad}: {cfg.name} [net] letter_box=1 (darknet's grey 0.5)")
        else:
            resize, pad = "stretch", 114
            notes.append(
                "resize stretch: darknet's default (no [net] letter_box=1), as OpenCV's samples run it"
            )
        return Inferred(
            kind=self.name,
            labels=labels,
            input=input_section(net.width, net.height, "rgb", resize, [0.0, 1.0], pad),
            decoder=decoder,
            artifacts=[ArtifactFiles("opencv", "fp32", weights, config=cfg)],
            notes=notes,
            name=cfg.stem,
        )


KIND = DarknetKind()


def _files(files: ModelFiles) -> Tuple[Path, Path]:
    """(cfg, weights)."""
    model = files.model
    if model.suffix.lower() == ".cfg":
        weights = files.weights or model.with_suffix(".weights")
        if not weights.is_file():
            raise PackageError(
                f"{model}: its weights {weights} are missing; give --weights FILE (the .weights)"
            )
        return model, weights
    if files.weights is not None:
        raise PackageError(
            f"{model}: give the cfg as --model X.cfg and the weights as --weights {model.name}"
        )
    cfg = model.with_suffix(".cfg")
    if not cfg.is_file():
        raise PackageError(f"{model}: its cfg {cfg} is missing; give --model X.cfg --weights {model.name}")
    return cfg, model


def _check_weights(weights: Path, net: Network) -> None:
    """The header reads and the file holds exactly the parameters of the cfg's convolutions
    (OpenCV would read a longer file of another cfg without a word)."""
    try:
        with weights.open("rb") as f:
            head = f.read(20)
        size = weights.stat().st_size
        header = read_header(weights, head)
    except OSError as e:
        raise PackageError(f"{weights}: cannot read it: {e.strerror or e}") from e
    except DarknetError as e:
        raise PackageError(str(e)) from e
    expected = expected_size(net, header)
    if size != expected:
        raise PackageError(
            f"{weights}: {size:,} bytes, but {net.path.name} needs {expected:,} (a {header.size}-byte "
            f"header, then the float32 parameters of {len(net.convs)} convolutional layers): "
            "the weights of another cfg?"
        )


def _decoder(net: Network, notes: List[str]) -> Tuple[Dict[str, Any], int]:
    """(the manifest's decoder, classes) for the cfg's heads (parse_network has checked them)."""
    head = net.heads[0]
    if isinstance(head, Region):
        notes.append(
            f"decoder yolov2: [region] at {head.where}, {len(head.anchors)} anchors (grid cells), "
            f"{head.shape[0]}x{head.shape[1]} grid"
        )
        return decoder_spec(net), head.classes
    yolos = [h for h in net.heads if isinstance(h, Yolo)]
    if any(y.anchors != yolos[0].anchors for y in yolos):
        raise PackageError(
            f"{yolos[0].where}: the [yolo] layers list different anchors; the decoder takes one list"
        )
    by_grid = sorted(yolos, key=lambda y: y.shape[0] * y.shape[1])
    grids = ", ".join(f"{y.shape[0]}x{y.shape[1]} mask {list(y.mask)}" for y in by_grid)
    notes.append(f"decoder yolov3: {len(yolos)} [yolo] layers ({grids}), anchors in input pixels")
    return decoder_spec(net), yolos[0].classes  # the one reading of heads, shared with import-darknet
