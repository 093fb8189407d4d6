"""What the figures were measured on, and the clip the video runs decode."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict

import cv2

from edge_agent.sources.synthetic import SyntheticSource

PACKAGES = ("ai-edge-litert", "tflite-runtime", "openvino", "onnxruntime", "opencv-python-headless", "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "?"


def _mosquitto() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def describe() -> Dict[str, str]:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical cores ({platform.machine()})",
        "memory": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": ", ".join(versions),
        "broker": _mosquitto(),
        "load": "load average at start {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


def make_video(path: Path, frames: int, width: int = 640, height: int = 480) -> Path:
    """An MJPG clip of the synthetic scene, as a USB webcam would deliver (JPEG per frame)."""
    source = SyntheticSource("synthetic:5", width, height)
    source.open()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an MJPG video to {path}")
    try:
        for _ in range(frames):
            frame = source.read()
            assert frame is not None
            writer.write(frame.image)
    finally:
        writer.release()
    return path
