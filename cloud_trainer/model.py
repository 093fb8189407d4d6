"""The detector the trainer makes: small, single-stage, anchor-free, and built only from
operations all three accelerators run — Conv2D, DepthwiseConv2D, ReLU6, Add, Concatenate,
Reshape, Logistic (sigmoid), and nearest upsampling made of Concatenate + Reshape — so the
EdgeTPU compiler maps the whole graph and OpenVINO's MYRIAD plugin takes every layer.

Three heads (strides 8, 16 and 32) over a small feature pyramid: the stride-32 head sees
enough of a large object to tell a circle from a square. Every cell predicts class scores
and a box; the box is decoded inside the graph to normalised (cx, cy, w, h), so every output
value lies in 0..1 and one int8 scale fits boxes and scores alike. The exported model ends in
``[1, 4 + C, N]``: the ``yolov8`` decoder with ``boxes: normalized`` (SPEC §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

import numpy as np

STRIDES = (8, 16, 32)
BACKBONES = ("tiny", "mobilenetv2")


@dataclass(frozen=True)
class ModelSpec:
    num_classes: int
    img_size: int = 320
    backbone: str = "tiny"
    width: int = 64  # channels in the neck and heads

    @property
    def grids(self) -> List[int]:
        return [self.img_size // s for s in STRIDES]

    @property
    def num_cells(self) -> int:
        return sum(g * g for g in self.grids)

    @property
    def input_range(self) -> Tuple[float, float]:
        """What pixel values 0..255 map to (the manifest's ``input.range``)."""
        return (-1.0, 1.0) if self.backbone == "mobilenetv2" else (0.0, 1.0)


def cell_grid(spec: ModelSpec) -> np.ndarray:
    """[N, 3]: (column, row, grid size) of every output cell, in output order."""
    rows = []
    for g in spec.grids:
        r, c = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        rows.append(np.stack([c.ravel(), r.ravel(), np.full(g * g, g)], -1))
    return np.concatenate(rows).astype(np.float32)


def _layers() -> Any:
    import keras

    return keras.layers


def _conv(x: Any, filters: int, kernel: int = 1, stride: int = 1, name: str = "") -> Any:
    L = _layers()
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(momentum=0.97, name=f"{name}_bn")(x)
    return L.ReLU(6.0, name=f"{name}_relu6")(x)


def _dw_block(x: Any, filters: int, stride: int = 1, name: str = "") -> Any:
    """Depthwise 3x3 + pointwise 1x1 (MobileNet's separable block), residual when shapes allow."""
    L = _layers()
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    y = L.BatchNormalization(momentum=0.97, name=f"{name}_dw_bn")(y)
    y = L.ReLU(6.0, name=f"{name}_dw_relu6")(y)
    y = _conv(y, filters, name=f"{name}_pw")
    if stride == 1 and x.shape[-1] == filters:
        y = L.Add(name=f"{name}_add")([x, y])
    return y


def _tiny_backbone(inp: Any) -> Tuple[Any, Any, Any]:
    x = _conv(inp, 16, 3, 2, name="stem")  # /2
    x = _dw_block(x, 32, 2, name="b1")  # /4
    x = _dw_block(x, 32, name="b1r")
    x = _dw_block(x, 64, 2, name="b2")  # /8
    c3 = _dw_block(x, 64, name="b2r")
    x = _dw_block(c3, 96, 2, name="b3")  # /16
    x = _dw_block(x, 96, name="b3r")
    c4 = _dw_block(x, 96, name="b3r2")
    x = _dw_block(c4, 128, 2, name="b4")  # /32
    c5 = _dw_block(x, 128, name="b4r")
    return c3, c4, c5


def _mobilenet_backbone(inp: Any, pretrained: bool) -> Tuple[Any, Any, Any]:
    import keras

    base = keras.applications.MobileNetV2(
        input_tensor=inp,
        include_top=False,
        alpha=0.35,
        # The real ImageNet weights, fetched by Keras on first use and cached in ~/.keras.
        weights="imagenet" if pretrained else None,
    )
    names = ("block_6_expand_relu", "block_13_expand_relu", "out_relu")
    c3, c4, c5 = (base.get_layer(n).output for n in names)
    return c3, c4, c5


def _upsample(x: Any, name: str) -> Any:
    """Exact nearest-neighbour 2x upsampling from Concatenate and Reshape alone.

    Keras 3's UpSampling2D lowers to Tile + a 5-D Reshape (the EdgeTPU refuses it), and a
    resize op becomes ONNX Resize -> OpenVINO Interpolate-11, which OpenVINO 2022.3 (the NCS2's
    last release) cannot read. Duplicating channels then folding them into width, and the same
    for rows, is the same result with ops every runtime has had for years."""
    L = _layers()
    h, w, c = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    y = L.Concatenate(axis=-1, name=f"{name}_dup_w")([x, x])  # [B, h, w, 2c]
    y = L.Reshape((h, 2 * w, c), name=f"{name}_fold_w")(y)  # each pixel twice along the row
    y = L.Concatenate(axis=2, name=f"{name}_dup_h")([y, y])  # [B, h, 4w, c]: each row twice
    return L.Reshape((2 * h, 2 * w, c), name=f"{name}_fold_h")(y)


def build(spec: ModelSpec, pretrained: bool = False, batch_size: Any = None) -> Tuple[Any, Any]:
    """(training model with output [B, N, 4+C], export model with output [B, 4+C, N]).

    Export with ``batch_size=1``: a static shape everywhere is what the EdgeTPU compiler and
    OpenVINO's MYRIAD plugin need."""
    import keras

    L = _layers()
    if spec.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {spec.backbone!r}; choose from {', '.join(BACKBONES)}")
    if spec.img_size % 32:
        raise ValueError(f"img_size {spec.img_size} must be a multiple of 32")
    if pretrained and spec.backbone != "mobilenetv2":
        raise ValueError("--pretrained imagenet needs --backbone mobilenetv2")
    inp = keras.Input((spec.img_size, spec.img_size, 3), batch_size=batch_size, name="images")
    if spec.backbone == "tiny":
        c3, c4, c5 = _tiny_backbone(inp)
    else:
        c3, c4, c5 = _mobilenet_backbone(inp, pretrained)
    w = spec.width
    p5 = _conv(c5, w, name="lat5")
    p4 = L.Add(name="fpn4_sum")([_conv(c4, w, name="lat4"), _upsample(p5, "up5")])
    p4 = _dw_block(p4, w, name="fpn4")
    p3 = L.Add(name="fpn3_sum")([_conv(c3, w, name="lat3"), _upsample(p4, "up4")])
    p3 = _dw_block(p3, w, name="fpn3")

    outputs = []
    heads = ((p3, spec.grids[0], "s8"), (p4, spec.grids[1], "s16"), (p5, spec.grids[2], "s32"))
    for feat, grid, tag in heads:
        f = _dw_block(feat, w, name=f"head_{tag}")
        f = _dw_block(f, w, name=f"head_{tag}b")
        # Separate box and class convolutions: confident class logits span a wider range than
        # box logits, and one shared int8 tensor would coarsen the boxes to the classes' scale.
        box = L.Activation("sigmoid", name=f"box_{tag}")(L.Conv2D(4, 1, name=f"box_{tag}_conv")(f))
        prior = float(-np.log((1 - 0.01) / 0.01))  # start every class at p=0.01 (focal-loss init)
        cls_conv = L.Conv2D(
            spec.num_classes, 1, name=f"cls_{tag}_conv", bias_initializer=keras.initializers.Constant(prior)
        )
        cls = L.Activation("sigmoid", name=f"cls_{tag}")(cls_conv(f))
        r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        offsets = np.stack([c, r], -1)[None].astype(np.float32) / grid
        # centre = (cell + sigmoid * 2 - 0.5) / grid lets a cell reach half a cell beyond its
        # edges; size = sigmoid: both stay in 0..1 after the Mul/Add.
        xy = L.Lambda(lambda t, o=offsets, g=grid: t[..., :2] * (2.0 / g) + (o - 0.5 / g), name=f"xy_{tag}")(
            box
        )
        wh = L.Lambda(lambda t: t[..., 2:4], name=f"wh_{tag}")(box)
        out = L.Concatenate(name=f"out_{tag}")([xy, wh, cls])
        outputs.append(L.Reshape((grid * grid, 4 + spec.num_classes), name=f"cells_{tag}")(out))
    cells = L.Concatenate(axis=1, name="cells")(outputs)
    train_model = keras.Model(inp, cells, name="edgewatch_detector")
    export_model = keras.Model(
        inp, L.Permute((2, 1), name="output0")(cells), name="edgewatch_detector_export"
    )
    return train_model, export_model


def is_class_layer(name: str) -> bool:
    """The layers with one output channel per class: the class convolution of each head."""
    return name.startswith("cls_") and name.endswith("_conv")


@dataclass
class Transfer:
    """What ``transfer_weights`` did."""

    copied: int = 0  # layers copied whole
    kept: List[str] = field(default_factory=list)  # classes whose head weights were copied
    new: List[str] = field(default_factory=list)  # classes the source lacks: heads as initialised
    dropped: List[str] = field(default_factory=list)  # source classes the target lacks
    fresh: List[str] = field(default_factory=list)  # layers with no counterpart of the same shape

    def lines(self) -> List[str]:
        out = [f"{self.copied} layers copied"]
        if self.new or self.dropped or self.fresh:
            out.append(f"class heads: kept {', '.join(self.kept) or 'no class'}")
            if self.new:
                out.append(f"re-initialised for {', '.join(self.new)}")
            if self.dropped:
                out.append(f"dropped {', '.join(self.dropped)}")
        else:
            out.append(f"class heads kept whole ({', '.join(self.kept)})")
        if self.fresh:
            out.append(f"left as initialised (no layer of that shape to copy): {', '.join(self.fresh)}")
        return out


def transfer_weights(
    source: Any, target: Any, source_classes: Sequence[str], target_classes: Sequence[str]
) -> Transfer:
    """Copy ``source``'s weights into ``target`` layer by layer (by name, where the shapes
    match). The class convolutions are copied per class, by name: a class both models have
    keeps its weights (in the target's order), one only the target has keeps its fresh
    initialisation (the focal-loss prior)."""
    by_name = {layer.name: layer for layer in source.layers}
    t = Transfer(
        kept=[c for c in target_classes if c in source_classes],
        new=[c for c in target_classes if c not in source_classes],
        dropped=[c for c in source_classes if c not in target_classes],
    )
    for layer in target.layers:
        weights = layer.get_weights()
        src = by_name.get(layer.name)
        if not weights:
            continue
        old = src.get_weights() if src is not None else []
        if (
            is_class_layer(layer.name)
            and len(old) == len(weights) == 2
            and old[0].shape[:-1] == weights[0].shape[:-1]
        ):
            for j, name in enumerate(target_classes):
                if name in source_classes:
                    i = list(source_classes).index(name)
                    weights[0][..., j], weights[1][j] = old[0][..., i], old[1][i]
            layer.set_weights(weights)
        elif [w.shape for w in old] == [w.shape for w in weights]:
            layer.set_weights(old)
            t.copied += 1
        else:
            t.fresh.append(layer.name)
    return t
