"""``detector.options`` (SPEC §3): backend-specific settings, checked at start against the
configured backend's own options model, and handed to the backend that loads (under ``auto``,
each candidate takes the ones it knows)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, ConfigError
from edge_agent.loading import check_options, open_detector

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no openvino")


def detector_config(**detector: object) -> AgentConfig:
    return AgentConfig.model_validate({"detector": detector})


def test_options_are_checked_against_the_configured_backend() -> None:
    check_options(
        detector_config(
            backend="openvino", options={"num_requests": 2, "performance_hint": "LATENCY"}
        ).detector
    )
    check_options(detector_config(backend="tflite", options={"xnnpack": False}).detector)
    check_options(detector_config(backend="auto", options={"num_requests": 2, "xnnpack": False}).detector)
    with pytest.raises(
        ConfigError, match=r"^detector\.options\.num_requests: not an option of tflite \(known: xnnpack\)"
    ):
        check_options(detector_config(backend="tflite", options={"num_requests": 2}).detector)
    with pytest.raises(
        ConfigError, match=r"^detector\.options\.num_request: not an option of any backend \(known: "
    ):
        check_options(detector_config(options={"num_request": 2}).detector)
    with pytest.raises(
        ConfigError, match=r"^detector\.options\.num_requests: Input should be a valid integer"
    ):
        check_options(detector_config(backend="openvino", options={"num_requests": "many"}).detector)


def test_check_config_refuses_bad_options_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("detector: {backend: tflite, options: {num_requests: 2}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", "-c", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "detector.options.num_requests: not an option of tflite" in r.stderr
    assert "Traceback" not in r.stderr


def test_options_reach_the_backend_that_loads(shapes_bundle: Path) -> None:
    options = {"xnnpack": False, "num_requests": 3}  # the second is openvino's: tflite leaves it
    detector, _ = open_detector(str(shapes_bundle), "tflite", options=options)
    try:
        assert detector.backend.options.xnnpack is False  # type: ignore[attr-defined]
    finally:
        detector.close()


@needs_openvino
def test_openvino_takes_its_options(shapes_bundle: Path) -> None:
    detector, _ = open_detector(
        str(shapes_bundle), "openvino", "CPU", options={"num_requests": 3, "performance_hint": "LATENCY"}
    )
    try:
        opts = detector.backend.options
        assert (opts.num_requests, opts.performance_hint) == (3, "LATENCY")  # type: ignore[attr-defined]
        assert detector.backend.max_in_flight == 3
    finally:
        detector.close()
