"""CPU inference with the TFLite interpreter (XNNPACK by default).

The interpreter is not thread-safe, and its ``invoke`` releases the GIL: one worker thread per
backend owns it and runs ``set_tensor``/``invoke``/``get_tensor`` for every request, so that the
caller prepares the next frame (and decodes the previous one) while a frame runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from typing import Any, ClassVar, List, Optional, Sequence, Type

import numpy as np

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError, BackendUnavailable
from ..preprocess import TensorSpec
from . import litert
from .base import AutoSlot, Backend, BackendOptions, Pending, Probe, wrap_outputs

log = logging.getLogger(__name__)
# How long close() waits for the request running on the worker (a hung EdgeTPU never returns).
CLOSE_WAIT_S = 5.0


class TFLiteOptions(BackendOptions):
    # XNNPACK is several times faster on ARM CPUs; off only to compare or work around a bug.
    xnnpack: bool = True


class _Job(Pending):
    """One request for the worker: the input tensor, then its outputs or its error."""

    def __init__(self, tensor: np.ndarray):
        self.tensor: Optional[np.ndarray] = tensor
        self.outputs: Optional[List[OutputTensor]] = None
        self.error: Optional[BaseException] = None
        # Held until the worker is done with the job: a bare lock is a latch that costs a
        # fraction of a threading.Event (no Condition, no waiter list) at hundreds of frames/s.
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self) -> None:
        self._done.release()

    def result(self) -> List[OutputTensor]:
        with self._done:  # released once by the worker; taking it again never blocks
            pass
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class _Runner:
    """The worker's loop: the only code that touches the interpreter once it is loaded."""

    def __init__(self, interp: Any, input_index: int, output_indices: List[int], outputs: List[TensorSpec]):
        self.interp, self.input_index = interp, input_index
        self.output_indices, self.outputs = output_indices, outputs

    def __call__(self, jobs: queue.SimpleQueue[Optional[_Job]]) -> None:
        interp = self.interp
        while True:
            job = jobs.get()
            if job is None:
                return
            job.started = time.perf_counter()
            try:
                interp.set_tensor(self.input_index, job.tensor)  # copies: the caller may reuse it
                interp.invoke()
                # get_tensor copies; the interpreter reuses its buffers on the next invoke.
                job.outputs = wrap_outputs(self.outputs, [interp.get_tensor(i) for i in self.output_indices])
            except Exception as e:
                job.error = e
            finally:
                job.finished = time.perf_counter()
                job.tensor = None
                job.finish()


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
        inputs = interp.get_input_details()
        if len(inputs) != 1:
            raise BackendError(f"{path}: expected one input tensor, found {len(inputs)}")
        self._input_index = inputs[0]["index"]
        self._input = litert.tensor_spec(inputs[0])
        details = interp.get_output_details()
        self._output_indices = [d["index"] for d in details]
        self._outputs = [litert.tensor_spec(d) for d in details]
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a job is never queued behind the worker's stop
        self._interp = interp
        # The worker holds the interpreter, not the backend: a backend dropped without close()
        # is still collected, and its finalizer stops the worker.
        run = _Runner(interp, self._input_index, self._output_indices, self._outputs)
        self._worker = threading.Thread(
            target=run, args=(self._jobs,), name=f"{self.name}-invoke", daemon=True
        )
        self._worker.start()
        weakref.finalize(self, self._jobs.put, None)

    @property
    def max_in_flight(self) -> int:
        # Two: one frame runs while the caller prepares the next; more would only add latency.
        return 2

    def submit(self, tensor: np.ndarray) -> Pending:
        job = _Job(tensor)
        with self._lock:
            if self._interp is None:
                raise BackendError(f"{self.name}: the backend is closed")
            self._jobs.put(job)
        return job

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        return self.submit(tensor).result()

    def close(self) -> None:
        """Stop the worker after the requests already submitted (they get their results);
        submitting afterwards raises BackendError."""
        if getattr(self, "_interp", None) is None:
            return
        with self._lock:
            self._interp = None
            self._jobs.put(None)
        self._worker.join(CLOSE_WAIT_S)
        if self._worker.is_alive():
            log.warning(
                "%s: an inference still runs after %.0f s; leaving it behind", self.name, CLOSE_WAIT_S
            )
