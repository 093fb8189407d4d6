"""The backend interface: load one bundle artifact, say what its tensors are, run a prepared
tensor, close. Backends know nothing of frames, decoders or MQTT.

A backend may keep several inferences in flight (the NCS2 needs it to reach its throughput):
``submit`` starts one and returns a handle whose ``result`` waits for it. The base class runs
``infer`` synchronously, which is right for runtimes without an async API.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Sequence, Type

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError
from ..preprocess import TensorSpec

log = logging.getLogger(__name__)


class BackendOptions(BaseModel):
    """Options every backend accepts; a backend may subclass to add its own."""

    model_config = ConfigDict(extra="forbid")

    device: Optional[str] = None
    threads: Optional[int] = None


@dataclass
class Probe:
    """What ``edge-agent devices`` and ``auto`` learn about a backend without loading a model."""

    backend: str
    available: bool
    runtime: Optional[str] = None  # e.g. "ai-edge-litert 2.3.0"
    devices: List[str] = field(default_factory=list)
    reason: str = ""  # why it is unavailable, or notes

    def as_dict(self) -> Dict[str, Any]:
        return {
            "backend": self.backend,
            "available": self.available,
            "runtime": self.runtime,
            "devices": self.devices,
            "reason": self.reason,
        }


class Pending(abc.ABC):
    # When the runtime started and finished the request (time.perf_counter), where it knows:
    # with requests queued behind each other, the time from submit to result is not the
    # inference's own.
    started: Optional[float] = None
    finished: Optional[float] = None

    @abc.abstractmethod
    def result(self) -> List[OutputTensor]: ...


class _Done(Pending):
    def __init__(self, outputs: List[OutputTensor]):
        self._outputs = outputs

    def result(self) -> List[OutputTensor]:
        return self._outputs


class AutoSlot(NamedTuple):
    """One place of a backend in ``auto``'s order (SPEC §3): lower ``rank`` is tried first;
    ``device`` is the device it is tried on there (None: the backend's own default)."""

    rank: int
    device: Optional[str] = None


class Backend(abc.ABC):
    """What a backend declares about itself is declared here, once: everything else (``auto``,
    ``edge-agent devices``, the loader, the trainer's artifact checks) asks the class."""

    name: ClassVar[str]
    # Artifact runtimes (manifest ``artifacts[].runtime``) this backend can load, in order of
    # preference; the first is the one it is the native runtime of (the trainer checks an
    # artifact of that runtime with this backend).
    runtimes: ClassVar[Sequence[str]]
    Options: ClassVar[Type[BackendOptions]] = BackendOptions
    # Where ``auto`` tries it; counted only where a class declares it itself (a plugin that
    # subclasses a built-in does not inherit its place): without one, ``auto`` never picks it,
    # only an explicit ``detector.backend`` does.
    auto_slots: ClassVar[Sequence[AutoSlot]] = ()
    # The device the trainer checks this backend's native artifacts on, on a build machine
    # without accelerators (None: the backend's default).
    check_device: ClassVar[Optional[str]] = None

    def __init__(self, options: Optional[BackendOptions] = None, **kwargs: Any):
        self.options = options if options is not None else self.Options(**kwargs)
        self.artifact: Optional[Artifact] = None
        self._input: Optional[TensorSpec] = None
        self._outputs: List[TensorSpec] = []

    # -- discovery -------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Probe:
        """Is the runtime importable, which devices does it see. Must not raise."""

    def choose_artifact(self, bundle: Bundle) -> Artifact:
        for runtime in self.runtimes:
            art = bundle.manifest.artifact_for(runtime)
            if art is not None:
                return art
        have = ", ".join(a.runtime for a in bundle.manifest.artifacts)
        raise BackendError(
            f"{bundle.dir}: the {self.name} backend needs a {' or '.join(self.runtimes)} artifact; "
            f"the bundle has {have}"
        )

    # -- life cycle ------------------------------------------------------------------------
    def load(self, bundle: Bundle) -> None:
        art = self.choose_artifact(bundle)
        self._load(bundle, art)
        self.artifact = art
        log.info(
            "%s: loaded %s (%s %s) on %s",
            self.name,
            bundle.manifest.ident,
            art.file,
            art.precision,
            self.accelerator,
        )

    @abc.abstractmethod
    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        """Load the artifact; set ``self._input`` and ``self._outputs``."""

    @abc.abstractmethod
    def infer(self, tensor: np.ndarray) -> List[OutputTensor]: ...

    def submit(self, tensor: np.ndarray) -> Pending:
        return _Done(self.infer(tensor))

    @property
    def max_in_flight(self) -> int:
        """How many ``submit`` calls may usefully be outstanding at once."""
        return 1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources; the backend cannot be used afterwards."""

    # -- description -----------------------------------------------------------------------
    @property
    def input(self) -> TensorSpec:
        if self._input is None:
            raise BackendError(f"{self.name}: no model loaded")
        return self._input

    @property
    def outputs(self) -> List[TensorSpec]:
        return list(self._outputs)

    @property
    def accelerator(self) -> str:
        """Human-readable: what runs the model (``CPU``, ``EdgeTPU usb:0``, ``MYRIAD``...)."""
        return self.options.device or "CPU"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wrap_outputs(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]) -> List[OutputTensor]:
    return [OutputTensor(s.name, a, s.scale, s.zero_point) for s, a in zip(specs, arrays)]
