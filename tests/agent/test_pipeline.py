"""The frame pipeline with a real model (the trainer-made test bundle on TFLite) and the
synthetic camera: every frame exactly once, swaps between frames, live-mode drops, camera loss."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.loading import open_detector
from edge_agent.messages import BoxOut, DetectionOut
from edge_agent.service.pipeline import FrameBuffer, Pipeline, Processed
from edge_agent.service.publishing import PublishPolicy
from edge_agent.sources.base import Frame, FrameSource
from edge_agent.sources.synthetic import SyntheticSource
from tests.waiting import holds_for, wait_for


class Collector:
    def __init__(self) -> None:
        self.items: List[Processed] = []
        self.events: List[Tuple[str, Dict[str, Any]]] = []
        self.lock = threading.Lock()

    def result(self, p: Processed) -> None:
        with self.lock:
            self.items.append(p)

    def event(self, kind: str, data: Dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, data))


@pytest.fixture(scope="module")
def detectors(models_dir: Path):
    a, _ = open_detector(str(models_dir / "shapes"), "tflite")
    b, _ = open_detector(str(models_dir / "shapes-fp32"), "tflite")
    yield a, b
    a.close()
    b.close()


def test_every_mode_processes_each_frame_once_in_order(detectors):
    a, _ = detectors
    out = Collector()
    pipe = Pipeline(SyntheticSource("synthetic:3", 320, 240, frames=40), "every", out.result, out.event)
    pipe.start(a)
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 40)
    pipe.stop()
    assert [p.number for p in out.items] == list(range(40))
    assert pipe.stats.processed == 40 and pipe.stats.dropped == 0
    # the synthetic scene always shows shapes: the real model finds them
    assert sum(1 for p in out.items if p.detections) >= 30
    assert pipe.stats.fps > 0 and pipe.stats.inference_ms > 0


def test_swap_happens_between_two_frames_and_loses_none(detectors):
    a, b = detectors
    out = Collector()
    source = SyntheticSource("synthetic:4", 320, 240, fps=200, frames=300)
    pipe = Pipeline(source, "every", out.result, out.event)
    pipe.start(a)
    wait_for(lambda: len(out.items) >= 30)
    previous = pipe.swap(b)
    assert previous is a
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 300)
    pipe.stop()
    numbers = [p.number for p in out.items]
    assert numbers == list(range(300))
    versions = ["a" if p.detector is a else "b" for p in out.items]
    boundary = versions.index("b")
    assert boundary >= 30
    assert versions == ["a"] * boundary + ["b"] * (300 - boundary)


class FastSource(FrameSource):
    """A camera faster than any model: the same picture, as quickly as asked, `count` times."""

    def __init__(self, count: int):
        self.spec = "fast"
        self.count = count
        self.image, _ = SyntheticSource("synthetic:1", 320, 240).generator.render(0)
        self.i = 0

    def open(self) -> None:
        pass

    def read(self) -> Optional[Frame]:
        if self.i >= self.count:
            return None
        self.i += 1
        return Frame(self.image, self.i, time.time(), self.spec)

    def close(self) -> None:
        pass

    @property
    def is_live(self) -> bool:
        return True


def test_live_mode_keeps_the_newest_frame_and_counts_drops(detectors):
    a, _ = detectors
    out = Collector()
    pipe = Pipeline(FastSource(2000), "live", out.result, out.event)
    pipe.start(a)
    wait_for(lambda: pipe.ended.is_set())
    # every frame taken from the buffer, the one in flight too, is processed or dropped
    s = pipe.stats
    wait_for(
        lambda: (
            len(pipe.buffer) == 0 and s.processed + s.dropped == s.captured and len(out.items) == s.processed
        ),
        what=lambda: f"every frame accounted for ({s.processed} + {s.dropped} of {s.captured})",
    )
    pipe.stop()
    s = pipe.stats
    assert s.captured == 2000
    # nothing is unaccounted for: each captured frame was processed or counted as dropped
    assert s.processed + s.dropped == s.captured
    numbers = [p.number for p in out.items]
    assert numbers == sorted(numbers)


class FlakyCamera(SyntheticSource):
    """A synthetic camera that fails once on frame 5 and then twice on re-open (USB unplugged)."""

    def __init__(self) -> None:
        super().__init__("synthetic:2", 320, 240, frames=20)
        self.reads = 0
        self.failed_opens = 0
        self.broken = False

    def open(self) -> None:
        if self.broken and self.failed_opens < 2:
            self.failed_opens += 1
            raise SourceError("usb:0: no such device")
        self.broken = False
        super().open()

    def read(self) -> Optional[Frame]:
        self.reads += 1
        if self.reads == 6:
            self.broken = True
            raise SourceError("usb:0: read failed")
        return super().read()


def test_camera_loss_is_reported_retried_and_restored(detectors):
    a, _ = detectors
    out = Collector()
    pipe = Pipeline(FlakyCamera(), "every", out.result, out.event, reopen_delays=(0.01, 0.05))
    pipe.start(a)
    wait_for(lambda: pipe.ended.is_set())
    wait_for(lambda: len(out.items) == pipe.stats.captured)
    pipe.stop()
    kinds = [k for k, _ in out.events]
    assert kinds == ["camera_lost", "camera_restored"]
    assert "read failed" in out.events[0][1]["detail"]
    assert pipe.stats.camera == "ok"
    # 5 frames before the failure, then the re-opened clip from its start: numbering continues
    assert [p.number for p in out.items] == list(range(5 + 20))


def test_pause_stops_processing_and_resume_loses_nothing_in_every_mode(detectors):
    a, _ = detectors
    out = Collector()
    pipe = Pipeline(SyntheticSource("synthetic:5", 320, 240, fps=100, frames=80), "every", out.result)
    pipe.start(a)
    wait_for(lambda: len(out.items) >= 10)
    pipe.pause()
    time.sleep(0.1)  # a deliberate sleep: grace for the frame being inferred when the pause came
    n = len(out.items)
    holds_for(lambda: len(out.items) == n, 0.3, "nothing processed while paused")
    pipe.resume()
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 80)
    pipe.stop()
    assert [p.number for p in out.items] == list(range(80))


def test_heartbeat_runs_without_a_model_and_a_first_model_can_be_swapped_in(detectors):
    a, _ = detectors
    out = Collector()
    beats = []
    pipe = Pipeline(
        SyntheticSource("synthetic:6", 320, 240, fps=100),
        "live",
        out.result,
        heartbeat=lambda: beats.append(1),
    )
    pipe.start(None)
    wait_for(lambda: len(beats) > 5)
    assert out.items == []
    assert pipe.swap(a) is None
    wait_for(lambda: len(out.items) >= 3)
    pipe.stop()


class WedgedAfter(SyntheticSource):
    """A camera whose driver hangs after ``n`` frames: read() neither returns nor raises until
    ``release`` is set (a wedged V4L2 or libcamera call). ``hung_at``: when it started hanging."""

    def __init__(self, n: int) -> None:
        super().__init__("synthetic:9", 160, 120, fps=200)
        self.n = n
        self.release = threading.Event()
        self.hung = threading.Event()
        self.hung_at = 0.0

    def read(self) -> Optional[Frame]:
        if self.n <= 0 and not self.release.is_set():
            self.hung_at = time.monotonic()
            self.hung.set()
            self.release.wait(30)
        self.n -= 1
        return super().read()


@pytest.mark.parametrize("mode", ["live", "every"])
def test_a_wedged_camera_read_stops_the_watchdog_pings_until_it_returns(detectors, mode):
    """systemd restarts a service that stops its WATCHDOG=1 pings: a camera call that hangs (no
    frame, no error) must stop them, as a hung accelerator call does; a camera that merely
    fails is re-opened in-process with the pings going on (test_camera_loss_…)."""
    a, _ = detectors
    out = Collector()
    beats: List[float] = []
    source = WedgedAfter(5)
    pipe = Pipeline(
        source, mode, out.result, heartbeat=lambda: beats.append(time.monotonic()), wedged_source_s=0.5
    )
    pipe.start(a)
    wait_for(lambda: source.hung.is_set() and len(out.items) >= 1)
    time.sleep(2.5)  # a deliberate sleep: the watch window itself, pings must stop 0.5 s into it
    late = [t for t in beats if t > source.hung_at + 1.5]
    assert late == [], f"{len(late)} pings while the camera read hung"
    processed = len(out.items)
    source.release.set()
    wait_for(lambda: len(out.items) >= processed + 3)  # frames flow again
    wait_for(lambda: beats[-1] > source.hung_at + 2.5)  # and so do the pings
    pipe.stop()


def test_frame_buffer_every_mode_blocks_instead_of_dropping():
    buf = FrameBuffer("every", capacity=2)
    img = np.zeros((2, 2, 3), np.uint8)
    assert buf.put(Frame(img, 0, 0.0, "x")) and buf.put(Frame(img, 1, 0.0, "x"))
    t = threading.Thread(target=lambda: buf.put(Frame(img, 2, 0.0, "x")))
    t.start()
    holds_for(t.is_alive, 0.1, "the producer blocked on the full buffer")  # full: the producer waits
    got = buf.get(0)
    assert got is not None and got.index == 0
    t.join(2)
    assert [buf.get(0).index, buf.get(0).index] == [1, 2]  # type: ignore[union-attr]
    assert buf.dropped == 0


def _det(label: str, x: float) -> DetectionOut:
    return DetectionOut(
        label=label, class_id=0, score=0.9, box=BoxOut(xmin=x, ymin=0.1, xmax=x + 0.2, ymax=0.3)
    )


def test_publish_policy_modes_and_rate():
    every = PublishPolicy("all")
    assert every.decide([], 0.0) and every.decide([], 0.01)
    dets = PublishPolicy("detections")
    assert not dets.decide([], 0.0) and dets.decide([_det("a", 0.1)], 0.0)
    changes = PublishPolicy("changes", move_threshold=0.05)
    assert changes.decide([_det("a", 0.1)], 0.0)
    assert not changes.decide([_det("a", 0.12)], 0.1)  # moved 0.02: no change
    assert changes.decide([_det("a", 0.2)], 0.2)  # moved 0.1 from the last published
    assert changes.decide([_det("a", 0.2), _det("b", 0.5)], 0.3)  # a new label
    assert changes.decide([], 0.4)  # everything left
    assert not changes.decide([], 0.5)
    capped = PublishPolicy("all", max_rate_hz=2)
    sent = [t / 10 for t in range(20) if capped.decide([], t / 10)]
    assert sent == [0.0, 0.5, 1.0, 1.5]


class Unplugged(Exception):
    pass


def test_a_detector_failing_every_frame_is_reported_sparingly_and_handed_over(detectors, monkeypatch):
    """An accelerator pulled out mid-run fails every frame: 1st and 10th failure reported, the
    owner asked once to bring up a replacement, and frames flow again after the swap."""
    a, b = detectors
    out = Collector()
    failing: List[str] = []
    pipe = Pipeline(
        SyntheticSource("synthetic:8", 320, 240, fps=200, frames=200),
        "every",
        out.result,
        out.event,
        on_failing=lambda detector, reason: failing.append(reason),
        failure_limit=10,
    )

    def unplugged(tensor: Any) -> Any:
        raise Unplugged("EdgeTPU usb:0: device disconnected")

    pipe.start(a)
    wait_for(lambda: len(out.items) >= 5)
    monkeypatch.setattr(a.backend, "submit", unplugged)  # the thinnest boundary: the device call
    wait_for(lambda: len(failing) == 1)
    wait_for(lambda: sum(1 for k, _ in out.events if k == "inference_failed") == 2)
    pipe.swap(b)
    n = len(out.items)
    wait_for(lambda: pipe.ended.is_set() and len(out.items) > n + 20)
    pipe.stop()
    reported = [d["in_a_row"] for k, d in out.events if k == "inference_failed"]
    assert reported[:2] == [1, 10] and failing == ["EdgeTPU usb:0: device disconnected"]
    assert all(p.detector is b for p in out.items[n:])


def test_each_result_is_its_own_frames_with_requests_overlapping(detectors):
    """Frames prepared while others run (max_in_flight 2), decoded on the emit thread: each
    frame's detections are exactly what the detector finds on that frame alone."""
    a, _ = detectors
    assert a.backend.max_in_flight >= 2
    out = Collector()
    pipe = Pipeline(SyntheticSource("synthetic:12", 320, 240, frames=30), "every", out.result, out.event)
    pipe.start(a)
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 30)
    pipe.stop()
    assert [p.number for p in out.items] == list(range(30))
    for p in out.items:
        assert p.detections == a.detect(p.frame.image).detections, f"frame {p.number}"
    assert sum(1 for p in out.items if p.detections) >= 20


