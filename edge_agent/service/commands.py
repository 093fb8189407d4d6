"""What each operator command does (SPEC §5, §6), on its own thread so that MQTT's network
thread never waits: check the envelope, answer ``rejected`` or ``accepted``, act, and end every
accepted command with exactly one ``succeeded`` or ``failed``."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ..commands.args import DeployArgs, RollbackArgs, SetArgs
from ..commands.checker import Command, CommandChecker, CommandRejected
from ..commands.results import CommandResult
from ..messages import utc_now_iso
from ..mqtt.link import IncomingCommand, MqttLink
from ..store.deploy import Deployer, DeployFailed, Report
from ..store.models import StoredVersion
from .pipeline import Pipeline
from .publishing import PublishPolicy
from .settings import RuntimeSettings
from .switching import DetectorSwitch

log = logging.getLogger(__name__)

PROGRESS_STEP = 0.1  # publish download progress in steps of 10 % (and at least once a second)


@dataclass
class AgentHooks:
    """What the handler asks of the agent."""

    apply_thresholds: Callable[[], None]  # the settings changed: update the serving detector
    status: Callable[[], Dict[str, Any]]
    publish_status: Callable[[], None]
    event: Callable[[str, Dict[str, Any]], None]
    snapshot_jpeg: Callable[[], Optional[bytes]]


class CommandHandler:
    def __init__(
        self,
        device_id: str,
        checker: CommandChecker,
        link: MqttLink,
        deployer: Deployer,
        switch: DetectorSwitch,
        pipeline: Pipeline,
        settings: RuntimeSettings,
        policy: PublishPolicy,
        hooks: AgentHooks,
    ):
        self.device_id = device_id
        self.checker = checker
        self.link = link
        self.deployer = deployer
        self.switch = switch
        self.pipeline = pipeline
        self.settings = settings
        self.policy = policy
        self.hooks = hooks
        self._queue: queue.Queue[Optional[IncomingCommand]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._swap_thread: Optional[threading.Thread] = None

    # -- life cycle ------------------------------------------------------------------------
    def submit(self, incoming: IncomingCommand) -> None:
        """The MQTT link's callback (its network thread): queue, never block."""
        self._queue.put(incoming)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-agent-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        for t in (self._thread, self._swap_thread):
            if t is not None:
                t.join(timeout)

    def _loop(self) -> None:
        while True:
            incoming = self._queue.get()
            if incoming is None:
                return
            try:
                self.handle(incoming)
            except Exception:
                # A bad command never stops the service.
                log.exception("command on %s failed", incoming.topic)

    # -- results ---------------------------------------------------------------------------
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
            device=self.device_id,
            ts=utc_now_iso(),
            status=status,
            stage=stage,
            detail=detail,
            progress=None if progress is None else round(progress, 3),
            data=data,
        )
        self.link.publish_result(result.to_json_dict(), reply_to)

    def handle(self, incoming: IncomingCommand) -> None:
        try:
            cmd = self.checker.check(incoming.payload)
        except CommandRejected as r:
            if r.command_id is None:
                log.warning("dropped a command on %s: %s", incoming.topic, r.reason)
            else:
                log.warning("rejected command %s: %s", r.command_id, r.reason)
                self._result(r.command_id, "rejected", incoming, detail=r.reason)
            return
        log.info("command %s: %s %s", cmd.id, cmd.type, json.dumps(cmd.args.model_dump(exclude_none=True)))
        getattr(self, f"_cmd_{cmd.type}")(cmd, incoming)

    # -- deploy and rollback ---------------------------------------------------------------
    def _reporter(self, cmd: Command, reply_to: IncomingCommand) -> Report:
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
        self, cmd: Command, reply_to: IncomingCommand, work: Callable[[Report], StoredVersion]
    ) -> None:
        if not self.deployer.try_begin():
            self._result(
                cmd.id, "rejected", reply_to, detail="busy: another deploy or rollback is in progress"
            )
            return
        self._result(cmd.id, "accepted", reply_to)

        def run() -> None:
            old = self.switch.serving
            try:
                sv = work(self._reporter(cmd, reply_to))
            except DeployFailed as e:
                self.switch.revert(old)
                log.error("%s %s failed at %s: %s", cmd.type, cmd.id, e.stage, e.reason)
                self.hooks.event("model_failed", {"command": cmd.id, "stage": e.stage, "detail": e.reason})
                self._result(cmd.id, "failed", reply_to, stage=e.stage, detail=e.reason)
            except Exception as e:  # a bug must not leave the command without its final result
                self.switch.revert(old)
                log.exception("%s %s failed", cmd.type, cmd.id)
                self._result(cmd.id, "failed", reply_to, detail=f"internal error: {e}")
            else:
                self.switch.commit()
                self.hooks.event(
                    "model_activated", {"command": cmd.id, "model": {"name": sv.name, "version": sv.version}}
                )
                self._result(cmd.id, "succeeded", reply_to, detail=f"{sv.name} {sv.version} is active")
                self.hooks.publish_status()

        self._swap_thread = threading.Thread(target=run, name=f"edge-agent-{cmd.type}", daemon=True)
        self._swap_thread.start()

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

    # -- the rest --------------------------------------------------------------------------
    def _cmd_set(self, cmd: Command, reply_to: IncomingCommand) -> None:
        a = cmd.args
        assert isinstance(a, SetArgs)
        self.settings.update(a.model_dump(exclude_none=True))
        self.policy.configure(a.publish_mode, a.max_rate_hz)
        self.hooks.apply_thresholds()
        self._result(cmd.id, "succeeded", reply_to, data=self.settings.public())

    def _cmd_status(self, cmd: Command, reply_to: IncomingCommand) -> None:
        self.hooks.publish_status()
        self._result(cmd.id, "succeeded", reply_to, data=self.hooks.status())

    def _cmd_snapshot(self, cmd: Command, reply_to: IncomingCommand) -> None:
        jpeg = self.hooks.snapshot_jpeg()
        if jpeg is None:
            self._result(cmd.id, "failed", reply_to, detail="no frame processed yet")
            return
        self.link.publish_snapshot(jpeg)
        self._result(
            cmd.id, "succeeded", reply_to, detail=f"{len(jpeg)} bytes on {self.link.topics.snapshot}"
        )

    def _cmd_pause(self, cmd: Command, reply_to: IncomingCommand) -> None:
        self.pipeline.pause()
        self.hooks.publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="paused")

    def _cmd_resume(self, cmd: Command, reply_to: IncomingCommand) -> None:
        self.pipeline.resume()
        self.hooks.publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="resumed")
