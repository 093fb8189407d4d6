"""The service's composition root: wires the store, the pipeline, the MQTT link, the command
handler and the deployer together, and runs until SIGTERM.

Nothing here knows how a model runs, how MQTT retries, how a bundle is fetched or what a command
does (``commands.py``); it decides what happens when: which detector serves at start and after
an accelerator fails, what gets published, when systemd hears that the service is ready.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
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
from ..mqtt.link import MqttLink
from ..mqtt.outbox import Outbox
from ..mqtt.topics import Topics
from ..sources import open_source
from ..sources.base import FrameSource
from ..store.deploy import Deployer
from ..store.models import ModelStore, StoredVersion
from ..systemd import Notifier
from .commands import AgentHooks, CommandHandler
from .pipeline import Pipeline, Processed
from .publishing import PublishPolicy
from .settings import RuntimeSettings
from .status import health, metrics_text, status_document, status_line
from .switching import DetectorSwitch, close_detector

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0


class Agent:
    def __init__(self, config: AgentConfig, source: Optional[FrameSource] = None):
        self.config = config
        self.source = source
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._last: Optional[Processed] = None
        self._last_snapshot = 0.0
        self._reloading = threading.Event()
        self.commands: Optional[CommandHandler] = None
        self.outbox: Optional[Outbox] = None
        self.seen: Optional[SeenIds] = None
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
        check_options(cfg.detector)
        root = Path(cfg.store.dir)
        self.store = ModelStore(root, cfg.store.keep_versions, int(cfg.store.max_bundle_mb * 1024 * 1024))
        for line in self.store.recover():
            log.warning("store: %s", line)
        self.settings = RuntimeSettings.load(root / "settings.json", cfg)
        self.policy = PublishPolicy(self.settings.effective.publish_mode, self.settings.effective.max_rate_hz)
        self.outbox = Outbox(root / "outbox.db", cfg.mqtt.buffer.max_messages)
        self.seen = SeenIds(root / "commands.db")
        checker = CommandChecker(cfg.commands, cfg.device, self.seen)
        topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id, tuple(cfg.device.groups))
        self.link = MqttLink(
            cfg.mqtt,
            topics,
            self.outbox,
            on_command=lambda incoming: self.commands.submit(incoming) if self.commands else None,
            offline_status={"state": "offline", "agent_version": __version__},
        )
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
        self.switch = DetectorSwitch(self.pipeline, cfg.store.timeouts.activating_s)
        self.deployer = Deployer(
            self.store,
            s3=cfg.s3,
            trusted_keys=release_keys(cfg, checker.trusted_keys),
            build=self._open_for_swap,
            activate=self.switch.activate,
            close=close_detector,
            timeouts=cfg.store.timeouts,
        )
        self.commands = CommandHandler(
            cfg.device.id,
            checker,
            self.link,
            self.deployer,
            self.switch,
            self.pipeline,
            self.settings,
            self.policy,
            AgentHooks(
                apply_thresholds=self._apply_thresholds,
                status=self._status,
                publish_status=self._publish_status,
                event=self._event,
                snapshot_jpeg=self._snapshot_jpeg,
            ),
        )
        detector = self._initial_detector()
        self.commands.end_interrupted()
        self.commands.start()
        self.link.start()
        self.pipeline.start(detector)
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
        if self.pipeline is not None:
            self.pipeline.stop()  # finishes the frames in flight; their messages reach the outbox
        if self.commands is not None:
            self.commands.stop()
        if self.http is not None:
            self.http.stop()
        if self.link is not None:
            self.link.stop(self._status("stopped"), timeout=5.0)
        if self.pipeline is not None and self.pipeline.detector is not None:
            close_detector(self.pipeline.detector)
        for closable in (self.outbox, self.seen):
            if closable is not None:
                closable.close()
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

    def _apply_thresholds(self) -> None:
        detector = self.pipeline.detector if self.pipeline else None
        if detector is not None:
            detector.set_thresholds(self._thresholds())

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
            self._event("backend_fallback", {"backend": detector.backend.name, "skipped": fallbacks})
        return detector

    def _open_for_swap(self, bundle_dir: Path, backend: Optional[str]) -> Detector:
        """A deploy's or rollback's new detector (SPEC §6.2 loading): on the backend the command
        names, else on the one that serves now, on its device, with no fallback, so that an
        artifact that does not load there fails the deploy instead of hiding behind another
        backend's artifact. With nothing serving yet, as at start."""
        serving = self.switch.serving
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
        detector = self._open(sv.dir, self.store.activated_backend(sv), verify)
        try:
            detector.warm()
        except Exception:
            close_detector(detector)
            raise
        return detector

    def _initial_detector(self) -> Optional[Detector]:
        store = self.store
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
                self._event("model_failed", {"model": _ref(sv), "stage": "loading", "detail": str(e)})
                continue
            if sv != current:
                store.set_current(sv)
            return detector
        log.warning("no model in the store and no model.bundle: waiting for a deploy command")
        return None

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
                    fresh = self._open_warm(sv, verify=True)  # hours may have passed since
                    break
                except EdgewatchError as e:
                    log.error("reloading %s %s failed: %s", sv.name, sv.version, e)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 60.0)
            if not self.switch.replace(failing, fresh):
                return  # a deploy or rollback replaced it meanwhile
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
        queued = len(self.outbox) if self.outbox is not None else 0
        return status_document(self.pipeline, state, time.monotonic() - self.started, queued)

    def _status_line(self) -> str:
        return status_line(self.pipeline)

    def _publish_status(self) -> None:
        if self.link is not None:
            self.link.publish_status(self._status())

    def _mqtt_connected(self) -> bool:
        return self.link is not None and self.link.connected

    def _health(self) -> Tuple[bool, Dict[str, Any]]:
        return health(self._status(), self.pipeline, self._mqtt_connected())

    def _metrics(self) -> str:
        return metrics_text(self._status(), self._mqtt_connected())


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
