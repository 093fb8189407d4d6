"""The float Keras model behind the agent's Backend interface, so that the trainer evaluates
it through exactly the pre-processing, decoder and box mapping every exported artifact and the
device use (``edge_agent.detector.Detector``)."""

from __future__ import annotations

from typing import Any, ClassVar, List, Sequence

import numpy as np

from edge_agent.backends.base import Backend, Probe, wrap_outputs
from edge_agent.bundle import Artifact, Bundle
from edge_agent.decoders.base import OutputTensor
from edge_agent.preprocess import TensorSpec


class KerasBackend(Backend):
    name: ClassVar[str] = "keras"
    runtimes: ClassVar[Sequence[str]] = ()

    def __init__(self, model: Any):
        import tensorflow as tf

        super().__init__()
        self.model = model
        size = int(model.input.shape[1])
        # A traced graph: an eager call per image costs several times the inference itself.
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)],
        )
        self._input = TensorSpec("images", (1, size, size, 3), np.dtype(np.float32))
        # One output, or several (an imported darknet YOLOv3 has one per yolo layer).
        self._outputs = [
            TensorSpec(
                f"output{i}", tuple(int(d) if d is not None else 1 for d in o.shape), np.dtype(np.float32)
            )
            for i, o in enumerate(model.outputs)
        ]

    @classmethod
    def probe(cls) -> Probe:
        return Probe(cls.name, True, runtime="keras", devices=["CPU"])

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:  # pragma: no cover - never loads files
        raise NotImplementedError

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        out = self._call(tensor)
        return wrap_outputs(
            self._outputs, [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
        )

    @property
    def accelerator(self) -> str:
        return "keras"
