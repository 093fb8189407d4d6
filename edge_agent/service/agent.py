"""The service's composition root: wires the store, the pipeline, the MQTT link, the command
checker and the deployer together, and runs until SIGTERM.

Nothing here knows how a model runs, how MQTT retries or how a bundle is fetched; it decides
what happens when: which detector serves, what gets published, which command does what.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from pydantic import BaseModel

from .. import __version__
from ..annotate import draw_detections, encode_jpeg
from ..backends.base import Backend
from ..commands.args import DeployArgs, RollbackArgs, SetArgs
from ..commands.checker import Command, CommandChecker, CommandRejected
from ..commands.replay import SeenIds
from ..commands.results import CommandResult
from ..config import AgentConfig
from ..detector import Detector, Thresholds
from ..errors import EdgewatchError
from ..http_view import HttpView
from ..loading import open_detector
from ..messages import DetectionMessage, utc_now_iso
from ..mqtt.link import IncomingCommand, MqttLink
from ..mqtt.outbox import Outbox
from ..mqtt.topics import Topics
from ..sources import open_source
from ..sources.base import FrameSource
from ..store.deploy import Deployer, DeployFailed, StageTimeouts
from ..store.models import ModelStore, StoredVersion
from ..systemd import Notifier
from .pipeline import Pipeline, Processed
from .publishing import PublishPolicy
from .settings import RuntimeSettings

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
PROGRESS_STEP = 0.1  # publish download progress in steps of 10 % (and at least once a second)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        source: Optional[FrameSource] = None,
        stage_timeouts: Optional[StageTimeouts] = None,
    ):
        self.config = config
        self.source = source
        self.stage_timeouts = stage_timeouts or StageTimeouts()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._commands: queue.Queue[Optional[IncomingCommand]] = queue.Queue()
        self._last: Optional[Processed] = None
        self._previous_detector: Optional[Detector] = None
        self._deploy_thread: Optional[threading.Thread] = None
        self._switching = threading.Lock()  # one detector switch at a time: deploy or reload
        self._reloading = threading.Event()
        self.notifier = Notifier()
        self.pipeline: Optional[Pipeline] = None
        self.link: Optional[MqttLink] = None
        self.http: Optional[HttpView] = None

    # -- life cycle ------------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve until ``stop()`` or SIGTERM/SIGINT, then shut down cleanly."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        try:
            self._start()
            self._serve()
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        return self._stopped.wait(timeout)

    def _start(self) -> None:
        cfg = self.config
        root = Path(cfg.store.dir)
        self.store = ModelStore(root, cfg.store.keep_versions, int(cfg.store.max_bundle_mb * 1024 * 1024))
        for line in self.store.recover():
            log.warning("store: %s", line)
        self.settings = RuntimeSettings.load(root / "settings.json", cfg)
        self.policy = PublishPolicy(self.settings.effective.publish_mode, self.settings.effective.max_rate_hz)
        self.outbox = Outbox(root / "outbox.db", cfg.mqtt.buffer.max_messages)
        self.seen = SeenIds(root / "commands.db")
        self.checker = CommandChecker(cfg.commands, cfg.device, self.seen)
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, tuple(cfg.device.groups))
        self.link = MqttLink(
            cfg.mqtt,
            self.topics,
            self.outbox,
            on_command=self._commands.put,
            offline_status={"state": "offline", "agent_version": __version__},
        )
        self.deployer = Deployer(
            self.store,
            s3=cfg.s3,
            trusted_keys=self.checker.trusted_keys,
            build=self._build_for_deploy,
            activate=self._activate,
            close=_close_detector,
            timeouts=self.stage_timeouts,
        )
        detector = self._initial_detector()
        self.link.start()
        source = self.source or open_source(
            cfg.camera.source, cfg.camera.width, cfg.camera.height, cfg.camera.fps
        )
        self.pipeline = Pipeline(
            source,
            cfg.camera.mode,
            on_result=self._on_result,
            on_event=self._event,
            heartbeat=self.notifier.watchdog,
            on_failing=self._on_failing,
        )
        self.pipeline.start(detector)
        threading.Thread(target=self._command_loop, name="edge-agent-commands", daemon=True).start()
        if cfg.http.listen:
            self.http = HttpView(cfg.http.listen, self._snapshot_jpeg, self._health, self._metrics)
            self.http.start()
        self._publish_status()

    def _serve(self) -> None:
        assert self.pipeline is not None
        ready = False
        next_status = time.monotonic() + STATUS_INTERVAL_S
        while not self._stop.is_set():
            if not ready and (self.pipeline.detector is None or self.pipeline.wait_first_result(0)):
                # READY once the model is loaded and the camera delivers frames (or, with no model
                # yet, once the agent can take a deploy).
                self.notifier.ready(self._status_line())
                log.info("ready: %s", self._status_line())
                ready = True
            if self.pipeline.ended.is_set() and not self.pipeline.buffer:
                log.info("the camera source ended; stopping")
                break
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL_S
                self._publish_status()
                self.notifier.status(self._status_line())
            self._stop.wait(0.2)

    def _shutdown(self) -> None:
        self.notifier.stopping(f"stopping: {self._status_line()}")
        log.info("stopping")
        self._commands.put(None)
        if self.pipeline is not None:
            self.pipeline.stop()  # finishes the frames in flight; their messages reach the outbox
        if self._deploy_thread is not None:
            self._deploy_thread.join(5)
        if self.http is not None:
            self.http.stop()
        if self.link is not None:
            self.link.stop(self._status("stopped"), timeout=5.0)
        if self.pipeline is not None and self.pipeline.detector is not None:
            _close_detector(self.pipeline.detector)
        for closable in ("outbox", "seen"):
            if hasattr(self, closable):
                getattr(self, closable).close()
        self._stopped.set()

    # -- detectors -------------------------------------------------------------------------
    def _thresholds(self) -> Thresholds:
        s = self.settings.effective
        return Thresholds(
            score_threshold=s.score_threshold,
            iou_threshold=s.iou_threshold,
            # `set labels=` with an empty list clears the filter: every label is reported again
            labels=tuple(s.labels) if s.labels else None,
        )

    def _open(self, bundle_dir: Path, backend: Optional[str]) -> Detector:
        d = self.config.detector
        name = backend or d.backend
        device = d.device if name == d.backend else None
        try:
            detector, reasons = open_detector(str(bundle_dir), name, device, d.threads, self._thresholds())
        except EdgewatchError as e:
            if name == "auto":
                raise
            # The configured accelerator is missing (unplugged Coral, no NCS2): keep serving on
            # whatever auto finds, and say so.
            log.warning("backend %s unavailable (%s); falling back to auto", name, e)
            detector, reasons = open_detector(str(bundle_dir), "auto", None, d.threads, self._thresholds())
            reasons = [f"{name}: {e}", *reasons]
        # A backend skipped because the bundle has no artifact for it is not a fallback; one
        # skipped because its accelerator is missing or failed is (an unplugged Coral, say).
        fallbacks = [r for r in reasons if "the bundle has no" not in r]
        if fallbacks:
            self._event("backend_fallback", {"backend": detector.backend.name, "skipped": fallbacks})
        return detector

    def _initial_detector(self) -> Optional[Detector]:
        store = self.store
        if store.current() is None and self.config.model.bundle:
            sv = store.import_bundle(Path(self.config.model.bundle))
            store.set_current(sv)
            log.info("store: imported %s %s from model.bundle", sv.name, sv.version)
        # The current version first; if it cannot load on this device any more, an older one.
        for sv in store.versions():
            try:
                detector = self._open(sv.dir, None)
                try:
                    detector.warm()
                except Exception:
                    _close_detector(detector)
                    raise
            except EdgewatchError as e:
                log.error("%s %s does not load: %s", sv.name, sv.version, e)
                self._event("model_failed", {"model": _ref(sv), "stage": "loading", "detail": str(e)})
                continue
            if sv != store.current():
                store.set_current(sv)
            return detector
        log.warning("no model in the store and no model.bundle: waiting for a deploy command")
        return None

    def _build_for_deploy(self, bundle_dir: Path, backend: Optional[str]) -> Detector:
        return self._open(bundle_dir, backend)

    def _activate(self, detector: Detector) -> None:
        assert self.pipeline is not None
        with self._switching:
            self._previous_detector = self.pipeline.swap(detector, timeout=self.stage_timeouts.activating)

    # -- a failing accelerator -------------------------------------------------------------
    def _on_failing(self, failing: Detector, reason: str) -> None:
        """The pipeline's detector failed frame after frame (called on the inference thread)."""
        if self._reloading.is_set() or self.deployer.busy:
            return  # already on it, or a deploy is about to replace the detector anyway
        self._reloading.set()
        threading.Thread(
            target=self._reload, args=(failing, reason), name="edge-agent-reload", daemon=True
        ).start()

    def _reload(self, failing: Detector, reason: str) -> None:
        """Bring the current version up on a fresh backend (the configured one, or what auto
        finds when that accelerator is gone), retrying with backoff, and swap it in."""
        try:
            sv = self.store.current()
            if sv is None:
                return
            log.warning(
                "%s keeps failing (%s): reloading %s %s", failing.backend.name, reason, sv.name, sv.version
            )
            delay = 1.0
            while True:
                try:
                    fresh = self._open(sv.dir, None)
                    try:
                        fresh.warm()
                    except Exception:
                        _close_detector(fresh)
                        raise
                    break
                except EdgewatchError as e:
                    log.error("reloading %s %s failed: %s", sv.name, sv.version, e)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 60.0)
            with self._switching:
                if self.pipeline is None or self.pipeline.detector is not failing:
                    _close_detector(fresh)  # a deploy or rollback replaced it meanwhile
                    return
                old = self.pipeline.swap(fresh, timeout=self.stage_timeouts.activating)
            if old is not None:
                _close_detector(old)
            self._event(
                "backend_reloaded",
                {
                    "model": _ref(sv),
                    "backend": fresh.backend.name,
                    "accelerator": fresh.backend.accelerator,
                    "detail": reason,
                },
            )
            self._publish_status()
        finally:
            self._reloading.clear()

    # -- results ---------------------------------------------------------------------------
    def _on_result(self, p: Processed) -> None:
        self._last = p
        if not self.policy.decide(p.detections, time.monotonic()):
            return
        assert self.link is not None
        cfg = self.config

        def payload(seq: int) -> bytes:
            msg = DetectionMessage(
                device=cfg.device.id,
                ts=utc_now_iso(p.frame.timestamp),
                seq=seq,
                frame=p.number,
                model=p.detector.model,
                backend=p.detector.backend.name,
                image=p.image,
                latency_ms=p.latency,
                detections=p.detections,
            )
            return json.dumps(msg.to_json_dict(), separators=(",", ":")).encode()

        self.link.publish_detection(payload)
        if cfg.publish.snapshots:
            self._maybe_snapshot()

    _last_snapshot = 0.0

    def _maybe_snapshot(self) -> None:
        now = time.monotonic()
        if now - self._last_snapshot >= 1.0:  # at most one JPEG a second on the wire
            self._last_snapshot = now
            jpeg = self._snapshot_jpeg()
            if jpeg is not None and self.link is not None:
                self.link.publish_snapshot(jpeg)

    def _snapshot_jpeg(self) -> Optional[bytes]:
        p = self._last
        if p is None:
            return None
        m = p.detector.model
        fps = self.pipeline.stats.fps if self.pipeline else 0.0
        caption = f"{m.name} {m.version} - {p.detector.backend.name} - {fps:.1f} fps"
        return encode_jpeg(draw_detections(p.frame.image, p.detections, caption))

    def _event(self, kind: str, data: Dict[str, Any]) -> None:
        if self.link is not None:
            self.link.publish_event({"type": kind, "ts": utc_now_iso(), **data})

    # -- status ----------------------------------------------------------------------------
    def _status(self, state: str = "online") -> Dict[str, Any]:
        p = self.pipeline
        detector = p.detector if p else None
        stats = p.stats if p else None
        status: Dict[str, Any] = {
            "state": state,
            "ts": utc_now_iso(),
            "agent_version": __version__,
            "model": detector.model.to_json_dict() if detector else None,
            "backend": detector.backend.name if detector else None,
            "accelerator": detector.backend.accelerator if detector else None,
            "fps": round(stats.fps, 2) if stats else 0.0,
            "inference_ms": round(stats.inference_ms, 2) if stats else None,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "camera": stats.camera if stats else "ok",
            "paused": bool(p and p.paused),
            "frames": stats.processed if stats else 0,
            "dropped": stats.dropped if stats else 0,
            "queued": len(self.outbox) if hasattr(self, "outbox") else 0,
        }
        return status

    def _status_line(self) -> str:
        p = self.pipeline
        d = p.detector if p else None
        if d is None:
            return "no model: waiting for a deploy"
        stats = p.stats if p else None
        fps = stats.fps if stats else 0.0
        paused = " (paused)" if p and p.paused else ""
        where = f"{d.backend.name}/{d.backend.accelerator}"
        return f"{d.model.name} {d.model.version} on {where}, {fps:.1f} fps{paused}"

    def _publish_status(self) -> None:
        if self.link is not None:
            self.link.publish_status(self._status())

    def _health(self) -> Tuple[bool, Dict[str, Any]]:
        status = self._status()
        p = self.pipeline
        fresh = bool(p and p.stats.last_frame_ts and time.time() - p.stats.last_frame_ts < 10)
        healthy = bool(p and p.detector is not None and status["camera"] == "ok" and (fresh or p.paused))
        status["mqtt"] = "connected" if self.link is not None and self.link.connected else "disconnected"
        return healthy, status

    def _metrics(self) -> str:
        s = self._status()
        lines = [
            "# TYPE edgewatch_frames_processed_total counter",
            f"edgewatch_frames_processed_total {s['frames']}",
            "# TYPE edgewatch_frames_dropped_total counter",
            f"edgewatch_frames_dropped_total {s['dropped']}",
            "# TYPE edgewatch_fps gauge",
            f"edgewatch_fps {s['fps']}",
            "# TYPE edgewatch_inference_ms gauge",
            f"edgewatch_inference_ms {s['inference_ms'] or 0}",
            "# TYPE edgewatch_outbox_messages gauge",
            f"edgewatch_outbox_messages {s['queued']}",
            "# TYPE edgewatch_mqtt_connected gauge",
            f"edgewatch_mqtt_connected {int(bool(self.link and self.link.connected))}",
            "# TYPE edgewatch_paused gauge",
            f"edgewatch_paused {int(s['paused'])}",
        ]
        if s["model"]:
            m = s["model"]
            lines += [
                "# TYPE edgewatch_model_info gauge",
                f'edgewatch_model_info{{name="{m["name"]}",version="{m["version"]}",'
                f'backend="{s["backend"]}"}} 1',
            ]
        return "\n".join(lines) + "\n"

    # -- commands --------------------------------------------------------------------------
    def _command_loop(self) -> None:
        while True:
            incoming = self._commands.get()
            if incoming is None:
                return
            try:
                self._handle(incoming)
            except Exception:
                # A bad command never stops the service.
                log.exception("command on %s failed", incoming.topic)

    def _result(
        self,
        command_id: str,
        status: str,
        reply_to: Optional[IncomingCommand],
        stage: Optional[str] = None,
        detail: Optional[str] = None,
        progress: Optional[float] = None,
        data: Optional[Dict[str, Any]] = None,
    ) -> None:
        result = CommandResult(
            id=command_id,
            device=self.config.device.id,
            ts=utc_now_iso(),
            status=status,
            stage=stage,
            detail=detail,
            progress=None if progress is None else round(progress, 3),
            data=data,
        )
        assert self.link is not None
        self.link.publish_result(result.to_json_dict(), reply_to)

    def _handle(self, incoming: IncomingCommand) -> None:
        try:
            cmd = self.checker.check(incoming.payload)
        except CommandRejected as r:
            if r.command_id is None:
                log.warning("dropped a command on %s: %s", incoming.topic, r.reason)
            else:
                log.warning("rejected command %s: %s", r.command_id, r.reason)
                self._result(r.command_id, "rejected", incoming, detail=r.reason)
            return
        log.info("command %s: %s %s", cmd.id, cmd.type, _args_text(cmd.args))
        handler = getattr(self, f"_cmd_{cmd.type}")
        handler(cmd, incoming)

    def _reporter(
        self, cmd: Command, reply_to: IncomingCommand
    ) -> Callable[[str, Optional[float], Optional[str]], None]:
        last: Dict[str, Any] = {"stage": None, "progress": -1.0, "t": 0.0}

        def report(stage: str, progress: Optional[float], detail: Optional[str]) -> None:
            now = time.monotonic()
            same_stage = stage == last["stage"] and progress is not None and progress < 1.0
            if same_stage and progress - last["progress"] < PROGRESS_STEP and now - last["t"] < 1.0:
                return
            last.update(stage=stage, progress=progress if progress is not None else -1.0, t=now)
            self._result(cmd.id, "in_progress", reply_to, stage=stage, progress=progress, detail=detail)

        return report

    def _start_swap(
        self, cmd: Command, reply_to: IncomingCommand, work: Callable[..., StoredVersion]
    ) -> None:
        if not self.deployer.try_begin():
            self._result(
                cmd.id, "rejected", reply_to, detail="busy: another deploy or rollback is in progress"
            )
            return
        self._result(cmd.id, "accepted", reply_to)

        def run() -> None:
            report = self._reporter(cmd, reply_to)
            old = self.pipeline.detector if self.pipeline else None
            try:
                sv = work(report=report)
            except DeployFailed as e:
                self._recover_after_failed_switch(old)
                log.error("%s %s failed at %s: %s", cmd.type, cmd.id, e.stage, e.reason)
                self._event("model_failed", {"command": cmd.id, "stage": e.stage, "detail": e.reason})
                self._result(cmd.id, "failed", reply_to, stage=e.stage, detail=e.reason)
            except Exception as e:  # a bug must not leave the command without its final result
                self._recover_after_failed_switch(old)
                log.exception("%s %s failed", cmd.type, cmd.id)
                self._result(cmd.id, "failed", reply_to, detail=f"internal error: {e}")
            else:
                previous, self._previous_detector = self._previous_detector, None
                if previous is not None:
                    _close_detector(previous)
                self._event("model_activated", {"command": cmd.id, "model": _ref(sv)})
                self._result(cmd.id, "succeeded", reply_to, detail=f"{sv.name} {sv.version} is active")
                self._publish_status()

        self._deploy_thread = threading.Thread(target=run, name=f"edge-agent-{cmd.type}", daemon=True)
        self._deploy_thread.start()

    def _recover_after_failed_switch(self, old: Optional[Detector]) -> None:
        """A failure after the pipeline switched (recording the version on disk failed): put the
        old detector back, so what serves is what the store calls current."""
        p = self.pipeline
        if p is None or p.detector is old or old is None:
            return
        new = p.swap(old, timeout=self.stage_timeouts.activating)
        self._previous_detector = None
        if new is not None:
            _close_detector(new)

    def _cmd_deploy(self, cmd: Command, reply_to: IncomingCommand) -> None:
        a = cmd.args
        assert isinstance(a, DeployArgs)
        self._start_swap(
            cmd,
            reply_to,
            lambda report: self.deployer.deploy(
                a.manifest,
                sha256=a.sha256,
                backend=a.backend,
                allow_downgrade=a.allow_downgrade,
                files=a.files,
                report=report,
            ),
        )

    def _cmd_rollback(self, cmd: Command, reply_to: IncomingCommand) -> None:
        a = cmd.args
        assert isinstance(a, RollbackArgs)
        self._start_swap(cmd, reply_to, lambda report: self.deployer.rollback(a.version, report=report))

    def _cmd_set(self, cmd: Command, reply_to: IncomingCommand) -> None:
        a = cmd.args
        assert isinstance(a, SetArgs)
        self.settings.update(a.model_dump(exclude_none=True))
        self.policy.configure(a.publish_mode, a.max_rate_hz)
        if self.pipeline is not None and self.pipeline.detector is not None:
            self.pipeline.detector.set_thresholds(self._thresholds())
        self._result(cmd.id, "succeeded", reply_to, data=self.settings.public())

    def _cmd_status(self, cmd: Command, reply_to: IncomingCommand) -> None:
        status = self._status()
        self._publish_status()
        self._result(cmd.id, "succeeded", reply_to, data=status)

    def _cmd_snapshot(self, cmd: Command, reply_to: IncomingCommand) -> None:
        jpeg = self._snapshot_jpeg()
        if jpeg is None:
            self._result(cmd.id, "failed", reply_to, detail="no frame processed yet")
            return
        assert self.link is not None
        self.link.publish_snapshot(jpeg)
        self._result(cmd.id, "succeeded", reply_to, detail=f"{len(jpeg)} bytes on {self.topics.snapshot}")

    def _cmd_pause(self, cmd: Command, reply_to: IncomingCommand) -> None:
        assert self.pipeline is not None
        self.pipeline.pause()
        self._publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="paused")

    def _cmd_resume(self, cmd: Command, reply_to: IncomingCommand) -> None:
        assert self.pipeline is not None
        self.pipeline.resume()
        self._publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="resumed")


def _close_detector(detector: Any) -> None:
    backend: Optional[Backend] = getattr(detector, "backend", None)
    if backend is not None:
        try:
            backend.close()
        except Exception as e:  # closing is best effort; the detector is out of service anyway
            log.debug("closing %s: %s", backend.name, e)


def _ref(sv: StoredVersion) -> Dict[str, str]:
    return {"name": sv.name, "version": sv.version}


def _args_text(args: BaseModel) -> str:
    return json.dumps(args.model_dump(exclude_none=True), default=str)
