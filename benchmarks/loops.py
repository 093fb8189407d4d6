"""The references the service is measured against, run in the bench's own process:

(a) the raw inference loop: the backend alone, on one tensor prepared once, with its in-flight
    window kept full (``edge_agent.bench.throughput``): the accelerator's limit on this machine;
(b) the naive loop, the way tutorials write it: read a frame, pre-process, infer, decode,
    ``json.dumps`` and ``client.publish`` at QoS 1, one after the other in one thread.

And the bare script, for memory: a fresh interpreter that imports only the runtime, loads the
same model and runs it, reporting its peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, List, Optional

import cv2
import numpy as np

from edge_agent.bench import throughput
from edge_agent.detector import Detector
from edge_agent.sources.synthetic import SyntheticSource


def raw_fps(detector: Detector, seconds: float) -> float:
    frame = SyntheticSource("synthetic:3", 640, 480)
    frame.open()
    first = frame.read()
    assert first is not None
    tensor, _ = detector.prepare(first.image)
    fps, _ = throughput(detector.backend, tensor, seconds)
    return fps


def frame_reader(source: str) -> Callable[[], np.ndarray]:
    """``cv2.VideoCapture`` on a file (started again at its end), or the synthetic camera."""
    if source.startswith("file:"):
        path = source[len("file:") :]
        cap = cv2.VideoCapture(path)

        def read_video() -> np.ndarray:
            nonlocal cap
            ok, image = cap.read()
            if not ok:
                cap.release()
                cap = cv2.VideoCapture(path)
                ok, image = cap.read()
            assert ok, f"cannot read {path}"
            return image

        return read_video
    synthetic = SyntheticSource(source, 640, 480)
    synthetic.open()

    def read_synthetic() -> np.ndarray:
        frame = synthetic.read()
        assert frame is not None
        return frame.image

    return read_synthetic


def naive_fps(detector: Detector, source: str, broker_port: int, seconds: float) -> float:
    """Frames per second of the one-thread loop, publishing each result at QoS 1."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    read = frame_reader(source)
    try:
        detector.detect(read())  # warm, as the service is before it is timed

        def one() -> None:
            result = detector.detect(read())
            payload = json.dumps({"detections": [d.model_dump() for d in result.detections]})
            client.publish("bench/naive/detections", payload, qos=1)

        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            one()
            done += 1
        return done / (time.perf_counter() - start)
    finally:
        client.loop_stop()
        client.disconnect()


_BARE_TFLITE = """
import sys, numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
interp = Interpreter(model_path=sys.argv[1])
interp.allocate_tensors()
d = interp.get_input_details()[0]
x = np.zeros(d["shape"], d["dtype"])
for _ in range(int(sys.argv[2])):
    interp.set_tensor(d["index"], x)
    interp.invoke()
    [interp.get_tensor(o["index"]) for o in interp.get_output_details()]
"""

_BARE_OPENVINO = """
import sys, numpy as np, openvino as ov
model = ov.Core().compile_model(sys.argv[1], "CPU")
request = model.create_infer_request()
x = np.zeros(list(model.input(0).shape), np.float32)
for _ in range(int(sys.argv[2])):
    request.infer({0: x})
"""

_PEAK = """
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024.0)
"""


def bare_peak_rss_mb(runtime: str, bundle: Path, runs: int = 50, agent_imports: bool = False) -> float:
    """Peak RSS (MiB) of a script that only loads the bundle's model in ``runtime`` and runs it
    (OpenVINO reads the IR, or the ONNX file when there is none); with ``agent_imports``, after
    importing what ``edge-agent run`` imports (the floor under the service's own memory)."""
    script = {"tflite": _BARE_TFLITE, "openvino": _BARE_OPENVINO}[runtime] + _PEAK
    if agent_imports:
        script = "import edge_agent.cli, edge_agent.service.agent\n" + script
    names = {"tflite": ["model_int8.tflite"], "openvino": ["model_fp16.xml", "model.onnx"]}[runtime]
    model = next(bundle / n for n in names if (bundle / n).exists())
    out = run_python(["-c", script, str(model), str(runs)], f"the bare {runtime} script", 300)
    return float(out.strip().splitlines()[-1])


def run_python(args: List[str], what: str, timeout: float, cwd: Optional[Path] = None) -> str:
    """``python ARGS`` in a fresh interpreter (this one's); its stdout, or RuntimeError with
    the end of its stderr."""
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def open_bench_detector(bundle: Path, backend: str, options: Optional[dict] = None) -> Detector:
    from edge_agent.loading import open_detector

    detector, _ = open_detector(str(bundle), backend, options=options)
    detector.warm()
    return detector
