"""OpenCV's DNN module: ONNX, TensorFlow frozen graphs (.pb + .pbtxt) and darknet
(.cfg + .weights, where the OpenCV build still reads them: 4.x does, 5.x dropped it).

cv2.dnn always takes NCHW float blobs, except ONNX models whose declared input is NHWC; the
layout of those is read from the file when the ``onnx`` package is importable.

For darknet, cv2.dnn's own region/yolo layers emit boxes already decoded in OpenCV's format;
this backend returns the raw convolution outputs that feed them instead, which is exactly what
the ``yolov2`` and ``yolov3`` decoders take (SPEC §2), so every backend shares one decoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError, BackendUnavailable
from ..preprocess import TensorSpec
from .base import AutoSlot, Backend, Probe, wrap_outputs
from .imports import import_runtime

log = logging.getLogger(__name__)

TARGETS = {"CPU": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU)}


def _onnx_input_shape(path: Path) -> Optional[Tuple[int, ...]]:
    try:  # optional; one that cannot load (another numpy's build) is as good as absent, quietly
        onnx = import_runtime("onnx", "onnx", "pip install onnx")
    except BackendUnavailable as e:
        log.debug("no ONNX input layout from %s: %s", path.name, e)
        return None
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BackendError(f"{path}: expected one input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.dim_value > 0 else 1 for d in dims)


def _darknet_input(cfg: Path) -> Tuple[int, int, int]:
    """(channels, height, width) from the [net] section that opens a darknet cfg."""
    values: Dict[str, str] = {}
    for raw in cfg.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and values:
            break  # the next section: [net] is done
        if "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    try:
        return int(values.get("channels", 3)), int(values["height"]), int(values["width"])
    except (KeyError, ValueError) as e:
        raise BackendError(f"{cfg}: the [net] section needs integer width and height") from e


class OpenCVBackend(Backend):
    name: ClassVar[str] = "opencv"
    runtimes: ClassVar[Sequence[str]] = ("opencv", "onnx")
    auto_slots: ClassVar[Sequence[AutoSlot]] = (AutoSlot(60),)

    @classmethod
    def probe(cls) -> Probe:
        reason = "" if hasattr(cv2.dnn, "readNetFromDarknet") else "this OpenCV cannot read darknet models"
        return Probe(cls.name, True, runtime=f"opencv {cv2.__version__}", devices=["CPU"], reason=reason)

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        device = (self.options.device or "CPU").upper()
        if device not in TARGETS:
            raise BackendUnavailable(f"opencv: device {device} is not supported (available: CPU)")
        path = bundle.path(artifact.file)
        config = bundle.path(artifact.config) if artifact.config else None
        suffix = path.suffix.lower()
        raw_layers: List[str] = []
        try:
            if suffix == ".onnx":
                net = cv2.dnn.readNetFromONNX(str(path))
                shape = _onnx_input_shape(path) or (
                    1,
                    3,
                    bundle.manifest.input.height,
                    bundle.manifest.input.width,
                )
            elif suffix == ".pb":
                net = cv2.dnn.readNetFromTensorflow(str(path), str(config) if config else "")
                shape = (1, 3, bundle.manifest.input.height, bundle.manifest.input.width)
            elif suffix in (".weights", ".cfg"):
                if not hasattr(cv2.dnn, "readNetFromDarknet"):
                    raise BackendUnavailable(
                        f"opencv {cv2.__version__} has no darknet reader (OpenCV 5 dropped it); "
                        "install opencv-python-headless<5"
                    )
                cfg, weights = (config, path) if suffix == ".weights" else (path, config)
                if cfg is None or weights is None:
                    raise BackendError(f"{path}: a darknet model needs both its .cfg and .weights")
                net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
                c, h, w = _darknet_input(cfg)
                shape = (1, c, h, w)
                raw_layers = _darknet_raw_outputs(net)
            else:
                raise BackendError(f"{path}: opencv reads .onnx, .pb (+.pbtxt) or darknet .cfg/.weights")
        except cv2.error as e:
            raise BackendError(f"{path}: OpenCV cannot read it: {str(e).strip().splitlines()[-1]}") from e
        backend_id, target_id = TARGETS[device]
        net.setPreferableBackend(backend_id)
        net.setPreferableTarget(target_id)
        if self.options.threads:
            cv2.setNumThreads(int(self.options.threads))
        self._net: Any = net
        self._output_names = raw_layers or list(net.getUnconnectedOutLayersNames())
        self._input = TensorSpec(name="input", shape=tuple(shape), dtype=np.dtype(np.float32))
        # Output shapes are known only after a forward pass; run one now on zeros.
        arrays = self._forward(np.zeros(shape, np.float32))
        self._outputs = [TensorSpec(n, tuple(a.shape), a.dtype) for n, a in zip(self._output_names, arrays)]

    def _forward(self, tensor: np.ndarray) -> List[np.ndarray]:
        self._net.setInput(tensor)
        try:
            out = self._net.forward(self._output_names)
        except cv2.error as e:
            raise BackendError(f"opencv: forward failed: {str(e).strip().splitlines()[-1]}") from e
        return [np.asarray(a) for a in out]

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        return wrap_outputs(self._outputs, self._forward(tensor))

    def close(self) -> None:
        self._net = None


def _darknet_raw_outputs(net: Any) -> List[str]:
    """Names of the layers that feed each region/yolo layer (the raw head convolutions)."""
    names = list(net.getLayerNames())
    out: List[str] = []
    for name in net.getUnconnectedOutLayersNames():
        layer_id = net.getLayerId(name)
        layer = net.getLayer(layer_id)
        if layer.type not in ("Region", "Yolo") and not name.startswith(("yolo", "region", "detection_out")):
            out.append(name)
            continue
        # cv2 numbers darknet layers in cfg order; the head convolution is the one just before.
        idx = names.index(name)
        out.append(names[idx - 1])
    return out
