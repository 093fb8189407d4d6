"""The benchmark suite's own logic (``make bench`` itself is not run here: it measures, and no
figure of it is asserted): the simulated accelerator plug-in through the real registry, the
counting of lost frames and swap gaps, and the report's goals."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from benchmarks import report, simulated
from benchmarks.service import Message, lost_frames, parse, swap_gaps
from edge_agent.backends import registry
from edge_agent.demo import BUNDLES_DIR
from edge_agent.loading import open_detector
from edge_agent.sources.synthetic import SyntheticSource

pytest.importorskip("ai_edge_litert")
BUNDLE = BUNDLES_DIR / "shapes-1.0.0"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = simulated.install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(simulated.DIST, None)


def test_simulated_accelerator_is_found_as_a_plugin_and_gives_the_real_models_detections(
    plugin: Path,
) -> None:
    assert simulated.NAME in registry.available_names()
    source = SyntheticSource("synthetic:3", 640, 480)
    source.open()
    frame = source.read()
    assert frame is not None
    sim, _ = open_detector(str(BUNDLE), simulated.NAME, options={"latency_ms": 1, "in_flight": 3})
    real, _ = open_detector(str(BUNDLE), "tflite")
    with sim, real:
        assert sim.backend.max_in_flight == 3
        assert sim.backend.accelerator == "simulated 1 ms"
        expected = real.detect(frame.image).detections
        assert expected, "the scene shows shapes the demo model finds"
        assert sim.detect(frame.image).detections == expected
        # queued requests complete in order, each with its own copy of the outputs
        tensor, _ = sim.prepare(frame.image)
        pending = [sim.backend.submit(tensor) for _ in range(3)]
        outputs = [p.result() for p in pending]
        outputs[0][0].data[...] = 0
        assert np.any(outputs[1][0].data != 0)


def test_simulated_options_are_validated(plugin: Path) -> None:
    from edge_agent.errors import EdgewatchError

    with pytest.raises(EdgewatchError, match="latency_ms"):
        open_detector(str(BUNDLE), simulated.NAME, options={"latency_ms": "soon"})


def _messages(frames: List[int], done: List[float], versions: List[str]) -> List[Message]:
    return [
        Message(arrived=t + 0.001, captured=t - 0.004, frame=f, version=v, inference_ms=1.0, total_ms=4.0)
        for f, t, v in zip(frames, done, versions)
    ]


def test_lost_frames_counts_missing_and_repeated_numbers() -> None:
    t = [float(i) for i in range(6)]
    v = ["1"] * 6
    assert lost_frames(_messages([3, 4, 5, 6, 7, 8], t, v)) == 0
    assert lost_frames(_messages([3, 4, 6, 7, 8, 9], t, v)) == 1  # 5 missing
    assert lost_frames(_messages([3, 4, 4, 5, 6, 7], t, v)) == 1  # 4 twice
    assert lost_frames([]) == 0


def test_swap_gaps_compares_the_deploys_largest_gap_with_the_median_before_it() -> None:
    done = [i * 0.01 for i in range(100)]
    done[60:] = [t + 0.05 for t in done[60:]]  # the swap held frame 60 back by 50 ms
    versions = ["1.0.0"] * 60 + ["1.1.0"] * 40
    gaps = swap_gaps(_messages(list(range(100)), done, versions), {"sent": 0.5, "ended": 0.7, "ok": True})
    assert gaps["median_gap_ms"] == pytest.approx(10.0)
    assert gaps["largest_gap_ms"] == pytest.approx(60.0)
    assert gaps["switches"] == 1 and gaps["versions"] == ["1.0.0", "1.1.0"]


def test_parse_reads_the_detection_message_fields() -> None:
    doc = {
        "ts": "2026-12-02T10:00:00.250Z",
        "frame": 7,
        "model": {"name": "shapes", "version": "1.0.0"},
        "latency_ms": {"inference": 1.5, "total": 12.0},
    }
    (m,) = parse([(1796205600.5, json.dumps(doc).encode())])
    assert m.captured == pytest.approx(1796205600.25)
    assert m.done == pytest.approx(1796205600.262)
    assert (m.frame, m.version, m.inference_ms) == (7, "1.0.0", 1.5)


def _run(fps: float, **extra: Any) -> Dict[str, Any]:
    return {
        "fps": fps,
        "inference_ms": 1.0,
        "startup_s": 1.0,
        "peak_rss_mb": 150.0,
        "lost": 0,
        "latency_ms": {"p50": 5.0, "p99": 9.0},
        **extra,
    }


def test_report_takes_medians_of_per_round_ratios_and_marks_the_goals() -> None:
    fig: Dict[str, Any] = {
        "rounds": 3,
        "seconds": 4,
        "wall_s": 100,
        "machine": {"cpu": "test"},
        "cases": {
            "demo tflite/video": {
                "raw": [100.0, 50.0, 100.0],
                "naive": [50.0, 50.0, 50.0],
                # per-round c/a: 0.95, 1.8, 0.8 -> median 0.95; c/b 1.9, 1.8, 1.6 -> 1.8
                "service": [_run(95.0), _run(90.0), _run(80.0)],
            }
        },
        "latency": {"demo tflite": [_run(95.0, camera_fps=30.0, raw_fps=100.0)] * 3},
        "simulated": {"10": [_run(99.0), _run(85.0), _run(92.0)]},
        "bare_rss_mb": {"demo tflite": 100.0},
        "deploy": {
            "camera": {
                "camera_fps": 30.0,
                "deployed": True,
                "versions": ["1.0.0", "1.1.0"],
                "deploy_s": 1.0,
                "median_gap_ms": 10.0,
                "largest_gap_ms": 25.0,
                "largest_arrival_gap_ms": 30.0,
                "lost": 0,
            }
        },
        "trainer": {"skipped": "no TensorFlow"},
    }
    t = report.throughput(fig)["demo tflite/video"]
    assert t["c/a"] == pytest.approx(0.95) and t["c/b"] == pytest.approx(1.8)
    text = report.document(fig, "make bench")
    assert "| demo tflite/video | 100.0 | 50.0 | 90.0 | 0.95 ✓ | 1.80 ✓ | 0 |" in text
    assert "| demo tflite | 30.0 | 10.00 | 5.0 | 9.0 ✓ | 40.0 |" in text  # p99 against 2 x 10 + 20
    assert "| 10 | 100.0 | 92.0 | 0.92 ✓ | 0 |" in text
    assert "| 10.00 | n/a | 25.00 | 2.50 ✗ |" in text  # the deploy's gap: 25 ms against a 10 ms median
    assert "| n/a | 50.0 ✓ |" in text  # 150 MiB against a 100 MiB bare script
    assert "no TensorFlow" in text
    assert math.isnan(report._median([float("nan")]))
