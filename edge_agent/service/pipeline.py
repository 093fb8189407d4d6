"""The frame pipeline: capture, inference and publishing overlap in three threads.

- The capture thread reads the camera into a ``FrameBuffer``. In ``live`` mode the buffer holds
  one frame and a newer one replaces it (the replaced frame is counted as dropped), so inference
  always works on the newest picture. In ``every`` mode it is a short queue and capture waits for
  room, so every frame is processed.
- The inference thread prepares a frame and submits it to the backend, keeping up to
  ``backend.max_in_flight`` requests outstanding (an NCS2 needs several to reach its throughput);
  while the accelerator runs one request, the next frame is captured and pre-processed.
- The emit thread decodes each frame's outputs (NMS, mapping boxes to the frame) and hands the
  result to ``on_result`` (JSON, the on-disk outbox, MQTT), so neither decoding nor a slow disk
  or broker holds up the next inference. Results, failures included, reach it in frame order,
  and it alone counts failures in a row.

A model swap happens between two frames: the inference thread finishes every request of the old
detector, then switches, so each frame is processed by exactly one model and none is lost.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Literal, Optional

from ..backends.base import Pending
from ..decoders.base import OutputTensor
from ..detector import Detector
from ..errors import EdgewatchError, SourceError
from ..messages import DetectionOut, ImageSize, Latency
from ..preprocess import Transform
from ..sources.base import Frame, FrameSource

log = logging.getLogger(__name__)

Mode = Literal["live", "every"]
# A camera call (open or read) that has not returned for this long is wedged: above OpenCV's own
# 10 s stream timeout, below the unit's WatchdogSec=30, so systemd restarts the service.
WEDGED_SOURCE_S = 20.0
EVERY_QUEUE = 4  # frames captured ahead in `every` mode: enough to overlap, small enough for memory
# Frames with their raw outputs waiting for the emit thread: enough to ride out a slow write to
# the outbox, few enough that memory stays flat (a 640x480 frame is 0.9 MB, a yolov8n at 640
# outputs 2.7 MB). When the emit thread falls behind, inference waits: in `every` mode that
# holds capture back, in `live` mode the camera's newer frames replace the waiting one.
RESULTS_QUEUE = 8
RESULTS_BYTES = 32 * 1024 * 1024  # frames and outputs together


@dataclass(frozen=True)
class Processed:
    """One frame and what the detector that processed it found."""

    frame: Frame
    number: int  # the pipeline's own frame counter (sources restart theirs on reopen)
    detector: Detector
    detections: List[DetectionOut]
    image: ImageSize
    latency: Latency


class FrameBuffer:
    """Hands frames from the capture thread to the inference thread (see the module docstring)."""

    def __init__(self, mode: Mode, capacity: int = EVERY_QUEUE):
        self.mode = mode
        self.capacity = 1 if mode == "live" else capacity
        self._frames: Deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._dropped = 0  # the one count of frames never processed (/metrics, status)

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    def discard(self) -> None:
        """Drop what waits (``live`` mode while paused or without a model), counting it."""
        with self._cond:
            self._dropped += len(self._frames)
            self._frames.clear()
            self._cond.notify_all()

    def put(self, frame: Frame) -> bool:
        """False once the buffer is closed (the pipeline is stopping)."""
        with self._cond:
            if self.mode == "live":
                if self._frames:
                    self._frames.popleft()
                    self._dropped += 1
            else:
                while len(self._frames) >= self.capacity and not self._closed:
                    self._cond.wait(0.5)
            if self._closed:
                return False
            self._frames.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Optional[Frame]:
        with self._cond:
            if not self._frames and timeout > 0:
                self._cond.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


@dataclass
class Stats:
    """Measured by the pipeline, read by status messages, /metrics and STATUS=."""

    buffer: Optional[FrameBuffer] = None  # whose count of dropped frames this reports
    captured: int = 0
    processed: int = 0
    fps: float = 0.0
    inference_ms: float = 0.0
    camera: str = "ok"  # ok | lost
    last_frame_ts: Optional[float] = None
    _window: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=64))

    def frame_done(self, inference_ms: float) -> None:
        now = time.monotonic()
        self._window.append(now)
        self.processed += 1
        self.last_frame_ts = time.time()
        # Exponential moving average: steady, and reacts within ~10 frames to a model swap.
        a = 0.1 if self.processed > 1 else 1.0
        self.inference_ms = (1 - a) * self.inference_ms + a * inference_ms
        w = self._window
        if len(w) >= 2 and now - w[0] > 0:
            self.fps = (len(w) - 1) / (now - w[0])

    @property
    def dropped(self) -> int:
        return self.buffer.dropped if self.buffer is not None else 0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "captured": self.captured,
            "processed": self.processed,
            "dropped": self.dropped,
            "fps": round(self.fps, 2),
            "inference_ms": round(self.inference_ms, 2),
            "camera": self.camera,
        }


@dataclass
class _InFlight:
    frame: Frame  # numbered by the pipeline (frame.index)
    detector: Detector
    transform: Optional[Transform]  # None: the frame failed before the backend took it
    pending: Pending
    t_submit: float


@dataclass
class _Outcome:
    """What the inference thread hands the emit thread for one frame: the raw outputs to
    decode, or the error that failed the frame."""

    frame: Frame
    detector: Detector
    transform: Optional[Transform] = None
    outputs: Optional[List[OutputTensor]] = None
    inference_ms: float = 0.0
    error: Optional[Exception] = None
    size: int = 0  # bytes of the frame and its outputs


class _Failed(Pending):
    """A frame that failed before the backend took it: it keeps its place in the frame order."""

    def __init__(self, error: Exception):
        self.error = error

    def result(self) -> List[OutputTensor]:
        raise self.error


@dataclass
class _SwapRequest:
    detector: Optional[Detector]
    done: threading.Event = field(default_factory=threading.Event)
    previous: Optional[Detector] = None


class Pipeline:
    def __init__(
        self,
        source: FrameSource,
        mode: Mode,
        on_result: Callable[[Processed], None],
        on_event: Callable[[str, Dict[str, Any]], None] = lambda kind, data: None,
        heartbeat: Callable[[], None] = lambda: None,
        reopen_delays: tuple = (0.5, 30.0),
        on_failing: Callable[[Detector, str], None] = lambda detector, reason: None,
        failure_limit: int = 10,
        wedged_source_s: float = WEDGED_SOURCE_S,
    ):
        self.source = source
        self.mode: Mode = mode
        self.on_result = on_result
        self.on_event = on_event
        self.heartbeat = heartbeat
        self.reopen_delays = reopen_delays
        self.on_failing = on_failing
        self.failure_limit = failure_limit
        self.wedged_source_s = wedged_source_s
        # When the capture thread entered source.open()/read(), while it is inside one.
        self._source_call_since: Optional[float] = None
        self._wedged_said = False
        self._failures = 0  # frames failed in a row (the emit thread's)
        self._failing: Optional[Detector] = None  # whose failures those are
        self.detector: Optional[Detector] = None
        self.buffer = FrameBuffer(mode)
        self.stats = Stats(self.buffer)
        self.ended = threading.Event()  # a finite source (file, image folder) ran out
        self._results: queue.Queue[Optional[_Outcome]] = queue.Queue(maxsize=RESULTS_QUEUE)
        self._queued_bytes = 0  # of the frames and outputs in _results
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._swap: Optional[_SwapRequest] = None
        self._swap_lock = threading.Lock()
        self._first_result = threading.Event()
        self._threads: List[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------
    def start(self, detector: Optional[Detector]) -> None:
        self.detector = detector
        for name, target in (("capture", self._capture), ("inference", self._infer), ("emit", self._emit)):
            t = threading.Thread(target=target, name=f"edge-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def swap(self, detector: Optional[Detector], timeout: float = 30.0) -> Optional[Detector]:
        """Switch to ``detector`` between two frames; returns the previous one (not closed).

        Raises EdgewatchError when the inference thread does not reach a frame boundary in time
        (a hung accelerator): then nothing was switched."""
        req = _SwapRequest(detector)
        with self._swap_lock:
            if self._swap is not None:
                raise EdgewatchError("another model switch is in progress")
            self._swap = req
        if not req.done.wait(timeout):
            with self._swap_lock:
                if self._swap is req:  # not picked up: withdraw it
                    self._swap = None
                    raise EdgewatchError(f"the pipeline did not reach a frame boundary within {timeout:g} s")
            req.done.wait()  # picked up just now: the switch is happening, wait for it
        return req.previous

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def wait_first_result(self, timeout: float) -> bool:
        return self._first_result.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frames in flight, publish their results, stop the threads."""
        self._stop.set()
        self.buffer.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        try:
            self.source.close()
        except Exception as e:  # closing a failed camera may fail again; nothing to recover
            log.debug("closing %s: %s", self.source.spec, e)

    # -- capture ---------------------------------------------------------------------------
    def _capture(self) -> None:
        opened, lost = False, False
        delay = self.reopen_delays[0]
        number = 0
        while not self._stop.is_set():
            if not opened:
                try:
                    with self._source_call():
                        self.source.open()
                    opened = True
                except SourceError as e:
                    lost = self._camera_lost(lost, str(e))
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.reopen_delays[1])
                    continue
            try:
                with self._source_call():
                    frame = self.source.read()
            except SourceError as e:
                lost = self._camera_lost(lost, str(e))
                opened = False
                try:
                    self.source.close()
                except Exception as ce:  # the device is already gone
                    log.debug("closing %s: %s", self.source.spec, ce)
                self._stop.wait(delay)
                delay = min(delay * 2, self.reopen_delays[1])
                continue
            if frame is None:
                log.info("%s: end of the source", self.source.spec)
                self.ended.set()
                return
            if lost:
                lost = False
                self.stats.camera = "ok"
                log.info("%s: camera restored", self.source.spec)
                self.on_event("camera_restored", {"source": self.source.spec})
            delay = self.reopen_delays[0]
            # The pipeline numbers frames itself: a reopened source restarts its own index.
            frame = Frame(frame.image, number, frame.timestamp, frame.source, frame.truth)
            number += 1
            self.stats.captured += 1
            if not self.buffer.put(frame):
                return

    @contextlib.contextmanager
    def _source_call(self) -> Iterator[None]:
        self._source_call_since = time.monotonic()
        try:
            yield
        finally:
            self._source_call_since = None

    def _beat(self) -> None:
        """``heartbeat`` (systemd's WATCHDOG=1) from the inference loop, so a hung accelerator call
        stops it; and not while a camera call has hung for ``wedged_source_s`` (a wedged driver
        gives neither a frame nor an error, and only a restart mends it). A camera that fails is
        re-opened here, with the pings going on."""
        since = self._source_call_since
        if since is not None and time.monotonic() - since > self.wedged_source_s:
            if not self._wedged_said:
                self._wedged_said = True
                log.error(
                    "%s: a camera call has not returned for %.0f s; stopping the watchdog pings "
                    "so that systemd restarts the service",
                    self.source.spec,
                    time.monotonic() - since,
                )
            return
        self._wedged_said = False
        self.heartbeat()

    def _camera_lost(self, already: bool, reason: str) -> bool:
        if not already:
            self.stats.camera = "lost"
            log.warning("%s: camera lost: %s", self.source.spec, reason)
            self.on_event("camera_lost", {"source": self.source.spec, "detail": reason})
        return True

    # -- inference -------------------------------------------------------------------------
    def _infer(self) -> None:
        inflight: Deque[_InFlight] = collections.deque()
        try:
            while True:
                self._beat()
                if self._swap is not None:
                    self._drain(inflight)
                    self._do_swap()
                if self._stop.is_set():
                    self._drain(inflight)
                    return
                detector = self.detector
                if detector is None or self._paused.is_set():
                    self._drain(inflight)
                    if self.mode == "live":
                        # keep the newest frame fresh: discard what arrives while idle
                        self.buffer.discard()
                    self._stop.wait(0.05)
                    continue
                frame = self.buffer.get(0 if inflight else 0.2)
                if frame is not None:
                    self._submit(detector, frame, inflight)
                if inflight and (frame is None or len(inflight) >= detector.backend.max_in_flight):
                    self._complete(inflight.popleft())
        finally:
            self._results.put(None)

    def _submit(self, detector: Detector, frame: Frame, inflight: Deque[_InFlight]) -> None:
        t = time.perf_counter()
        try:
            tensor, transform = detector.prepare(frame.image)
            t = time.perf_counter()
            pending = detector.backend.submit(tensor)
        except Exception as e:
            inflight.append(_InFlight(frame, detector, None, _Failed(e), t))
            return
        inflight.append(_InFlight(frame, detector, transform, pending, t))

    def _complete(self, job: _InFlight) -> None:
        """Wait for a frame's outputs and queue them for decoding on the emit thread."""
        try:
            outputs = job.pending.result()
        except Exception as e:
            self._results.put(_Outcome(job.frame, job.detector, error=e))
            return
        t_done = time.perf_counter()
        # The runtime's own start and end where it tells them: queued behind another request,
        # the time since submit is not this inference's.
        p = job.pending
        started = job.t_submit if p.started is None else max(job.t_submit, p.started)
        finished = t_done if p.finished is None else p.finished
        inference_ms = max(0.0, finished - started) * 1000
        size = job.frame.image.nbytes + sum(o.data.nbytes for o in outputs)
        with self._room:
            # One frame always goes in, however large: the emit thread is never left waiting.
            while self._queued_bytes and self._queued_bytes + size > RESULTS_BYTES:
                self._room.wait(0.5)
            self._queued_bytes += size
        self._results.put(_Outcome(job.frame, job.detector, job.transform, outputs, inference_ms, size=size))

    def _drain(self, inflight: Deque[_InFlight]) -> None:
        while inflight:
            self._complete(inflight.popleft())

    def _do_swap(self) -> None:
        with self._swap_lock:
            req, self._swap = self._swap, None
        if req is None:
            return
        req.previous, self.detector = self.detector, req.detector
        req.done.set()

    def _failed_frame(self, frame: Frame, detector: Detector, error: Exception) -> None:
        # A frame the backend cannot process is reported and skipped: the service keeps running.
        # An accelerator that went away (a Coral pulled out) fails every frame: report the 1st,
        # 10th, 100th... failure in a row rather than each one, and after `failure_limit` in a
        # row ask the owner (on_failing) to bring up a working detector. The count starts again
        # with another detector (a swap).
        if detector is not self._failing:
            self._failing, self._failures = detector, 0
        self._failures += 1
        n = self._failures
        if n == 1 or math.log10(n).is_integer():
            log.error("frame %d: inference failed (%d in a row): %s", frame.index, n, error)
            self.on_event("inference_failed", {"frame": frame.index, "in_a_row": n, "detail": str(error)})
        if n == self.failure_limit:
            self.on_failing(detector, str(error))

    # -- emit ------------------------------------------------------------------------------
    def _processed(self, outcome: _Outcome) -> Optional[Processed]:
        """Decode a frame's outputs; None when it failed (reported, counted)."""
        frame, detector = outcome.frame, outcome.detector
        try:
            if outcome.error is not None:
                raise outcome.error
            assert outcome.outputs is not None and outcome.transform is not None
            detections = detector.decode(outcome.outputs, outcome.transform)
        except Exception as e:
            self._failed_frame(frame, detector, e)
            return None
        self._failures = 0
        total_ms = max(0.0, (time.time() - frame.timestamp) * 1000)
        self.stats.frame_done(outcome.inference_ms)
        self._first_result.set()
        return Processed(
            frame=frame,
            number=frame.index,
            detector=detector,
            detections=detections,
            image=ImageSize(width=frame.width, height=frame.height),
            latency=Latency(inference=round(outcome.inference_ms, 2), total=round(total_ms, 2)),
        )

    def _emit(self) -> None:
        failures = 0  # in a row
        while True:
            outcome = self._results.get()
            if outcome is None:
                return
            if outcome.size:
                with self._room:
                    self._queued_bytes -= outcome.size
                    self._room.notify()
            number = outcome.frame.index
            try:
                item = self._processed(outcome)
                if item is None:
                    continue
                self.on_result(item)
                failures = 0
            except EdgewatchError as e:  # e.g. the outbox on a full disk: the 1st, 10th, 100th…
                failures += 1
                if failures == 1 or math.log10(failures).is_integer():
                    log.error("frame %d: publishing failed (%d in a row): %s", number, failures, e)
            except Exception:
                log.exception("publishing frame %d failed", number)
