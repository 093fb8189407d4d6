"""Darknet ``.cfg`` files, read the way darknet reads them, and the network they describe.

Reading (darknet's ``read_cfg``): every whitespace character of a line is dropped; a line that
then starts with ``[`` opens a section, one that is empty or starts with ``#`` or ``;`` is
skipped, and any other line must be ``key=value``. Where a key repeats in a section the first one
counts (darknet's ``option_find``). The first section is ``[net]`` (or ``[network]``); the layers
follow, numbered from 0, and a negative layer reference counts back from the layer that makes it.

:func:`parse_network` checks every layer against what the converter builds and computes each
layer's output shape ``(height, width, channels)`` as darknet does. Options darknet uses only to
train are ignored; an option that changes what a layer computes and that is not implemented
here is an error naming ``file:line``. Defaults are darknet's (AlexeyAB's and pjreddie's agree on
all of these), for example ``activation`` of a ``[convolutional]`` layer defaults to logistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import TrainerError

Shape = Tuple[int, int, int]  # height, width, channels

ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "mish", "swish")
LAYER_TYPES = (
    "convolutional",
    "maxpool",
    "route",
    "reorg",
    "upsample",
    "shortcut",
    "dropout",
    "region",
    "yolo",
)
ALIASES = {"conv": "convolutional", "max": "maxpool", "network": "net"}


class DarknetError(TrainerError):
    """A darknet model cannot be converted: the message names the file (and line) and says
    what is wrong."""


@dataclass
class Section:
    """One ``[type]`` of a cfg with its options, each with the line it was on."""

    type: str
    path: Path
    line: int
    options: Dict[str, Tuple[str, int]] = field(default_factory=dict)

    def where(self, key: Optional[str] = None) -> str:
        line = self.options[key][1] if key is not None and key in self.options else self.line
        return f"{self.path}:{line}"

    def error(self, message: str, key: Optional[str] = None) -> DarknetError:
        return DarknetError(f"{self.where(key)}: [{self.type}] {message}")

    def text(self, key: str, default: Optional[str] = None) -> str:
        if key in self.options:
            return self.options[key][0]
        if default is None:
            raise self.error(f"needs {key}=")
        return default

    def number(self, key: str, default: Optional[float] = None) -> float:
        if key not in self.options:
            if default is None:
                raise self.error(f"needs {key}=")
            return default
        try:
            return float(self.options[key][0])
        except ValueError as e:
            raise self.error(f"{key}={self.options[key][0]}: not a number", key) from e

    def integer(self, key: str, default: Optional[int] = None) -> int:
        value = self.number(key, None if default is None else float(default))
        if value != int(value):
            raise self.error(f"{key}={self.options[key][0]}: not an integer", key)
        return int(value)

    def numbers(self, key: str) -> List[float]:
        try:
            return [float(v) for v in self.text(key).split(",") if v != ""]
        except ValueError as e:
            raise self.error(f"{key}={self.options[key][0]}: not a list of numbers", key) from e

    def integers(self, key: str) -> List[int]:
        values = self.numbers(key)
        if any(v != int(v) for v in values):
            raise self.error(f"{key}={self.options[key][0]}: not a list of integers", key)
        return [int(v) for v in values]

    def refuse(self, key: str, allowed: Sequence[str], why: str) -> None:
        """An option this converter does not implement: an error unless absent or one of
        ``allowed`` (its neutral values)."""
        if key in self.options and self.options[key][0] not in allowed:
            raise self.error(f"{key}={self.options[key][0]}: not supported ({why})", key)


def read_sections(path: Path) -> List[Section]:
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise DarknetError(f"{path}: cannot read the cfg: {e.strerror or e}") from e
    sections: List[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DarknetError(f"{path}:{number}: {raw.strip()!r} is not a [section] header")
            kind = line[1:-1].lower()
            sections.append(Section(ALIASES.get(kind, kind), path, number))
            continue
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise DarknetError(f"{path}:{number}: {raw.strip()!r} is neither [section] nor key=value")
        if not sections:
            raise DarknetError(f"{path}:{number}: {key}= before the first [section]")
        sections[-1].options.setdefault(key, (value, number))
    if not sections or sections[0].type != "net":
        where = f"{path}:{sections[0].line}" if sections else str(path)
        raise DarknetError(f"{where}: a darknet cfg starts with [net]")
    return sections


# ---- the layers, as the converter builds them ---------------------------------------------------


@dataclass(frozen=True)
class Layer:
    index: int  # darknet's layer number (0 = the first section after [net])
    kind: str
    path: Path
    line: int
    inputs: Tuple[int, ...]  # the layers it reads; -1 is the network's input
    shape: Shape  # its output

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Conv(Layer):
    filters: int
    size: int
    stride: int
    pad: int  # zeros on every side
    groups: int  # 1, or the input's channels (depthwise)
    batch_normalize: bool
    activation: str
    in_channels: int

    @property
    def weight_count(self) -> int:
        return self.filters * (self.in_channels // self.groups) * self.size * self.size

    @property
    def float_count(self) -> int:
        """Floats of this layer in a weights file: biases, [scales, means, variances], weights."""
        return self.filters * (4 if self.batch_normalize else 1) + self.weight_count


@dataclass(frozen=True)
class MaxPool(Layer):
    size: int
    stride: int
    padding: int  # total; darknet puts padding // 2 before, the rest after


@dataclass(frozen=True)
class Route(Layer):
    groups: int
    group_id: int


@dataclass(frozen=True)
class Reorg(Layer):
    stride: int


@dataclass(frozen=True)
class Upsample(Layer):
    stride: int


@dataclass(frozen=True)
class Shortcut(Layer):
    activation: str


@dataclass(frozen=True)
class Dropout(Layer):
    pass


@dataclass(frozen=True)
class Region(Layer):
    anchors: Tuple[Tuple[float, float], ...]  # grid cells
    classes: int


@dataclass(frozen=True)
class Yolo(Layer):
    anchors: Tuple[Tuple[float, float], ...]  # input pixels, all of them
    mask: Tuple[int, ...]
    classes: int


@dataclass
class Network:
    path: Path
    width: int
    height: int
    channels: int
    letterbox: bool  # [net] letter_box=1 (AlexeyAB): darknet letterboxes the image
    layers: List[Layer]

    @property
    def convs(self) -> List[Conv]:
        return [layer for layer in self.layers if isinstance(layer, Conv)]

    @property
    def heads(self) -> List[Union[Region, Yolo]]:
        """The region layer, or every yolo layer, in cfg order."""
        return [layer for layer in self.layers if isinstance(layer, (Region, Yolo))]

    def shape_of(self, index: int) -> Shape:
        return (self.height, self.width, self.channels) if index < 0 else self.layers[index].shape


def parse_network(path: Path) -> Network:
    sections = read_sections(path)
    net = sections[0]
    width, height = net.integer("width", 416), net.integer("height", 416)
    channels = net.integer("channels", 3)
    if width <= 0 or height <= 0:
        raise net.error(f"width={width} height={height}: both must be positive")
    if channels != 3:
        raise net.error(f"channels={channels}: only colour (3-channel) models are supported", "channels")
    if width != height:
        raise net.error(f"width={width} height={height}: only square inputs are supported (the exports are)")
    network = Network(path, width, height, channels, net.integer("letter_box", 0) == 1, [])
    if len(sections) == 1:
        raise DarknetError(f"{path}: no layers after [net]")
    for index, section in enumerate(sections[1:]):
        network.layers.append(_layer(network, index, section))
    _check_heads(network)
    return network


def _activation(s: Section, default: str) -> str:
    act = s.text("activation", default)
    if act not in ACTIVATIONS:
        raise s.error(f"activation={act}: not supported (supported: {', '.join(ACTIVATIONS)})", "activation")
    return act


def _reference(s: Section, index: int, ref: int, key: str) -> int:
    absolute = ref + index if ref < 0 else ref
    if not 0 <= absolute < index:
        raise s.error(f"{key}: layer {ref} is not an earlier layer (this is layer {index})", key)
    return absolute


def _layer(net: Network, index: int, s: Section) -> Layer:
    h, w, c = net.shape_of(index - 1)
    base: Dict[str, Any] = dict(index=index, kind=s.type, path=s.path, line=s.line)
    if s.type == "convolutional":
        for key, neutral in (("binary", "0"), ("xnor", "0"), ("flipped", "0"), ("dilation", "1")):
            s.refuse(key, (neutral,), "this converter implements plain convolutions")
        for key in (
            "antialiasing",
            "deform",
            "coordconv",
            "assisted_excitation",
            "sway",
            "rotate",
            "stretch",
        ):
            s.refuse(key, ("0",), "this converter implements plain convolutions")
        if "share_index" in s.options:
            raise s.error("share_index: shared weights are not supported", "share_index")
        size, stride, filters = s.integer("size", 1), s.integer("stride", 1), s.integer("filters", 1)
        for key in ("stride_x", "stride_y"):
            s.refuse(key, (str(stride),), "different horizontal and vertical strides")
        pad = size // 2 if s.integer("pad", 0) else s.integer("padding", 0)
        groups = s.integer("groups", 1)
        if size < 1 or stride < 1 or filters < 1 or pad < 0:
            raise s.error(f"size={size} stride={stride} filters={filters} padding={pad}: must be positive")
        if groups != 1 and not groups == c == filters:
            raise s.error(
                f"groups={groups}: only plain (groups=1) and depthwise (groups = input channels = "
                f"filters, here {c}) convolutions are supported",
                "groups",
            )
        oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
        if oh < 1 or ow < 1:
            raise s.error(f"size={size} on a {h}x{w} input leaves no output")
        return Conv(
            **base,
            inputs=(index - 1,),
            shape=(oh, ow, filters),
            filters=filters,
            size=size,
            stride=stride,
            pad=pad,
            groups=groups,
            batch_normalize=s.integer("batch_normalize", 0) == 1,
            activation=_activation(s, "logistic"),
            in_channels=c,
        )
    if s.type == "maxpool":
        for key in ("stride_x", "stride_y", "maxpool_depth", "antialiasing", "out_channels"):
            if key in s.options:
                raise s.error(f"{key}: not supported (plain max-pooling only)", key)
        stride = s.integer("stride", 1)
        size = s.integer("size", stride)
        padding = s.integer("padding", size - 1)
        if size < 1 or stride < 1 or padding < 0:
            raise s.error(f"size={size} stride={stride} padding={padding}: size and stride must be positive")
        if padding >= size:
            raise s.error(f"padding={padding} with size={size}: windows would hold no input", "padding")
        oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
        if oh < 1 or ow < 1:
            raise s.error(f"size={size} on a {h}x{w} input leaves no output")
        return MaxPool(
            **base, inputs=(index - 1,), shape=(oh, ow, c), size=size, stride=stride, padding=padding
        )
    if s.type == "route":
        refs = [_reference(s, index, r, "layers") for r in s.integers("layers")]
        if not refs:
            raise s.error("layers= lists no layer", "layers")
        groups, group_id = s.integer("groups", 1), s.integer("group_id", 0)
        if groups < 1 or not 0 <= group_id < groups:
            raise s.error(f"groups={groups} group_id={group_id}: need 0 <= group_id < groups")
        shapes = [net.shape_of(r) for r in refs]
        if len({sh[:2] for sh in shapes}) != 1:
            raise s.error(f"layers {refs} have different sizes {[sh[:2] for sh in shapes]}", "layers")
        if any(sh[2] % groups for sh in shapes):
            raise s.error(
                f"groups={groups} does not divide the channels {[sh[2] for sh in shapes]}", "groups"
            )
        out_c = sum(sh[2] // groups for sh in shapes)
        return Route(
            **base, inputs=tuple(refs), shape=(*shapes[0][:2], out_c), groups=groups, group_id=group_id
        )
    if s.type == "reorg":
        for key in ("reverse", "flatten", "extra"):
            s.refuse(key, ("0",), "only the forward reorg of YOLOv2 is implemented")
        stride = s.integer("stride", 1)
        if stride < 1 or h % stride or w % stride:
            raise s.error(f"stride={stride} does not divide the {h}x{w} input", "stride")
        return Reorg(
            **base, inputs=(index - 1,), shape=(h // stride, w // stride, c * stride * stride), stride=stride
        )
    if s.type == "upsample":
        s.refuse("scale", ("1", "1.0"), "scaled upsampling")
        stride = s.integer("stride", 2)
        if stride < 1 or stride & (stride - 1):
            raise s.error(f"stride={stride}: only powers of two are supported", "stride")
        return Upsample(**base, inputs=(index - 1,), shape=(h * stride, w * stride, c), stride=stride)
    if s.type == "shortcut":
        refs = s.integers("from")
        if len(refs) != 1:
            raise s.error(f"from={s.text('from')}: exactly one layer is supported", "from")
        for key in ("alpha", "beta"):
            s.refuse(key, ("1", "1.0"), "weighted sums")
        s.refuse("weights_type", ("none",), "weighted shortcuts")
        ref = _reference(s, index, refs[0], "from")
        if net.shape_of(ref) != (h, w, c):
            raise s.error(
                f"from={refs[0]}: layer {ref} is {list(net.shape_of(ref))}, the previous layer {[h, w, c]}; "
                "only equal shapes are supported",
                "from",
            )
        return Shortcut(**base, inputs=(index - 1, ref), shape=(h, w, c), activation=_activation(s, "linear"))
    if s.type == "dropout":
        return Dropout(**base, inputs=(index - 1,), shape=(h, w, c))
    if s.type == "region":
        return _region(s, base, index, (h, w, c))
    if s.type == "yolo":
        return _yolo(s, base, index, (h, w, c))
    raise s.error(f"layer type not supported (supported: {', '.join(LAYER_TYPES)})")


def _pairs(s: Section, values: List[float], count: int) -> Tuple[Tuple[float, float], ...]:
    if len(values) != 2 * count:
        raise s.error(f"anchors= has {len(values)} numbers; num={count} needs {2 * count}", "anchors")
    pairs = tuple((values[2 * i], values[2 * i + 1]) for i in range(count))
    if any(a <= 0 or b <= 0 for a, b in pairs):
        raise s.error("anchors= must all be positive", "anchors")
    return pairs


def _region(s: Section, base: Dict[str, Any], index: int, shape: Shape) -> Region:
    s.refuse("coords", ("4",), "boxes of 4 coordinates only")
    s.refuse("softmax", ("1",), "the yolov2 decoder takes softmax class scores")
    for key in ("tree", "map"):
        if key in s.options:
            raise s.error(f"{key}: hierarchical (YOLO9000) classes are not supported", key)
    s.refuse("background", ("0",), "a background class")
    num, classes = s.integer("num", 1), s.integer("classes", 20)
    anchors = _pairs(s, s.numbers("anchors"), num)
    need = num * (5 + classes)
    if shape[2] != need:
        raise s.error(
            f"num={num} classes={classes} need {need} input channels, the previous layer has {shape[2]}"
        )
    return Region(**base, inputs=(index - 1,), shape=shape, anchors=anchors, classes=classes)


def _yolo(s: Section, base: Dict[str, Any], index: int, shape: Shape) -> Yolo:
    s.refuse("scale_x_y", ("1", "1.0", "1.00"), "the yolov3 decoder has no scale_x_y")
    s.refuse("new_coords", ("0",), "the yolov3 decoder takes darknet's original box coordinates")
    num, classes = s.integer("num", 1), s.integer("classes", 20)
    anchors = _pairs(s, s.numbers("anchors"), num)
    mask = tuple(s.integers("mask")) if "mask" in s.options else tuple(range(num))
    if not mask or any(not 0 <= m < num for m in mask):
        raise s.error(f"mask={list(mask)}: anchor indexes must lie in 0..{num - 1}", "mask")
    need = len(mask) * (5 + classes)
    if shape[2] != need:
        raise s.error(
            f"{len(mask)} masked anchors and classes={classes} need {need} input channels, "
            f"the previous layer has {shape[2]}"
        )
    return Yolo(**base, inputs=(index - 1,), shape=shape, anchors=anchors, mask=mask, classes=classes)


def _check_heads(net: Network) -> None:
    heads = net.heads
    if not heads:
        raise DarknetError(f"{net.path}: no [region] or [yolo] layer: not a YOLO detector")
    regions = [h for h in heads if isinstance(h, Region)]
    if regions and (len(heads) > 1 or heads[0].index != len(net.layers) - 1):
        raise DarknetError(f"{regions[0].where}: [region] must be the only head and the last layer")
    for layer in net.layers:
        for ref in layer.inputs:
            if ref >= 0 and isinstance(net.layers[ref], (Region, Yolo)):
                raise DarknetError(
                    f"{layer.where}: [{layer.kind}] reads the output of the [{net.layers[ref].kind}] layer "
                    f"{ref} (its decoded boxes): not supported"
                )
    yolos = [h for h in heads if isinstance(h, Yolo)]
    if yolos:
        if len({y.classes for y in yolos}) != 1:
            raise DarknetError(f"{yolos[1].where}: [yolo] layers disagree on classes=")
        if len({y.shape[:2] for y in yolos}) != len(yolos):
            raise DarknetError(
                f"{net.path}: two [yolo] layers have the same grid size; the decoder tells them apart by it"
            )