def test_decoding_runs_on_the_emit_thread_and_its_failures_count_in_frame_order(detectors, monkeypatch):
    """A frame whose outputs cannot be decoded is reported and skipped like one the backend
    fails; a success ends a run of failures, and only the 1st, 10th... of a run is reported."""
    a, _ = detectors
    out = Collector()
    threads = set()
    real_decode = a.decode
    failing_frames = {5, 6, 7, 20}
    calls = [0]

    def decode(outputs: Any, transform: Any) -> Any:
        # called once per frame, in frame order: the n-th call decodes frame n
        threads.add(threading.current_thread().name)
        n, calls[0] = calls[0], calls[0] + 1
        if n in failing_frames:
            raise ValueError(f"bad outputs {n}")
        return real_decode(outputs, transform)

    monkeypatch.setattr(a, "decode", decode)
    pipe = Pipeline(SyntheticSource("synthetic:13", 320, 240, frames=40), "every", out.result, out.event)
    pipe.start(a)
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 36)
    pipe.stop()
    assert threads == {"edge-agent-emit"}
    assert [p.number for p in out.items] == [n for n in range(40) if n not in failing_frames]
    reported = [(d["frame"], d["in_a_row"]) for k, d in out.events if k == "inference_failed"]
    assert reported == [(5, 1), (20, 1)]
    assert pipe.stats.processed == 36


