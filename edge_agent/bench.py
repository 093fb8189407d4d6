"""``edge-agent bench``: a backend's raw throughput and latency on one bundle.

Latency is timed per inference with nothing else in flight; throughput then keeps
``backend.max_in_flight`` inferences outstanding (what the NCS2 needs to reach its rate).
Pre- and post-processing are timed separately, so the figures say where a frame's time goes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Deque, Dict, List, Tuple

import numpy as np

from .backends.base import Backend, Pending
from .detector import Detector
from .messages import DetectionOut


def percentiles(samples_s: List[float]) -> Dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {}
    return {
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def throughput(backend: Backend, tensor: np.ndarray, seconds: float) -> Tuple[float, int]:
    """Inferences per second with ``backend.max_in_flight`` kept outstanding on one prepared
    tensor (what an NCS2 needs to reach its rate), and how many ran."""
    depth = max(1, backend.max_in_flight)
    window: Deque[Pending] = deque()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline or done == 0:
        while len(window) < depth:
            window.append(backend.submit(tensor))
        window.popleft().result()
        done += 1
    while window:
        window.popleft().result()
        done += 1
    return done / (time.perf_counter() - start), done


def run(detector: Detector, image: np.ndarray, seconds: float) -> Dict[str, Any]:
    backend = detector.backend
    tensor, transform = detector.prepare(image)
    detector.warm()

    # Latency: one request at a time, half the time budget.
    pre: List[float] = []
    lat: List[float] = []
    post: List[float] = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or not lat:
        t0 = time.perf_counter()
        tensor, transform = detector.prepare(image)
        t1 = time.perf_counter()
        outputs = backend.infer(tensor)
        t2 = time.perf_counter()
        detector.decode(outputs, transform)
        t3 = time.perf_counter()
        pre.append(t1 - t0)
        lat.append(t2 - t1)
        post.append(t3 - t2)

    # Throughput: keep the backend's in-flight window full for the other half.
    depth = max(1, backend.max_in_flight)
    fps, done = throughput(backend, tensor, seconds / 2)

    m = detector.manifest
    art = backend.artifact
    return {
        "model": {"name": m.name, "version": m.version},
        "backend": backend.name,
        "accelerator": backend.accelerator,
        "artifact": {"file": art.file, "precision": art.precision} if art else None,
        "input": {"shape": list(backend.input.shape), "dtype": str(backend.input.dtype)},
        "threads": backend.options.threads,
        "in_flight": depth,
        "throughput_fps": round(fps, 2),
        "throughput_inferences": done,
        "latency_ms": percentiles(lat),
        "latency_samples": len(lat),
        "preprocess_ms": percentiles(pre),
        "decode_ms": percentiles(post),
        "seconds": seconds,
    }


def pipeline(detector: Detector, width: int, height: int, seconds: float) -> Dict[str, Any]:
    """Frames per second end to end (synthetic camera -> detector -> JSON message), first one
    step after the other, then through the service's pipeline, where capture, inference and
    publishing overlap. Both on this machine in one run, so their ratio is what to compare."""
    import json

    from .service.pipeline import Pipeline
    from .sources.synthetic import SyntheticSource

    def message(detections: List[DetectionOut]) -> bytes:
        return json.dumps([d.model_dump() for d in detections]).encode()

    detector.warm()
    half = seconds / 2
    source = SyntheticSource("synthetic:0", width, height)
    source.open()
    serial = 0
    start = time.perf_counter()
    while time.perf_counter() - start < half:
        frame = source.read()
        assert frame is not None
        message(detector.detect(frame.image).detections)
        serial += 1
    serial_fps = serial / (time.perf_counter() - start)
    source.close()

    done: List[int] = []
    pipe = Pipeline(
        SyntheticSource("synthetic:0", width, height),
        "every",
        lambda p: done.append(len(message(p.detections))),
    )
    start = time.perf_counter()
    pipe.start(detector)
    time.sleep(half)
    processed = pipe.stats.processed
    elapsed = time.perf_counter() - start
    pipe.stop()
    piped_fps = processed / elapsed
    return {
        "frame": {"width": width, "height": height},
        "backend": detector.backend.name,
        "serial_fps": round(serial_fps, 1),
        "pipelined_fps": round(piped_fps, 1),
        "speedup": round(piped_fps / serial_fps, 2) if serial_fps else None,
        "inference_ms": round(pipe.stats.inference_ms, 2),
    }
