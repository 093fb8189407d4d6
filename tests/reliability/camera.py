"""Camera loss and return: the camera is pulled out and plugged back in while the agent serves.

The agent runs in-process (``Agent(config, source=camera)``) against a real Mosquitto on
loopback, with a real ``$NOTIFY_SOCKET`` (``WATCHDOG_USEC`` set, as under the unit's
``WatchdogSec=``). The camera is the synthetic one behind a cable that can be pulled: while it
is out, ``read()`` raises the ``SourceError`` a camera that stopped delivering raises and
``open()`` the one a missing ``/dev/video0`` raises, exactly what ``OpenCVSource`` does; nothing
in the agent is replaced. Quick: one loss of 2 s; full: five, from half a second to 10 s (past
several steps of the reopen backoff).

Wrong outcomes, each of which must be 0:

- ``service died``: the agent's ``run()`` returned or raised before it was told to stop, or it
  did not stop cleanly when told to: a lost camera must never take the service down.
- ``lost not reported`` / ``reported twice``: each loss gives exactly one ``camera_lost`` and
  one ``camera_restored`` event (not none, not one per reopen attempt).
- ``no camera_restored``: the camera came back and the agent did not say so in time (the reopen
  backoff is capped at 30 s, so a return is noticed within that, plus the time to say it).
- ``frames after return missing``: after the return, fewer than 10 new detections arrived.
- ``state wrong``: the status the agent reports (``camera``) was not ``lost`` during the loss or
  not ``ok`` after the return.
- ``seq gaps``: a detection ``seq`` missing between 1 and the last one (``every`` mode: each
  processed frame is published) or a frame number repeated (reopened sources restart their own
  count; the pipeline's must not).
- ``watchdog gap over WatchdogSec``: the agent stopped sending ``WATCHDOG=1`` for longer than the
  watchdog timeout during the run. A lost camera is handled in-process (reported, retried with
  backoff); systemd must not kill and restart the service over it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from edge_agent.config import AgentConfig
from edge_agent.demo import BUNDLES_DIR
from edge_agent.errors import SourceError
from edge_agent.service.agent import Agent
from edge_agent.sources.base import Frame
from edge_agent.sources.synthetic import SyntheticSource
from edge_agent.systemd import Notifier
from tests.mosquitto import Mosquitto, Subscriber
from tests.waiting import eventually, reaches

from .accelerator import NotifySocket
from .report import Row

NAME = "camera loss and return"

DEVICE = "pi-camera"
TOPIC = f"edgewatch/{DEVICE}"
WATCHDOG_S = 3.0  # WATCHDOG_USEC for the run: pings every 0.75 s; a gap over 3 s would be a kill
FRAMES_AFTER_RETURN = 10
RESTORE_LIMIT_S = 30.0 + 10.0  # the reopen backoff's cap, plus the time to reopen and publish
QUICK_LOSSES = (2.0,)
FULL_LOSSES = (0.5, 2.0, 5.0, 1.0, 10.0)  # seconds out; 10 s spans several backoff steps


class PullableCamera(SyntheticSource):
    """The synthetic camera on a cable: ``pull()`` and ``plug()``; while out, it fails as a real
    camera does (``SourceError`` from ``read()``, then from every ``open()``)."""

    def __init__(self) -> None:
        super().__init__("synthetic:7", 320, 240, fps=25)
        self._in = threading.Event()
        self._in.set()

    def pull(self) -> None:
        self._in.clear()

    def plug(self) -> None:
        self._in.set()

    def open(self) -> None:
        if not self._in.is_set():
            raise SourceError("cannot open usb:0 (/dev/video0): no such device")
        super().open()

    def read(self) -> Optional[Frame]:
        if not self._in.is_set():
            raise SourceError("usb:0: camera lost (no frame delivered); reopen to retry")
        return super().read()


@contextmanager
def _agent_log(path: Path) -> Iterator[None]:
    """The in-process agent's log goes to ``path``, not to the suite's table on stderr."""
    logger = logging.getLogger("edge_agent")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        handler.close()


def _config(broker: Mosquitto, store: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "device": {"id": DEVICE},
            "camera": {"source": "synthetic:7", "width": 320, "height": 240, "fps": 25, "mode": "every"},
            "detector": {"backend": "tflite"},
            "model": {"bundle": str(BUNDLES_DIR / "shapes-1.1.0")},
            "store": {"dir": str(store)},
            "mqtt": {"host": broker.host, "port": broker.port},
            "publish": {"mode": "all"},
            "commands": {"require_signature": False},
            "http": {"listen": None},
        }
    )


def run(root: Path, full: bool) -> Row:
    losses = FULL_LOSSES if full else QUICK_LOSSES
    wrong = {
        "service died": 0,
        "lost not reported": 0,
        "reported twice": 0,
        "no camera_restored": 0,
        "frames after return missing": 0,
        "state wrong": 0,
        "seq gaps": 0,
        "watchdog gap over WatchdogSec": 0,
    }
    restore_s: List[float] = []
    broker = Mosquitto(root / "broker")
    broker.start()
    notify = NotifySocket(root / "notify.sock")
    camera = PullableCamera()
    crashed: List[BaseException] = []
    try:
        sub = Subscriber(broker, [f"{TOPIC}/#"])
        agent = Agent(_config(broker, root / "store"), source=camera)
        agent.notifier = Notifier(
            environ={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))},
            use_library=False,
        )

        def serve() -> None:
            try:
                agent.run()
            except BaseException as e:  # recorded: a crash is what this scenario looks for
                crashed.append(e)

        def docs(kind: str) -> List[Dict[str, Any]]:
            return [json.loads(m.payload) for m in sub.received(f"{TOPIC}/{kind}")]

        def count(event: str) -> int:
            return sum(e["type"] == event for e in docs("events"))

        def detections() -> int:
            return len(sub.received(f"{TOPIC}/detections"))

        with _agent_log(root / "agent.log"):
            runner = threading.Thread(target=serve, name="reliability-camera-agent", daemon=True)
            runner.start()
            if not eventually(lambda: detections() >= FRAMES_AFTER_RETURN, 60):
                raise AssertionError("the agent never served:\n" + (root / "agent.log").read_text()[-3000:])
            pipeline = agent.pipeline
            assert pipeline is not None
            for i, out_for in enumerate(losses, start=1):
                camera.pull()
                if not eventually(reaches(lambda: count("camera_lost"), i), 10):
                    wrong["lost not reported"] += 1
                if pipeline.stats.camera != "lost" or agent.status()["camera"] != "lost":
                    wrong["state wrong"] += 1
                time.sleep(out_for)  # a deliberate sleep: the outage itself, how long the cable stays out
                camera.plug()
                plugged = time.monotonic()
                if eventually(reaches(lambda: count("camera_restored"), i), RESTORE_LIMIT_S):
                    restore_s.append(time.monotonic() - plugged)
                else:
                    wrong["no camera_restored"] += 1
                if not eventually(reaches(detections, detections() + FRAMES_AFTER_RETURN), 30):
                    wrong["frames after return missing"] += 1
                if pipeline.stats.camera != "ok" or agent.status()["camera"] != "ok":
                    wrong["state wrong"] += 1
                if not runner.is_alive():
                    break
            if not runner.is_alive() or crashed:
                wrong["service died"] += 1
            agent.stop()
            runner.join(30)
            if runner.is_alive() or crashed or not agent.wait_stopped(0):
                wrong["service died"] += 1
        sub.barrier()  # everything the agent delivered has reached the subscriber
        for event in ("camera_lost", "camera_restored"):
            wrong["reported twice"] += max(0, count(event) - len(losses))
        found = docs("detections")
        seqs = sorted({d["seq"] for d in found})
        wrong["seq gaps"] = (seqs[-1] - len(seqs)) if seqs else 1
        frames = [d["frame"] for d in sorted(found, key=lambda d: d["seq"])]
        wrong["seq gaps"] += len(frames) - len(set(frames))
        pings = notify.times("WATCHDOG=1")
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        wrong["watchdog gap over WatchdogSec"] = sum(g > WATCHDOG_S for g in gaps)
        sub.close()
    finally:
        camera.plug()
        notify.close()
        broker.stop()
    return Row(
        NAME,
        trials=len(losses),
        figures={
            "losses": len(losses),
            "out s": sum(losses),
            "camera_lost": count("camera_lost"),
            "camera_restored": count("camera_restored"),
            "restored within s": max(restore_s) if restore_s else -1.0,
            "frames published": len(seqs),
            "longest watchdog gap s": max(gaps) if gaps else -1.0,
            "WatchdogSec": WATCHDOG_S,
        },
        wrong=wrong,
    )
