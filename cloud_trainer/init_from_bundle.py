"""Training weights recovered from a bundle's fp32 ONNX model, for ``train --init BUNDLE`` where
the bundle is on its own (published, pulled, copied away from its run).

The trainer's ONNX export folds batch normalisation into the convolutions (or leaves it as a
per-channel Mul and Add after them), so the Keras model is rebuilt from the architecture the
manifest describes and every convolution takes the folded weights: kernel OIHW -> HWIO
(depthwise: (C*m, 1, H, W) -> (H, W, C, m)), the folded scale in the kernel, and the folded
shift in the convolution's bias or, where it has none, in the beta of the BatchNormalization
after it, whose other statistics make it the identity (gamma 1, mean 0, variance 1 - epsilon).
ONNX and Keras convolutions are paired in the same canonical order (depth-first from the output,
inputs in order), checked by shape, and the rebuilt model is run against the ONNX model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .model import ModelSpec, build

TOLERANCE = 1e-4  # relative to the outputs' scale (all in 0..1 for this trainer's detector)


class MappingError(Exception):
    """The ONNX model's layers do not map onto the rebuilt Keras model (the reason)."""


Conv = Tuple[np.ndarray, np.ndarray, int]  # (OIHW kernel with the scale folded in, bias, group)


def onnx_convs(path: Path) -> List[Conv]:
    """The Conv nodes of the ONNX model at ``path``, depth-first from its first output, each
    with the per-channel Mul/Add by constants that follow it folded into its kernel and bias."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def folded(node: Any) -> Conv:
        if len(node.input) < 2 or node.input[1] not in consts:
            raise MappingError(f"convolution {node.name} has no constant kernel")
        kernel = consts[node.input[1]].astype(np.float64)
        out_ch = kernel.shape[0]
        bias = (
            consts[node.input[2]].astype(np.float64).reshape(out_ch)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(out_ch)
        )
        group = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
        tensor = node.output[0]
        while len(consumers.get(tensor, [])) == 1:  # a Mul/Add by a per-channel constant: folded BN
            nxt = consumers[tensor][0]
            if nxt.op_type not in ("Mul", "Add") or len(nxt.input) != 2:
                break
            other = nxt.input[1] if nxt.input[0] == tensor else nxt.input[0]
            if other not in consts or consts[other].size not in (1, out_ch):
                break
            value = consts[other].astype(np.float64)
            if value.size == out_ch and value.ndim and value.shape[-1] == out_ch and value.ndim > 1:
                break  # channel-last constant: not a per-channel NCHW operation
            v = value.reshape(-1) * np.ones(out_ch)
            if nxt.op_type == "Mul":
                kernel, bias = kernel * v.reshape(-1, 1, 1, 1), bias * v
            else:
                bias = bias + v
            tensor = nxt.output[0]
        return kernel.astype(np.float32), bias.astype(np.float32), group

    order: List[Conv] = []
    seen: set = set()
    stack: List[Tuple[str, bool]] = [(graph.output[0].name, False)]
    while stack:  # iterative post-order depth-first search, inputs in order
        name, done = stack.pop()
        node = producer.get(name)
        if node is None:
            continue
        if done:
            if node.op_type == "Conv":
                order.append(folded(node))
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((name, True))
        stack.extend((i, False) for i in reversed(node.input) if i and i not in consts)
    return order


def keras_convs(model: Any) -> List[Tuple[Any, Optional[Any]]]:
    """(convolution layer, the BatchNormalization that alone takes its output or None) of a
    Keras functional model, depth-first from its output, inputs in order."""
    import keras

    def inputs_of(layer: Any) -> List[Any]:
        return [t._keras_history[0] for node in layer._inbound_nodes for t in node.input_tensors]

    consumers: Dict[int, List[Any]] = {}
    for layer in model.layers:
        for src in inputs_of(layer):
            consumers.setdefault(id(src), []).append(layer)
    order: List[Tuple[Any, Optional[Any]]] = []
    seen: set = set()
    stack: List[Tuple[Any, bool]] = [(model.outputs[0]._keras_history[0], False)]
    while stack:
        layer, done = stack.pop()
        if done:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
                after = consumers.get(id(layer), [])
                bn = (
                    after[0]
                    if len(after) == 1 and isinstance(after[0], keras.layers.BatchNormalization)
                    else None
                )
                order.append((layer, bn))
            continue
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        stack.append((layer, True))
        stack.extend((src, False) for src in reversed(inputs_of(layer)))
    return order


def _onnx_kernel(layer: Any) -> Tuple[Tuple[int, ...], int]:
    """(the OIHW shape and group the ONNX export gives ``layer``'s kernel)."""
    import keras

    h, w, i, o = (int(d) for d in layer.kernel.shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (i * o, 1, h, w), i
    return (o, i, h, w), 1


def shapes_match(model: Any, convs: Sequence[Conv]) -> bool:
    ours = [_onnx_kernel(layer) for layer, _ in keras_convs(model)]
    return ours == [(k.shape, g) for k, _, g in convs]


def load_into(model: Any, convs: Sequence[Conv]) -> None:
    """Set ``model``'s convolutions (and the batch norms after them) from ``convs``."""
    import keras

    pairs = keras_convs(model)
    if len(pairs) != len(convs):
        raise MappingError(f"{len(convs)} convolutions, the trainer's model has {len(pairs)}")
    for (layer, bn), (kernel, bias, group) in zip(pairs, convs):
        shape, ours = _onnx_kernel(layer)
        if (kernel.shape, group) != (shape, ours):
            raise MappingError(f"{layer.name}: kernel {kernel.shape} (group {group}) where {shape} is needed")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            h, w, c, m = (int(d) for d in layer.kernel.shape)
            hwio = kernel.reshape(c, m, h, w).transpose(2, 3, 0, 1)
        else:
            hwio = kernel.transpose(2, 3, 1, 0)
        if layer.use_bias:
            layer.set_weights([hwio, bias])
        elif bn is not None:
            layer.set_weights([hwio])
            c = bias.shape[0]
            eps = float(bn.epsilon)
            stats = {"gamma": np.ones(c), "beta": bias, "moving_mean": np.zeros(c)}
            stats["moving_variance"] = np.full(c, 1.0 - eps)
            names = [v.path.split("/")[-1] for v in bn.weights]
            bn.set_weights([np.asarray(stats[n], np.float32) for n in names])
        elif np.abs(bias).max() > 0:
            raise MappingError(f"{layer.name}: a bias where the trainer's model has none")
        else:
            layer.set_weights([hwio])


def onnx_runner(path: Path, size: Optional[int] = None) -> Any:
    """x (NHWC float32) -> the ONNX model's first output; MappingError where its input is not
    ``size`` square (when given)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    nchw = first.shape[1] == 3
    hw = list(first.shape[2:4] if nchw else first.shape[1:3])
    if size is not None and all(isinstance(d, int) for d in hw) and hw != [size, size]:
        raise MappingError(f"input {hw[0]}x{hw[1]} where the manifest says {size}x{size}")

    def run(x: np.ndarray) -> np.ndarray:
        feed = x.transpose(0, 3, 1, 2) if nchw else x
        return np.asarray(session.run(None, {first.name: feed})[0])

    return run


def inputs(spec: ModelSpec, n: int = 3) -> List[np.ndarray]:
    """Fixed inputs in the model's input range: noise, and a smooth gradient image."""
    lo, hi = spec.input_range
    rng = np.random.default_rng(0)
    size = spec.img_size
    xs = [rng.uniform(lo, hi, (1, size, size, 3)).astype(np.float32) for _ in range(n - 1)]
    ramp = np.linspace(lo, hi, size, dtype=np.float32)
    xs.append(np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), -1)[None])
    return xs


