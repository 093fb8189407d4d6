"""A simulated accelerator, installed as a real plug-in backend: what the service adds around an
inference that runs off the CPU, as on a Coral or an NCS2.

``SimulatedAccelerator`` loads the bundle's TFLite artifact only to learn its tensors (so the
service's own pre-processing and decoder run unchanged) and to compute, once, the outputs of the
first frame it is given; every inference then takes ``latency_ms`` on a device thread that
sleeps (``time.sleep`` holds no GIL, like a USB transfer to a Coral) and returns those outputs.
The device runs one request at a time, like one Edge TPU; ``in_flight`` requests may be queued on
it so that the host prepares the next frame while the device works.

:func:`install_plugin` registers it under the ``edgewatch.backends`` entry-point group through a
``.dist-info`` directory on ``PYTHONPATH``: the agent finds it the way it finds any third-party
backend, with no code of the bench inside the agent.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import ClassVar, List, Optional, Sequence, Type

import numpy as np

from edge_agent.backends import litert
from edge_agent.backends.base import Backend, BackendOptions, Pending, Probe, wrap_outputs
from edge_agent.bundle import Artifact, Bundle
from edge_agent.decoders.base import OutputTensor
from edge_agent.errors import BackendError

NAME = "simulated"
DIST = "edgewatch_bench_simulated"


class SimulatedOptions(BackendOptions):
    latency_ms: float = 10.0
    in_flight: int = 2


class _Request(Pending):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.outputs: List[OutputTensor] = []

    def result(self) -> List[OutputTensor]:
        self.done.wait()
        return self.outputs


class SimulatedAccelerator(Backend):
    name: ClassVar[str] = NAME
    runtimes: ClassVar[Sequence[str]] = ("tflite",)
    Options: ClassVar[Type[BackendOptions]] = SimulatedOptions

    @classmethod
    def probe(cls) -> Probe:
        return Probe(cls.name, True, runtime="simulated", devices=["sim:0"])

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        path = str(bundle.path(artifact.file))
        try:
            interp = litert.make_interpreter(path, None)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"{path}: cannot read the model's tensors: {e}") from e
        self._interp = interp
        self._input = litert.tensor_spec(interp.get_input_details()[0])
        details = interp.get_output_details()
        self._outputs = [litert.tensor_spec(d) for d in details]
        self._output_indices = [d["index"] for d in details]
        self._fixed: Optional[List[np.ndarray]] = None
        opts = self.options
        assert isinstance(opts, SimulatedOptions)
        self._latency_s = opts.latency_ms / 1000.0
        self._in_flight = max(1, opts.in_flight)
        self._queue: queue.Queue[Optional[_Request]] = queue.Queue()
        self._device = threading.Thread(target=self._run_device, name="simulated-device", daemon=True)
        self._device.start()

    def _first_outputs(self, tensor: np.ndarray) -> List[np.ndarray]:
        # Real outputs of a real frame, so the decoder has real detections to work through.
        if self._fixed is None:
            self._interp.set_tensor(self._interp.get_input_details()[0]["index"], tensor)
            self._interp.invoke()
            self._fixed = [self._interp.get_tensor(i) for i in self._output_indices]
        return self._fixed

    def _run_device(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            time.sleep(self._latency_s)  # the device is busy; the host's cores are free
            request.done.set()

    def submit(self, tensor: np.ndarray) -> Pending:
        request = _Request()
        request.outputs = wrap_outputs(self._outputs, [a.copy() for a in self._first_outputs(tensor)])
        self._queue.put(request)
        return request

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        return self.submit(tensor).result()

    @property
    def max_in_flight(self) -> int:
        return self._in_flight

    @property
    def accelerator(self) -> str:
        return f"simulated {self._latency_s * 1000:g} ms"

    def close(self) -> None:
        self._queue.put(None)


def install_plugin(site: Path) -> Path:
    """Write a ``.dist-info`` registering the backend into ``site`` (a directory to put on
    ``PYTHONPATH`` beside the repository root); returns ``site``."""
    dist = site / f"{DIST}-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[edgewatch.backends]\n{NAME} = benchmarks.simulated:SimulatedAccelerator\n"
    )
    return site
