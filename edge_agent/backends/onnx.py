"""ONNX Runtime. The device picks the execution provider (CPU by default)."""

from __future__ import annotations

from typing import Any, ClassVar, List, Sequence

import numpy as np

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError, BackendUnavailable
from ..preprocess import TensorSpec
from .base import AutoSlot, Backend, Probe, wrap_outputs
from .imports import import_runtime

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def import_ort() -> Any:
    """onnxruntime; BackendUnavailable (one line) when it is absent or cannot load."""
    return import_runtime("onnxruntime", "onnxruntime", "pip install onnxruntime")


def provider_for(device: str, available: List[str]) -> str:
    """``CPU`` -> CPUExecutionProvider; a full provider name is taken as it is."""
    name = device if device.endswith("ExecutionProvider") else f"{device.upper()}ExecutionProvider"
    matches = [p for p in available if p.lower() == name.lower()]
    if not matches:
        raise BackendUnavailable(
            f"onnx: device {device} has no execution provider here (available: {', '.join(available)})"
        )
    return matches[0]


class ONNXBackend(Backend):
    name: ClassVar[str] = "onnx"
    runtimes: ClassVar[Sequence[str]] = ("onnx",)
    auto_slots: ClassVar[Sequence[AutoSlot]] = (AutoSlot(50),)

    @classmethod
    def probe(cls) -> Probe:
        try:
            ort = import_ort()
        except BackendUnavailable as e:
            return Probe(cls.name, False, reason=str(e))
        providers = [p.replace("ExecutionProvider", "") for p in ort.get_available_providers()]
        return Probe(cls.name, True, runtime=f"onnxruntime {ort.__version__}", devices=providers)

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        ort = import_ort()
        provider = provider_for(self.options.device or "CPU", ort.get_available_providers())
        so = ort.SessionOptions()
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
        path = str(bundle.path(artifact.file))
        try:
            session = ort.InferenceSession(path, sess_options=so, providers=[provider])
        except Exception as e:  # onnxruntime raises its own exception classes
            raise BackendError(f"{path}: onnxruntime cannot load it: {e}") from e
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{path}: expected one input, found {len(inputs)}")
        self._session = session
        self._input = _spec(inputs[0], path, static=True)
        self._outputs = [_spec(o, path, static=False) for o in session.get_outputs()]
        self._output_names = [o.name for o in session.get_outputs()]
        self._input_name = inputs[0].name

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        arrays = self._session.run(self._output_names, {self._input_name: tensor})
        return wrap_outputs(self._outputs, arrays)

    def close(self) -> None:
        self._session = None


def _spec(arg: Any, path: str, static: bool) -> TensorSpec:
    """``static``: the input must have a fixed shape (a dynamic batch is taken as 1); output
    dimensions that are dynamic are reported as -1 and checked on the real outputs."""
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise BackendError(f"{path}: tensor {arg.name!r} has unsupported type {arg.type}")
    # A dynamic batch dimension is harmless: we always run one image.
    shape = [1 if (i == 0 and not isinstance(d, int)) else d for i, d in enumerate(arg.shape)]
    if static and not all(isinstance(d, int) for d in shape):
        raise BackendError(
            f"{path}: input {arg.name!r} has a dynamic shape {list(arg.shape)}; export it static"
        )
    return TensorSpec(
        name=arg.name, shape=tuple(d if isinstance(d, int) else -1 for d in shape), dtype=np.dtype(dtype)
    )
