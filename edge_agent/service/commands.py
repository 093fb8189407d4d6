"""What each operator command does (SPEC §5, §6), on its own thread so that MQTT's network
thread never waits: check the envelope, answer ``rejected`` or ``accepted``, act, and end every
accepted command with exactly one ``succeeded`` or ``failed``."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional, Protocol

from ..commands.args import DeployArgs, RollbackArgs, SetArgs
from ..commands.checker import Command, CommandChecker, CommandRejected
from ..commands.results import CommandResult
from ..detector import Detector
from ..messages import utc_now_iso
from ..mqtt.link import IncomingCommand, MqttLink
from ..mqtt.outbox import OpenCommand
from ..store.deploy import Deployer, DeployFailed, DeployRequest, Outcome, Request, RollbackRequest
from .switching import DetectorSwitch

log = logging.getLogger(__name__)

PROGRESS_STEP = 0.1  # publish download progress in steps of 10 % (and at least once a second)
DROP_LOG_INTERVAL_S = 60.0  # at most one line per minute about payloads too broken to answer


def _loggable(text: str) -> str:
    """``text`` as is, or quoted with escapes when it holds what could forge or break a log line
    (a newline, a control character, a lone surrogate): it comes from whoever sent the command."""
    return text if text.isprintable() else ascii(text)


class DropLog:
    """Logs payloads too broken to answer (SPEC §5: "logged and dropped") without letting a flood
    of them flood the log: the first at once, then at most one line every ``interval_s`` that
    counts those dropped since and names the latest reason."""

    def __init__(self, interval_s: float = DROP_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_line: Optional[float] = None
        self._unlogged = 0
        self._latest = ""
        self.dropped = 0  # for the life of the handler

    def note(self, topic: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            self.dropped += 1
            self._latest = f"on {_loggable(topic)}: {_loggable(reason)}"
            if self._last_line is not None and now - self._last_line < self.interval_s:
                self._unlogged += 1
                return
            self._last_line = now
            self._log_locked(self._unlogged + 1)

    def flush(self) -> None:
        """Log what is counted but not yet logged (at the end of the service)."""
        with self._lock:
            if self._unlogged:
                self._log_locked(self._unlogged)

    def _log_locked(self, count: int) -> None:
        if count == 1:
            log.warning("dropped a command %s", self._latest)
        else:
            log.warning("dropped %d commands too broken to answer; the latest %s", count, self._latest)
        self._unlogged = 0


class AgentControl(Protocol):
    """What commands act on besides the deployer and the switch: the running agent
    (``edge_agent.service.agent.Agent``)."""

    def change_settings(self, changes: Dict[str, Any]) -> Dict[str, Any]:
        """Apply validated ``set`` changes (saved, published, handed to the detector); the
        effective settings."""

    def status(self) -> Dict[str, Any]: ...

    def publish_status(self) -> None: ...

    def event(self, kind: str, data: Dict[str, Any]) -> None: ...

    def snapshot_jpeg(self) -> Optional[bytes]:
        """The last processed frame with its detections drawn; None before the first."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class CommandHandler:
    """Answers and runs the commands that reach ``inbox`` (the MQTT link puts them there from
    its network thread), one at a time on its own thread; deploys and rollbacks go to the
    deployer's worker, so a long download never holds up a ``status`` or a ``pause``."""

    def __init__(
        self,
        device_id: str,
        checker: CommandChecker,
        link: MqttLink,
        deployer: Deployer[Detector],
        switch: DetectorSwitch,
        control: AgentControl,
        inbox: Optional[queue.Queue[Optional[IncomingCommand]]] = None,
    ):
        self.device_id = device_id
        self.checker = checker
        self.link = link
        self.deployer = deployer
        self.switch = switch
        self.control = control
        self.inbox: queue.Queue[Optional[IncomingCommand]] = inbox if inbox is not None else queue.Queue()
        self.drops = DropLog()
        self._thread: Optional[threading.Thread] = None

    # -- life cycle ------------------------------------------------------------------------
    def submit(self, incoming: IncomingCommand) -> None:
        """Queue a command (from the MQTT link's network thread): never blocks."""
        self.inbox.put(incoming)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edge-agent-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.drops.flush()

    def _loop(self) -> None:
        while True:
            incoming = self.inbox.get()
            if incoming is None:
                return
            try:
                self.handle(incoming)
            except Exception:
                # A bad command never stops the service.
                log.exception("command on %s failed", incoming.topic)
            finally:
                self.link.ack(incoming)

    # -- results ---------------------------------------------------------------------------
    def _result(
        self,
        command_id: str,
        status: str,
        reply_to: Optional[IncomingCommand],  # the command, when its signature verified
        stage: Optional[str] = None,
        detail: Optional[str] = None,
        progress: Optional[float] = None,
        data: Optional[Dict[str, Any]] = None,
        opens: Optional[OpenCommand] = None,
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
        self.link.publish_result(result.to_json_dict(), reply_to, opens=opens)

    def handle(self, incoming: IncomingCommand) -> None:
        try:
            cmd = self.checker.check(incoming.payload)
        except CommandRejected as r:
            if r.command_id is None:
                self.drops.note(incoming.topic, r.reason)
            elif incoming.redelivered and r.command_id in self.checker.seen:
                # The broker delivering again a command this agent took before a crash (it is
                # acknowledged only once recorded): it was answered then, or is ended as
                # interrupted now. A second answer would give it two endings.
                log.info(
                    "command %s delivered again after a restart: already handled", _loggable(r.command_id)
                )
            else:
                log.warning("rejected command %s: %s", _loggable(r.command_id), _loggable(r.reason))
                reply_to = self._reply_to(incoming, r.signature_verified)
                self._result(r.command_id, "rejected", reply_to, detail=r.reason)
            return
        args = cmd.args.changes() if isinstance(cmd.args, SetArgs) else cmd.args.model_dump(exclude_none=True)
        log.info("command %s: %s %s", cmd.id, cmd.type, json.dumps(args))
        getattr(self, f"_cmd_{cmd.type}")(cmd, self._reply_to(incoming, cmd.signature_verified))

    def _reply_to(self, incoming: IncomingCommand, signature_verified: bool) -> Optional[IncomingCommand]:
        """``incoming`` when its results may also go to its Response Topic (SPEC §4): anyone who can
        publish a command can set one, so only a command whose signature verified has it honoured,
        and only under P/D/cmd/result/."""
        topic = incoming.response_topic
        if topic is None or not signature_verified:
            return None
        if not self.link.topics.is_reply_topic(topic):
            log.warning(
                "a command's Response Topic %s is ignored: replies go under %s only",
                _loggable(topic),
                self.link.topics.cmd_reply_prefix,
            )
            return None
        return incoming

    def end_interrupted(self) -> None:
        """End the deploys and rollbacks that a crash or power cut cut short (SPEC §5), once the
        store has recovered and the start-up model is chosen: ``succeeded`` when the version
        the command was switching to is current now (its switch was recorded before the restart,
        the device serves it, and a result saying otherwise would be false); otherwise ``failed``
        at stage ``interrupted``, naming what serves."""
        for interrupted in self.link.outbox.open_commands():
            context = json.loads(interrupted.context)
            before, target = context.get("current"), context.get("target")
            current = self.deployer.store.current()
            now = current.ident if current is not None else None
            if target is not None and now == target and now != before:
                log.warning("%s %s: %s was recorded before a restart", interrupted.type, interrupted.id, now)
                self._result(
                    interrupted.id,
                    "succeeded",
                    None,
                    detail=f"{now} is active (recorded before a restart cut the {interrupted.type} short)",
                )
            else:
                log.warning("%s %s was interrupted by a restart", interrupted.type, interrupted.id)
                self._result(
                    interrupted.id,
                    "failed",
                    None,
                    stage="interrupted",
                    detail=f"the agent restarted during the {interrupted.type}; {now or 'no model'} serves",
                )

    # -- deploy and rollback ---------------------------------------------------------------
    def _start_swap(self, cmd: Command, reply_to: Optional[IncomingCommand], request: Request) -> None:
        swap = _Swap(self, cmd, reply_to)
        try:
            taken = self.deployer.try_submit(request, swap.report, swap.ended, swap.accepted, swap.settle)
        except Exception as e:
            # Answering "accepted" failed after it may have been journaled: end it now rather
            # than leave it open until a restart ends it as interrupted.
            log.exception("%s %s could not be started", cmd.type, cmd.id)
            self._result(cmd.id, "failed", reply_to, detail=f"internal error: {e}")
            return
        if not taken:
            self._result(
                cmd.id, "rejected", reply_to, detail="busy: another deploy or rollback is in progress"
            )

    def _cmd_deploy(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        a = cmd.args
        assert isinstance(a, DeployArgs)
        self._start_swap(
            cmd,
            reply_to,
            DeployRequest(a.manifest, a.sha256, a.backend, a.allow_downgrade, a.files),
        )

    def _cmd_rollback(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        a = cmd.args
        assert isinstance(a, RollbackArgs)
        self._start_swap(cmd, reply_to, RollbackRequest(a.version))

    # -- the rest --------------------------------------------------------------------------
    def _cmd_set(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        a = cmd.args
        assert isinstance(a, SetArgs)
        self._result(cmd.id, "succeeded", reply_to, data=self.control.change_settings(a.changes()))

    def _cmd_status(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        self.control.publish_status()
        self._result(cmd.id, "succeeded", reply_to, data=self.control.status())

    def _cmd_snapshot(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        jpeg = self.control.snapshot_jpeg()
        if jpeg is None:
            self._result(cmd.id, "failed", reply_to, detail="no frame processed yet")
            return
        self.link.publish_snapshot(jpeg)
        self._result(
            cmd.id, "succeeded", reply_to, detail=f"{len(jpeg)} bytes on {self.link.topics.snapshot}"
        )

    def _cmd_pause(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        self.control.pause()
        self.control.publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="paused")

    def _cmd_resume(self, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        self.control.resume()
        self.control.publish_status()
        self._result(cmd.id, "succeeded", reply_to, detail="resumed")


class _Swap:
    """One deploy or rollback command between ``accepted`` and its ending: what it answers at
    each step. ``accepted`` runs once the deployer's slot is taken; ``report`` on the
    deployer's threads; ``settle`` on its worker while the slot is held (the switch made final
    or undone); ``ended`` once it is free (the final result, then the event and the status)."""

    def __init__(self, handler: CommandHandler, cmd: Command, reply_to: Optional[IncomingCommand]) -> None:
        self.handler = handler
        self.cmd = cmd
        self.reply_to = reply_to
        self.before: Optional[str] = None  # what was current when it was accepted
        self._lock = threading.Lock()  # report vs ended: nothing in progress after the ending
        self._ended = False
        self._last_stage: Optional[str] = None
        self._last_progress = -1.0
        self._last_t = 0.0

    def _result(self, status: str, **fields: Any) -> None:
        self.handler._result(self.cmd.id, status, self.reply_to, **fields)

    def accepted(self) -> None:
        current = self.handler.deployer.store.current()
        self.before = current.ident if current is not None else None
        context = json.dumps({"current": self.before, "target": None})
        self._result("accepted", opens=OpenCommand(self.cmd.id, self.cmd.type, context))

    def report(self, stage: str, progress: Optional[float], detail: Optional[str]) -> None:
        with self._lock:
            if self._ended:  # an abandoned stage's late progress: the command has its ending
                return
            if stage == "loading" and stage != self._last_stage:
                # The version this command would make current (the deployer names it here): a
                # restart ends the command by whether that is current then.
                context = json.dumps({"current": self.before, "target": detail})
                self.handler.link.outbox.note_open(self.cmd.id, context)
            now = time.monotonic()
            if (
                stage == self._last_stage
                and progress is not None
                and progress < 1.0
                and progress - self._last_progress < PROGRESS_STEP
                and now - self._last_t < 1.0
            ):
                return
            self._last_stage, self._last_t = stage, now
            self._last_progress = progress if progress is not None else -1.0
            self._result("in_progress", stage=stage, progress=progress, detail=detail)

    def settle(self, outcome: Outcome) -> None:
        """Make the switch final, or undo it where the deploy failed after switching (the new
        model served but could not be recorded as current): what serves is what the store
        calls current. Any other failure switched nothing, so there is nothing to undo."""
        if isinstance(outcome, DeployFailed):
            if outcome.activated:
                self.handler.switch.revert()
        else:
            self.handler.switch.commit()

    def ended(self, outcome: Outcome) -> None:
        cmd = self.cmd
        with self._lock:
            self._ended = True
        if isinstance(outcome, DeployFailed):
            log.error("%s %s failed at %s: %s", cmd.type, cmd.id, outcome.stage, outcome.reason)
            self._result("failed", stage=outcome.stage, detail=outcome.reason)
            self._tell("model_failed", {"command": cmd.id, "stage": outcome.stage, "detail": outcome.reason})
            return
        self._result("succeeded", detail=f"{outcome.name} {outcome.version} is active")
        model = {"name": outcome.name, "version": outcome.version}
        self._tell("model_activated", {"command": cmd.id, "model": model})

    def _tell(self, kind: str, data: Dict[str, Any]) -> None:
        """The event and the new status, after the result: neither may cost the command its ending."""
        try:
            self.handler.control.event(kind, data)
            self.handler.control.publish_status()
        except Exception:
            log.exception("publishing %s for %s", kind, self.cmd.id)
