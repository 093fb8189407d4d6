"""The service's composition root: wires the store, the pipeline, the MQTT link, the command
handler and the deployer together, and runs until SIGTERM.

Nothing here knows how a model runs, how MQTT retries, how a bundle is fetched or what a command
does (``commands.py``); it decides what happens when: which detector serves at start and after
an accelerator fails, what gets published, when systemd hears that the service is ready.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..annotate import draw_detections, encode_jpeg
from ..backends.auto import is_fallback
from ..bundle.signing import SignatureError, load_public_keys
from ..commands.checker import CommandChecker
from ..commands.replay import SeenIds
from ..config import AgentConfig, ConfigError
from ..detector import Detector, Thresholds
from ..errors import BackendUnavailable, EdgewatchError
from ..http_view import HttpView
from ..loading import check_options, open_detector
from ..messages import DetectionMessage, utc_now_iso
from ..mqtt.link import IncomingCommand, MqttLink
from ..mqtt.outbox import Outbox
from ..mqtt.topics import Topics
from ..sources import open_source
from ..sources.base import FrameSource
from ..store.deploy import Deployer
from ..store.models import ModelStore, StoredVersion
from ..systemd import Notifier
from .commands import CommandHandler
from .pipeline import Pipeline, Processed
from .publishing import PublishPolicy
from .settings import RuntimeSettings
from .status import health, metrics_text, status_document, status_line
from .switching import DetectorSwitch

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0


@dataclass
class Services:
    """The running agent's parts, built together (``Agent._build``) before any of them starts,
    then started in order (``Agent._start``)."""

    store: ModelStore
    settings: RuntimeSettings
    policy: PublishPolicy
    outbox: Outbox
    seen: SeenIds
    link: MqttLink
    pipeline: Pipeline
    switch: DetectorSwitch
    deployer: Deployer[Detector]
    commands: CommandHandler
    http: Optional[HttpView] = None


class Agent:
    """The service: ``run()`` builds the services, starts them and serves until ``stop()``. It is
    the ``AgentControl`` that commands act on."""

    def __init__(self, config: AgentConfig, source: Optional[FrameSource] = None):
        self.config = config
        self.source = source
        self.started = time.monotonic()
        self.notifier = Notifier()
        self.services: Optional[Services] = None  # built by run()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._last: Optional[Processed] = None
        self._last_snapshot = 0.0
        self._reloading = threading.Event()

    @property
    def pipeline(self) -> Optional[Pipeline]:
        return self.services.pipeline if self.services is not None else None

    @property
    def http(self) -> Optional[HttpView]:
        return self.services.http if self.services is not None else None

    def _running(self) -> Services:
        if self.services is None:
            raise RuntimeError("the agent's services are not built yet")
        return self.services

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

    def _build(self) -> Services:
        """Every part, wired, nothing started. What is opened before a later part fails is closed."""
        cfg = self.config
        check_options(cfg.detector)
        root = Path(cfg.store.dir)
        store = ModelStore(root, cfg.store.keep_versions, int(cfg.store.max_bundle_mb * 1024 * 1024))
        for line in store.recover():
            log.warning("store: %s", line)
        settings = RuntimeSettings.load(root / "settings.json", cfg)
        with contextlib.ExitStack() as opened:
            outbox = Outbox(root / "outbox.db", cfg.mqtt.buffer.max_messages)
            opened.callback(outbox.close)
            seen = SeenIds(root / "commands.db")
            opened.callback(seen.close)
            checker = CommandChecker(cfg.commands, cfg.device, seen)
            inbox: queue.Queue[Optional[IncomingCommand]] = queue.Queue()
            link = MqttLink(
                cfg.mqtt,
                Topics(cfg.mqtt.topic_prefix, cfg.device.id, tuple(cfg.device.groups)),
                outbox,
                on_command=inbox.put,
                offline_status={"state": "offline", "agent_version": __version__},
            )
            source = self.source or open_source(
                cfg.camera.source, cfg.camera.width, cfg.camera.height, cfg.camera.fps
            )
            pipeline = Pipeline(
                source,
                cfg.camera.mode,
                on_result=self._on_result,
                on_event=self.event,
                heartbeat=self.notifier.watchdog,
                on_failing=self._on_failing,
            )
            switch = DetectorSwitch(pipeline, cfg.store.timeouts.activating_s)
            deployer: Deployer[Detector] = Deployer(
                store,
                s3=cfg.s3,
                trusted_keys=release_keys(cfg, checker.trusted_keys),
                build=self._open_for_swap,
                activate=switch.activate,
                timeouts=cfg.store.timeouts,
            )
            commands = CommandHandler(cfg.device.id, checker, link, deployer, switch, self, inbox)
            opened.pop_all()
        return Services(
            store=store,
            settings=settings,
            policy=PublishPolicy(settings.effective.publish_mode, settings.effective.max_rate_hz),
            outbox=outbox,
            seen=seen,
            link=link,
            pipeline=pipeline,
            switch=switch,
            deployer=deployer,
            commands=commands,
        )

    def _start(self) -> None:
        s = self.services = self._build()
        detector = self._initial_detector()
        s.commands.end_interrupted()
        s.deployer.start()
        s.commands.start()
        s.link.start()
        s.pipeline.start(detector)
        if self.config.http.listen:
            s.http = HttpView(self.config.http.listen, self.snapshot_jpeg, self._health, self._metrics)
            s.http.start()
        self.publish_status()

    def _serve(self) -> None:
        pipeline = self._running().pipeline
        ready = False
        next_status = time.monotonic() + STATUS_INTERVAL_S
        while not self._stop.is_set():
            if not ready and (pipeline.detector is None or pipeline.wait_first_result(0)):
                # READY once the model is loaded and the camera delivers frames (or, with no model
                # yet, once the agent can take a deploy).
                self.notifier.ready(self._status_line())
                log.info("ready: %s", self._status_line())
                ready = True
            if pipeline.ended.is_set() and not pipeline.buffer:
                log.info("the camera source ended; stopping")
                break
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL_S
                self.publish_status()
                self.notifier.status(self._status_line())
            self._stop.wait(0.2)

    def _shutdown(self) -> None:
        self.notifier.stopping(f"stopping: {self._status_line()}")
        log.info("stopping")
        s = self.services
        if s is not None:
            s.pipeline.stop()  # finishes the frames in flight; their messages reach the outbox
            s.commands.stop()
            s.deployer.stop()
            if s.http is not None:
                s.http.stop()
            s.link.stop(self.status("stopped"), timeout=5.0)
            if s.pipeline.detector is not None:
                s.pipeline.detector.close()
            s.outbox.close()
            s.seen.close()
        self._stopped.set()

    # -- detectors -------------------------------------------------------------------------
    def _thresholds(self) -> Thresholds:
        s = self._running().settings.effective
        return Thresholds(
            score_threshold=s.score_threshold,
            iou_threshold=s.iou_threshold,
            # `set labels=` with an empty list clears the filter: every label is reported again
            labels=tuple(s.labels) if s.labels else None,
        )

    def change_settings(self, changes: Dict[str, Any]) -> Dict[str, Any]:
        s = self._running()
        s.settings.update(changes)
        s.policy.configure(changes.get("publish_mode"), changes.get("max_rate_hz"))
        detector = s.pipeline.detector
        if detector is not None:
            detector.set_thresholds(self._thresholds())
        return s.settings.public()

    def _load(
        self, bundle_dir: Path, name: str, verify: bool, strict: bool, device: Optional[str] = None
    ) -> Tuple[Detector, List[str]]:
        """``open_detector`` with this device's settings: on ``name`` and ``device`` (default: the
        configured device when ``name`` is the configured backend), the configured threads,
        thresholds and options."""
        d = self.config.detector
        if device is None and name == d.backend:
            device = d.device
        return open_detector(
            str(bundle_dir),
            name,
            device,
            d.threads,
            self._thresholds(),
            verify=verify,
            strict=strict,
            options=d.options,
        )

    def _open(
        self, bundle_dir: Path, backend: Optional[str], verify: bool = False, strict: bool = False
    ) -> Detector:
        """A detector for a bundle, at start, after the accelerator failed, or for a first
        deploy: on ``backend`` (default: the configured one), or, when that accelerator or its
        runtime is absent, on whatever auto finds (``strict``: auto too moves on only past a
        missing runtime or device, never past an artifact that does not load). The store
        verified the files (``recover`` at start, the deploy's verifying stage, a rollback's
        check), so they are hashed again only on request: a 200 MB bundle costs a Pi seconds."""
        name = backend or self.config.detector.backend
        try:
            detector, reasons = self._load(bundle_dir, name, verify, strict)
        except BackendUnavailable as e:
            if name == "auto":
                raise
            # The configured accelerator is missing (unplugged Coral, no NCS2): keep serving on
            # whatever auto finds, and say so. A model that does not load is no reason to.
            log.warning("backend %s unavailable (%s); falling back to auto", name, e)
            detector, reasons = self._load(bundle_dir, "auto", verify, strict)
            reasons = [f"{name}: {e}", *reasons]
        fallbacks = [r for r in reasons if is_fallback(r)]
        if fallbacks:
            self.event("backend_fallback", {"backend": detector.backend.name, "skipped": fallbacks})
        return detector

    def _open_for_swap(self, bundle_dir: Path, backend: Optional[str]) -> Detector:
        """A deploy's or rollback's new detector (SPEC §6.2 loading): on the backend the command
        names, else on the one that serves now, on its device, with no fallback, so that an
        artifact that does not load there fails the deploy instead of hiding behind another
        backend's artifact. With nothing serving yet, as at start."""
        serving = self._running().switch.serving
        if backend is None and serving is None:
            return self._open(bundle_dir, None, strict=True)
        if backend is not None:
            return self._load(bundle_dir, backend, verify=False, strict=True)[0]
        assert serving is not None
        name, device = serving.backend.name, serving.backend.options.device
        return self._load(bundle_dir, name, verify=False, strict=True, device=device)[0]

    def _open_warm(self, sv: StoredVersion, verify: bool) -> Detector:
        """An installed version with its first inference done: on the backend the deploy that
        activated it named, else on the configured one."""
        detector = self._open(sv.dir, self._running().store.activated_backend(sv), verify)
        try:
            detector.warm()
        except Exception:
            detector.close()
            raise
        return detector

    def _initial_detector(self) -> Optional[Detector]:
        store = self._running().store
        if store.current() is None and self.config.model.bundle:
            sv = store.import_bundle(Path(self.config.model.bundle))
            store.set_current(sv)
            log.info("store: imported %s %s from model.bundle", sv.name, sv.version)
        # The current version first (recover() or import_bundle() has just verified it); if it
        # cannot load on this device any more, an older one, verified now.
        current = store.current()
        for sv in store.versions():
            try:
                detector = self._open_warm(sv, verify=sv != current)
            except EdgewatchError as e:
                log.error("%s %s does not load: %s", sv.name, sv.version, e)
                self.event("model_failed", {"model": _ref(sv), "stage": "loading", "detail": str(e)})
                continue
            if sv != current:
                store.set_current(sv)
            return detector
        log.warning("no model in the store and no model.bundle: waiting for a deploy command")
        return None

    # -- a failing accelerator -------------------------------------------------------------
    def _on_failing(self, failing: Detector, reason: str) -> None:
        """The pipeline's detector failed frame after frame (called on the emit thread)."""
        if self._reloading.is_set() or self._running().deployer.busy:
            return  # already on it, or a deploy is about to replace the detector anyway
        self._reloading.set()
        threading.Thread(
            target=self._reload, args=(failing, reason), name="edge-agent-reload", daemon=True
        ).start()

    def _reload(self, failing: Detector, reason: str) -> None:
        """Bring the current version up on a fresh backend (the configured one, or what auto
        finds when that accelerator is gone), retrying with backoff, and swap it in."""
        try:
            s = self._running()
            sv = s.store.current()
            if sv is None:
                return
            log.warning(
                "%s keeps failing (%s): reloading %s %s", failing.backend.name, reason, sv.name, sv.version
            )
            delay = 1.0
            while True:
                try:
                    fresh = self._open_warm(sv, verify=True)  # hours may have passed since
                    break
                except EdgewatchError as e:
                    log.error("reloading %s %s failed: %s", sv.name, sv.version, e)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 60.0)
            if not s.switch.replace(failing, fresh):
                return  # a deploy or rollback replaced it meanwhile
            self.event(
                "backend_reloaded",
                {
                    "model": _ref(sv),
                    "backend": fresh.backend.name,
                    "accelerator": fresh.backend.accelerator,
                    "detail": reason,
                },
            )
            self.publish_status()
        finally:
            self._reloading.clear()

    # -- results ---------------------------------------------------------------------------
    def _on_result(self, p: Processed) -> None:
        self._last = p
        s = self._running()
        if not s.policy.decide(p.detections, time.monotonic()):
            return
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

        s.link.publish_detection(payload)
        if cfg.publish.snapshots:
            self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        now = time.monotonic()
        if now - self._last_snapshot >= 1.0:  # at most one JPEG a second on the wire
            self._last_snapshot = now
            jpeg = self.snapshot_jpeg()
            if jpeg is not None:
                self._running().link.publish_snapshot(jpeg)

    def snapshot_jpeg(self) -> Optional[bytes]:
        p = self._last
        if p is None:
            return None
        m = p.detector.model
        fps = self.pipeline.stats.fps if self.pipeline is not None else 0.0
        caption = f"{m.name} {m.version} - {p.detector.backend.name} - {fps:.1f} fps"
        return encode_jpeg(draw_detections(p.frame.image, p.detections, caption))

    def event(self, kind: str, data: Dict[str, Any]) -> None:
        self._running().link.publish_event({"type": kind, "ts": utc_now_iso(), **data})

    # -- commands that act on the pipeline --------------------------------------------------
    def pause(self) -> None:
        self._running().pipeline.pause()

    def resume(self) -> None:
        self._running().pipeline.resume()

    # -- status ----------------------------------------------------------------------------
    def status(self, state: str = "online") -> Dict[str, Any]:
        queued = len(self.services.outbox) if self.services is not None else 0
        return status_document(self.pipeline, state, time.monotonic() - self.started, queued)

    def _status_line(self) -> str:
        return status_line(self.pipeline)

    def publish_status(self) -> None:
        self._running().link.publish_status(self.status())

    def _mqtt_connected(self) -> bool:
        return self.services is not None and self.services.link.connected

    def _health(self) -> Tuple[bool, Dict[str, Any]]:
        return health(self.status(), self.pipeline, self._mqtt_connected())

    def _metrics(self) -> str:
        return metrics_text(self.status(), self._mqtt_connected())


def release_keys(config: AgentConfig, command_keys: List[Ed25519PublicKey]) -> List[Ed25519PublicKey]:
    """The keys that bundle signatures are checked against (SPEC §3 store.trusted_keys): the
    release keys; when none are listed, the command keys, so that a device configured before the
    two roles were split keeps verifying its bundles, with a warning that they are one set."""
    if config.store.trusted_keys:
        try:
            return load_public_keys(config.store.trusted_keys, "store.trusted_keys")
        except SignatureError as e:
            raise ConfigError(str(e)) from e
    if command_keys:
        log.warning(
            "store.trusted_keys is empty: bundle signatures are checked against commands.trusted_keys, "
            "so an operator key can also sign models and the release key can also command this "
            "device; list the release keys in store.trusted_keys to separate the two roles"
        )
    return list(command_keys)


def _ref(sv: StoredVersion) -> Dict[str, str]:
    return {"name": sv.name, "version": sv.version}
