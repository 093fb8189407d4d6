"""The Keras model of a darknet network: input ``[1, H, W, 3]`` RGB in 0..1 (darknet's own), one
output per head, each the raw ``[1, S, S, A*(5+C)]`` that feeds darknet's region or yolo layer,
which is what the ``yolov2`` and ``yolov3`` decoders take (they apply the sigmoids, exponentials
and softmax themselves).

Each darknet layer maps to operations that the int8 TFLite converter, the EdgeTPU compiler and
OpenVINO 2022.3 all take:

* ``[convolutional]``: Conv2D (or DepthwiseConv2D for ``groups`` = channels) with the batch
  normalisation folded into kernel and bias; darknet's symmetric zero padding is ``same`` where
  that is the same thing (stride 1, odd size), else an explicit ZeroPadding2D; activations:
  leaky (slope 0.1) as PReLU with a constant 0.1 (the EdgeTPU maps PRELU, not LEAKY_RELU),
  relu, logistic (sigmoid), mish, swish (silu);
* ``[maxpool]``: MaxPooling2D. darknet pads ``padding // 2`` before and the rest after, and
  padded cells never win: that is ``valid`` when the windows never reach the padding, ``same``
  where TensorFlow's split of the padding is darknet's (size 2 stride 1, as in Tiny YOLO), and
  otherwise the edge rows and columns repeated (a window that reaches the padding also holds the
  edge it repeats, so the maximum is darknet's) and ``valid``;
* ``[route]``: the layer itself or Concatenate on channels; ``groups``/``group_id`` take that
  slice of each input's channels;
* ``[reorg]``: darknet's reorg, which is not space-to-depth: it reads the ``[C, H, W]`` input as
  ``[C/s², H·s, W·s]`` and writes a ``[C, H, W]`` buffer that the next layer reads as
  ``[C·s², H/s, W/s]`` (as OpenCV's Reorg does). Reshapes and transposes (up to 6-D, which the
  EdgeTPU leaves to the CPU; YOLOv2 with reorg is no Coral model anyway);
* ``[upsample]``: nearest neighbour from Concatenate and Reshape (``model._upsample``: no Resize,
  which OpenVINO 2022.3 cannot read from ONNX, no Tile, which the EdgeTPU refuses);
* ``[shortcut]``: Add, then its activation; ``[dropout]``: nothing (inference);
* ``[region]`` / ``[yolo]``: nothing but the output: the tensor they read.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from ..model import _upsample
from .cfg import (
    Conv,
    DarknetError,
    Dropout,
    Layer,
    MaxPool,
    Network,
    Region,
    Reorg,
    Route,
    Shortcut,
    Upsample,
    Yolo,
)
from .weights import ConvParams

LEAKY_SLOPE = 0.1


def _layers() -> Any:
    import keras

    return keras.layers


def _activation(x: Any, act: str, name: str) -> Any:
    import keras

    L = _layers()
    if act == "linear":
        return x
    if act == "leaky":
        prelu = L.PReLU(
            alpha_initializer=keras.initializers.Constant(LEAKY_SLOPE),
            shared_axes=[1, 2],
            name=f"leaky_{name}",
        )
        prelu.trainable = False
        return prelu(x)
    if act == "relu":
        return L.ReLU(name=f"relu_{name}")(x)
    keras_name = {"logistic": "sigmoid", "mish": "mish", "swish": "silu"}[act]
    return L.Activation(keras_name, name=f"{act}_{name}")(x)


def _conv(x: Any, layer: Conv, params: ConvParams) -> Any:
    L = _layers()
    same = layer.stride == 1 and 2 * layer.pad == layer.size - 1
    if layer.pad and not same:
        x = L.ZeroPadding2D(layer.pad, name=f"pad_{layer.index}")(x)
    padding = "same" if same else "valid"
    name = f"conv_{layer.index}"
    if layer.groups == 1:
        conv = L.Conv2D(layer.filters, layer.size, strides=layer.stride, padding=padding, name=name)
        y = conv(x)
        conv.set_weights([params.kernel, params.bias])
    else:  # depthwise: [size, size, 1, C] -> [size, size, C, 1]
        conv = L.DepthwiseConv2D(layer.size, strides=layer.stride, padding=padding, name=name)
        y = conv(x)
        conv.set_weights([params.kernel.transpose(0, 1, 3, 2), params.bias])
    return _activation(y, layer.activation, str(layer.index))


def _replicate_edges(x: Any, before: int, after: int, axis: int, name: str) -> Any:
    L = _layers()
    if before <= 0 and after <= 0:
        return x
    first = L.Lambda(lambda t: t[:, :1] if axis == 1 else t[:, :, :1], name=f"{name}_first")(x)
    last = L.Lambda(lambda t: t[:, -1:] if axis == 1 else t[:, :, -1:], name=f"{name}_last")(x)
    return L.Concatenate(axis=axis, name=name)([first] * before + [x] + [last] * max(after, 0))


def _maxpool(x: Any, layer: MaxPool, size_in: int) -> Any:
    L = _layers()
    k, s, out = layer.size, layer.stride, layer.shape[0]
    before = layer.padding // 2
    name = f"pool_{layer.index}"
    if before == 0 and size_in >= k and (size_in - k) // s + 1 == out:
        return L.MaxPooling2D(k, s, padding="valid", name=name)(x)
    tf_out = math.ceil(size_in / s)
    if tf_out == out and max((tf_out - 1) * s + k - size_in, 0) // 2 == before:
        return L.MaxPooling2D(k, s, padding="same", name=name)(x)
    after = (out - 1) * s + k - size_in - before
    x = _replicate_edges(x, before, after, 1, f"{name}_rows")
    x = _replicate_edges(x, before, after, 2, f"{name}_cols")
    return L.MaxPooling2D(k, s, padding="valid", name=name)(x)


def _route(inputs: List[Any], layer: Route) -> Any:
    L = _layers()
    if layer.groups > 1:
        parts = []
        for i, t in enumerate(inputs):
            chunk = int(t.shape[-1]) // layer.groups
            lo = layer.group_id * chunk
            parts.append(
                L.Lambda(lambda v, a=lo, b=lo + chunk: v[..., a:b], name=f"route_{layer.index}_{i}")(t)
            )
        inputs = parts
    if len(inputs) == 1:
        return inputs[0]
    return L.Concatenate(axis=-1, name=f"route_{layer.index}")(inputs)


def _reorg(x: Any, layer: Reorg) -> Any:
    """darknet's reorg (see the module docstring) on NHWC tensors."""
    L = _layers()
    s, (h, w, c) = layer.stride, (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    n = f"reorg_{layer.index}"
    y = L.Permute((3, 1, 2), name=f"{n}_chw")(x)  # [C, H, W]: darknet's memory order
    y = L.Reshape((c // (s * s), h, s, w, s), name=f"{n}_read")(y)  # read as [C/s², H·s, W·s]
    y = L.Permute((3, 5, 1, 2, 4), name=f"{n}_move")(y)  # [dy, dx, c2, j, i]: channel (dy·s+dx)·C/s² + c2
    y = L.Reshape((c * s * s, h // s, w // s), name=f"{n}_write")(y)  # the buffer as [C·s², H/s, W/s]
    return L.Permute((2, 3, 1), name=n)(y)


def _upsample_by(x: Any, layer: Upsample) -> Any:
    factor, step = layer.stride, 0
    while factor > 1:
        x = _upsample(x, f"upsample_{layer.index}_{step}")
        factor, step = factor // 2, step + 1
    return x


def build_model(net: Network, params: Dict[int, ConvParams]) -> Any:
    """The Keras model (batch 1, static shapes: what the EdgeTPU compiler and MYRIAD need)."""
    import keras

    L = _layers()
    image = keras.Input((net.height, net.width, net.channels), batch_size=1, name="images")
    outputs: List[Any] = []

    def source(ref: int) -> Any:
        return image if ref < 0 else outputs[ref]

    for layer in net.layers:
        x = source(layer.inputs[0])
        y: Any
        if isinstance(layer, Conv):
            y = _conv(x, layer, params[layer.index])
        elif isinstance(layer, MaxPool):
            y = _maxpool(x, layer, net.shape_of(layer.inputs[0])[0])
        elif isinstance(layer, Route):
            y = _route([source(r) for r in layer.inputs], layer)
        elif isinstance(layer, Reorg):
            y = _reorg(x, layer)
        elif isinstance(layer, Upsample):
            y = _upsample_by(x, layer)
        elif isinstance(layer, Shortcut):
            y = L.Add(name=f"shortcut_{layer.index}")([x, source(layer.inputs[1])])
            y = _activation(y, layer.activation, str(layer.index))
        elif isinstance(layer, (Dropout, Region, Yolo)):
            y = x
        else:  # pragma: no cover - parse_network only makes the kinds above
            raise DarknetError(f"{layer.where}: [{layer.kind}] has no Keras mapping")
        _check_shape(layer, y)
        outputs.append(y)
    heads = [outputs[h.index] for h in net.heads]
    return keras.Model(image, heads if len(heads) > 1 else heads[0], name="darknet")


def _check_shape(layer: Layer, y: Any) -> None:
    got = tuple(int(d) for d in y.shape[1:])
    if got != layer.shape:  # pragma: no cover - a converter bug, not a user error
        raise DarknetError(
            f"{layer.where}: [{layer.kind}] built as {list(got)}, darknet makes {list(layer.shape)}"
        )