def test_a_detector_whose_outputs_never_decode_is_handed_over(detectors, monkeypatch):
    a, b = detectors
    out = Collector()
    failing: List[Any] = []
    pipe = Pipeline(
        SyntheticSource("synthetic:14", 320, 240, fps=200, frames=200),
        "every",
        out.result,
        out.event,
        on_failing=lambda detector, reason: failing.append((detector, reason)),
        failure_limit=10,
    )

    def broken(outputs: Any, transform: Any) -> Any:
        raise ValueError("the outputs make no sense")

    pipe.start(a)
    wait_for(lambda: len(out.items) >= 5)
    monkeypatch.setattr(a, "decode", broken)
    wait_for(lambda: len(failing) == 1)
    pipe.swap(b)
    n = len(out.items)
    wait_for(lambda: pipe.ended.is_set() and len(out.items) > n + 20)
    pipe.stop()
    assert failing == [(a, "the outputs make no sense")]
    reported = [d["in_a_row"] for k, d in out.events if k == "inference_failed"]
    assert reported[:2] == [1, 10]
    assert all(p.detector is b for p in out.items[n:])
    numbers = [p.number for p in out.items]
    assert numbers == sorted(numbers)


def test_outputs_waiting_for_a_stuck_publisher_are_bounded_in_bytes(detectors, monkeypatch):
    """Raw outputs queue for the emit thread up to RESULTS_BYTES (always at least one frame);
    past it the inference thread waits, and nothing is lost once publishing goes on."""
    from edge_agent.service import pipeline as pipeline_module

    a, _ = detectors
    monkeypatch.setattr(pipeline_module, "RESULTS_BYTES", 1)
    gate = threading.Event()
    out = Collector()

    def stuck(p: Processed) -> None:
        gate.wait()
        out.result(p)

    pipe = Pipeline(SyntheticSource("synthetic:15", 320, 240, frames=30), "every", stuck, out.event)
    pipe.start(a)
    wait_for(lambda: pipe._results.qsize() == 1, what="a frame queued behind the stuck one")
    holds_for(lambda: pipe._results.qsize() == 1, 0.5, what="no second frame queued")
    gate.set()
    wait_for(lambda: pipe.ended.is_set() and len(out.items) == 30)
    pipe.stop()
    assert [p.number for p in out.items] == list(range(30))
    assert pipe._queued_bytes == 0