def max_difference(export_model: Any, run: Any, spec: ModelSpec) -> float:
    """The largest difference between the Keras and ONNX outputs over ``inputs``, relative to
    the outputs' scale (at least 1)."""
    worst = 0.0
    for x in inputs(spec):
        ref = run(x)
        got = np.asarray(export_model(x))
        if got.shape != ref.shape:
            raise MappingError(f"output {list(got.shape)} where the ONNX model gives {list(ref.shape)}")
        worst = max(worst, float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
    return worst


def infer_backbone(path: Path, specs: Sequence[ModelSpec]) -> Optional[ModelSpec]:
    """The first of ``specs`` whose convolutions have the shapes of the ONNX model's, or None."""
    convs = onnx_convs(path)
    for spec in specs:
        _, export_model = build(spec, batch_size=1)
        if shapes_match(export_model, convs):
            return spec
    return None


def keras_from_onnx(path: Path, spec: ModelSpec) -> Tuple[Any, Any, float]:
    """(training model, export model, measured max relative difference) rebuilt for ``spec``
    from the ONNX model at ``path``; MappingError where its layers do not map or the outputs
    differ by more than TOLERANCE."""
    convs = onnx_convs(path)
    train_model, export_model = build(spec, batch_size=1)
    load_into(export_model, convs)
    diff = max_difference(export_model, onnx_runner(path, spec.img_size), spec)
    if not diff <= TOLERANCE:
        raise MappingError(f"the rebuilt model's outputs differ by {diff:.2g}, more than {TOLERANCE:g}")
    return train_model, export_model, diff
