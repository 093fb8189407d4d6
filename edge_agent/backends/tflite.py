"""CPU inference with the TFLite interpreter (XNNPACK by default)."""

from __future__ import annotations

from typing import ClassVar, List, Sequence, Type

import numpy as np

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError, BackendUnavailable
from . import litert
from .base import AutoSlot, Backend, BackendOptions, Probe, wrap_outputs


class TFLiteOptions(BackendOptions):
    # XNNPACK is several times faster on ARM CPUs; off only to compare or work around a bug.
    xnnpack: bool = True


class TFLiteBackend(Backend):
    name: ClassVar[str] = "tflite"
    runtimes: ClassVar[Sequence[str]] = ("tflite",)
    auto_slots: ClassVar[Sequence[AutoSlot]] = (AutoSlot(30),)
    Options: ClassVar[Type[BackendOptions]] = TFLiteOptions

    @classmethod
    def probe(cls) -> Probe:
        try:
            _, runtime = litert.interpreter_module()
        except BackendUnavailable as e:
            return Probe(cls.name, False, reason=str(e))
        return Probe(cls.name, True, runtime=runtime, devices=["CPU"])

    def _delegates(self) -> list:
        """Delegates to hand the interpreter; raises when the device is wrong or absent."""
        if self.options.device not in (None, "CPU", "cpu"):
            raise BackendError(f"tflite runs on the CPU; device {self.options.device!r} is not one it knows")
        return []

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        opts = self.options
        xnnpack = opts.xnnpack if isinstance(opts, TFLiteOptions) else True
        path = str(bundle.path(artifact.file))
        try:
            interp = litert.make_interpreter(path, opts.threads, self._delegates(), xnnpack=xnnpack)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"{path}: the TFLite interpreter cannot load it: {e}") from e
        self._interp = interp
        inputs = interp.get_input_details()
        if len(inputs) != 1:
            raise BackendError(f"{path}: expected one input tensor, found {len(inputs)}")
        self._input_index = inputs[0]["index"]
        self._input = litert.tensor_spec(inputs[0])
        details = interp.get_output_details()
        self._output_indices = [d["index"] for d in details]
        self._outputs = [litert.tensor_spec(d) for d in details]

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        self._interp.set_tensor(self._input_index, tensor)
        self._interp.invoke()
        # get_tensor copies; the interpreter reuses its buffers on the next invoke.
        return wrap_outputs(self._outputs, [self._interp.get_tensor(i) for i in self._output_indices])

    def close(self) -> None:
        self._interp = None
