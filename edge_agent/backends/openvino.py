"""Intel OpenVINO: the NCS2 (MYRIAD, OpenVINO 2022.3 LTS only), CPU, GPU, NPU, AUTO.

Works with the 2022.3 API (``openvino.runtime``) and current OpenVINO (``openvino``). The NCS2
reaches its throughput only with several inference requests in flight, so the backend keeps a
pool of requests and ``submit`` starts one asynchronously.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, List, Optional, Sequence, Tuple, Type

import numpy as np

from ..bundle import Artifact, Bundle
from ..decoders.base import OutputTensor
from ..errors import BackendError, BackendUnavailable
from ..preprocess import TensorSpec
from .base import AutoSlot, Backend, BackendOptions, Pending, Probe, wrap_outputs
from .imports import import_runtime

ELEMENT_DTYPES = {
    "f32": np.float32,
    "f16": np.float16,
    "u8": np.uint8,
    "i8": np.int8,
    "i32": np.int32,
    "i64": np.int64,
}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


def import_openvino() -> Tuple[Any, str]:
    """(Core class, version string)."""
    openvino = import_runtime("openvino", "openvino", "pip install openvino")
    core = getattr(openvino, "Core", None)
    get_version = getattr(openvino, "get_version", None)
    if core is None:  # 2022.x keeps its API in openvino.runtime
        runtime = import_runtime("openvino.runtime", "openvino", "pip install openvino")
        core, get_version = getattr(runtime, "Core", None), getattr(runtime, "get_version", None)
        if core is None:
            raise BackendUnavailable("openvino is installed but has no Core (pip install --upgrade openvino)")
    # "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1"
    return core, str(get_version()).split("-")[0] if get_version else "?"


class OpenVINOOptions(BackendOptions):
    # Requests in flight; None = the device's optimal number (4 on MYRIAD: one per SHAVE group).
    num_requests: Optional[int] = None
    performance_hint: Optional[str] = None  # LATENCY | THROUGHPUT
    # f32 | f16 | bf16. CPUs with AMX/AVX512-BF16 default to bf16, which moves scores by ~0.01.
    inference_precision: Optional[str] = None
    # OpenVINO's PrePostProcessor takes the frame as BGR uint8 NHWC and does colour, range and
    # layout inside the compiled model (a quarter of the bytes over USB to an NCS2, and no numpy
    # pass on the inference thread); off: numpy prepares a float tensor, to compare or work around.
    preprocess_in_model: bool = True


class _Request(Pending):
    def __init__(self, backend: OpenVINOBackend, request: Any, slot: int):
        self.backend, self.request, self.slot = backend, request, slot

    def result(self) -> List[OutputTensor]:
        self.request.wait()
        try:
            return self.backend._read(self.request)
        finally:
            self.backend._release(self.slot)


class OpenVINOBackend(Backend):
    name: ClassVar[str] = "openvino"
    runtimes: ClassVar[Sequence[str]] = ("openvino", "onnx")
    auto_slots: ClassVar[Sequence[AutoSlot]] = (AutoSlot(20, "MYRIAD"), AutoSlot(40, "CPU"))
    check_device: ClassVar[Optional[str]] = "CPU"
    Options: ClassVar[Type[BackendOptions]] = OpenVINOOptions

    @classmethod
    def probe(cls) -> Probe:
        try:
            core_cls, version = import_openvino()
            devices = list(core_cls().available_devices)
        except Exception as e:  # a broken plugin must not break `edge-agent devices`
            return Probe(cls.name, False, reason=str(e))
        reason = ""
        if "MYRIAD" not in devices and not version.startswith("2022."):
            reason = f"OpenVINO {version} has no MYRIAD plugin; the NCS2 needs OpenVINO 2022.3 LTS"
        return Probe(cls.name, True, runtime=f"openvino {version}", devices=devices, reason=reason)

    @property
    def device(self) -> str:
        return (self.options.device or "CPU").upper()

    @property
    def accelerator(self) -> str:
        return self.device

    def _load(self, bundle: Bundle, artifact: Artifact) -> None:
        core_cls, version = import_openvino()
        core = core_cls()
        device = self.device
        available = list(core.available_devices)
        base = device.split(":")[0].split(".")[0]
        if base not in VIRTUAL_DEVICES and not any(d == device or d.split(".")[0] == base for d in available):
            hint = ""
            if base == "MYRIAD" and not version.startswith("2022."):
                hint = f"; the NCS2 (MYRIAD) needs OpenVINO 2022.3 LTS, this is {version}"
            elif base == "MYRIAD":
                hint = "; is the NCS2 plugged in, and are the udev rules in deploy/udev installed?"
            raise BackendUnavailable(
                f"openvino: device {device} not found (available: {', '.join(available) or 'none'}){hint}"
            )
        opts = self.options
        assert isinstance(opts, OpenVINOOptions)
        config: dict = {}
        if opts.performance_hint:
            config["PERFORMANCE_HINT"] = opts.performance_hint.upper()
        if opts.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = opts.inference_precision.lower()
        if opts.threads and base == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(opts.threads)
        xml = bundle.path(artifact.file)
        weights = bundle.path(artifact.weights) if artifact.weights else None
        try:
            model = core.read_model(str(xml), str(weights)) if weights else core.read_model(str(xml))
            takes_frame = opts.preprocess_in_model and _add_preprocessing(model, bundle)
            compiled = core.compile_model(model, device, config)
        except RuntimeError as e:
            raise BackendError(
                f"{xml}: OpenVINO {version} cannot load it on {device}: {_first_line(e)}"
            ) from e
        if len(compiled.inputs) != 1:
            raise BackendError(f"{xml}: expected one input, found {len(compiled.inputs)}")
        self._compiled = compiled
        self._input = _spec(compiled.inputs[0], "input", takes_bgr_frame=takes_frame)
        self._outputs = [_spec(p, f"output{i}") for i, p in enumerate(compiled.outputs)]
        n = opts.num_requests
        if n is None:
            try:
                n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            except Exception:
                n = 1
            if base == "MYRIAD":
                n = max(n, 4)
        self._requests = [compiled.create_infer_request() for _ in range(max(1, n))]
        self._free = list(range(len(self._requests)))
        self._cond = threading.Condition()

    @property
    def max_in_flight(self) -> int:
        return len(getattr(self, "_requests", [None]))

    def _acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def _release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    def _read(self, request: Any) -> List[OutputTensor]:
        arrays = [np.array(request.get_output_tensor(i).data) for i in range(len(self._outputs))]
        return wrap_outputs(self._outputs, arrays)

    def infer(self, tensor: np.ndarray) -> List[OutputTensor]:
        return self.submit(tensor).result()

    def submit(self, tensor: np.ndarray) -> Pending:
        slot = self._acquire()
        request = self._requests[slot]
        try:
            request.start_async({0: tensor})
        except Exception:
            self._release(slot)
            raise
        return _Request(self, request, slot)

    def close(self) -> None:
        self._requests = []
        self._compiled = None


def _add_preprocessing(model: Any, bundle: Bundle) -> bool:
    """Give ``model`` an input that takes the placed frame (BGR uint8 NHWC) and does what the
    manifest's ``input`` says (colour, range) and the model's layout needs, inside OpenVINO.
    False, leaving the model as it is, where its input is not a float colour image."""
    port = model.inputs[0]
    if port.get_partial_shape().is_dynamic or port.get_element_type().get_type_name() not in ("f32", "f16"):
        return False
    shape = [int(d) for d in port.get_shape()]
    try:
        spec = TensorSpec("input", tuple(shape), np.dtype(np.float32))
        layout, channels = spec.layout, spec.channels
    except BackendError:
        return False
    if channels != 3:
        return False
    preprocess, core_types = _ppp_api()
    spec_in = bundle.manifest.input
    lo, hi = spec_in.range
    ppp = preprocess.PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(core_types.Type.u8).set_layout(core_types.Layout("NHWC")).set_color_format(
        preprocess.ColorFormat.BGR
    )
    inp.model().set_layout(core_types.Layout(layout))
    steps = inp.preprocess()
    steps.convert_element_type(core_types.Type.f32)
    if spec_in.color == "rgb":
        steps.convert_color(preprocess.ColorFormat.RGB)
    # real = lo + p * (hi - lo) / 255 = (p - mean) / scale
    scale = 255.0 / (hi - lo)
    steps.mean(-lo * scale).scale(scale)
    ppp.build()
    return True


def _ppp_api() -> Tuple[Any, Any]:
    """(the openvino.preprocess module, the module holding Type and Layout): current OpenVINO
    keeps Type and Layout at the top, 2022.3 in openvino.runtime."""
    import importlib

    preprocess = importlib.import_module("openvino.preprocess")
    top = importlib.import_module("openvino")
    if hasattr(top, "Layout") and hasattr(top, "Type"):
        return preprocess, top
    return preprocess, importlib.import_module("openvino.runtime")


def _spec(port: Any, fallback: str, takes_bgr_frame: bool = False) -> TensorSpec:
    try:
        name = port.get_any_name()
    except RuntimeError:
        name = fallback
    type_name = port.get_element_type().get_type_name()
    dtype = ELEMENT_DTYPES.get(type_name)
    if dtype is None:
        raise BackendError(f"tensor {name!r}: element type {type_name} is not supported")
    if port.get_partial_shape().is_dynamic:
        raise BackendError(f"tensor {name!r} has a dynamic shape; export the model with a static input shape")
    return TensorSpec(
        name=name,
        shape=tuple(int(d) for d in port.get_shape()),
        dtype=np.dtype(dtype),
        takes_bgr_frame=takes_bgr_frame,
    )


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from")]
    return lines[-1] if lines else str(e)
