"""Accelerator failure and a stalled inference: the agent as systemd runs it, with its device
call made to fail, then to hang.

``edge-agent run`` runs as a subprocess against a real Mosquitto, with a real
``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (what ``Type=notify`` and ``WatchdogSec=`` give it).
The one thing replaced is the device call, ``backend.submit`` (there is no Coral to pull out
here): the agent is started through this module (``python -m tests.reliability.accelerator
CONTROL run -c CONFIG``), which wraps every detector the agent opens so that an order written to
the CONTROL file is carried out by the backend serving at that moment:

- ``fail K``: from now on that backend's calls raise ``BackendError`` (an accelerator that fell
  off the bus); a detector opened afterwards works again. The agent must notice (10 failures in
  a row), reload the current version on a fresh backend (``backend_reloaded``) and serve again.
- ``hang K``: that call never returns (a wedged USB transfer). Nothing in-process can recover a
  thread stuck in a driver, which is what the watchdog is for: the frame loop stops sending
  ``WATCHDOG=1``, so systemd, after ``WatchdogSec``, sends ``SIGABRT`` (its default
  ``WatchdogSignal=``) and ``Restart=on-failure`` starts the agent again. Here the scenario plays
  systemd: it waits for the pings to stop for ``WatchdogSec``, aborts the process, and starts it
  again on the same store and socket. Quick: one stall at a 2 s watchdog; full: two at 2 s and
  one at the shipped unit's ``WatchdogSec=`` (systemd/edge-agent.service).

Wrong outcomes, each of which must be 0:

- ``not reloaded`` / ``reloaded twice``: a failing accelerator gives exactly one
  ``backend_reloaded`` per failure, within 60 s.
- ``failure not reported`` / ``reported per frame``: each failure's first frame gives an
  ``inference_failed`` with ``in_a_row`` 1, and later ones only at 10, 100, … in a row (a dead
  accelerator at 25 fps must not flood the broker).
- ``serving not resumed``: fewer than 10 detections after a reload.
- ``watchdog pinged during stall``: a ``WATCHDOG=1`` arrived after the device call hung; another
  thread keeping the watchdog fed would let a wedged agent run forever.
- ``no watchdog while healthy``: no ``WATCHDOG=1`` pings, or gaps over ``WatchdogSec``, before
  the stall (systemd would kill a healthy agent).
- ``no READY after restart`` / ``no frames after restart`` / ``no watchdog after restart``: the
  restarted agent did not come back as a service: ``READY=1``, 10 new detections, pings.
- ``seq gaps``: a ``seq`` between 1 and the last one assigned (the outbox's counter) never
  reached the broker: the kill lost a queued message, or a restart skipped or reused a number.
- ``unclean exit``: the last agent did not exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from edge_agent.mqtt.outbox import Outbox
from tests.agent_world import AgentProcess, World, make_world
from tests.waiting import eventually, reaches

from .report import Row

NAME = "accelerator failure and stalled inference"

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
FRAMES = 10  # detections that show the agent serves
STALL_MARGIN_S = 0.25  # a ping received this soon after the hang was sent before it
QUICK_FAILURES, FULL_FAILURES = 1, 5
QUICK_STALLS: Tuple[float, ...] = (2.0,)  # WatchdogSec of each stalled agent


def unit_watchdog_s() -> float:
    """``WatchdogSec=`` of the shipped unit (seconds)."""
    found = re.search(r"^WatchdogSec=(\d+)\s*$", UNIT.read_text(), re.MULTILINE)
    if found is None:
        raise AssertionError(f"{UNIT} sets no WatchdogSec=")
    return float(found.group(1))


class NotifySocket:
    """systemd's end of ``$NOTIFY_SOCKET``: every datagram with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._messages: List[Tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="reliability-notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.time(), data.decode(errors="replace")))

    def times(self, line: str, since: float = 0.0) -> List[float]:
        """When datagrams holding ``line`` (e.g. ``WATCHDOG=1``) arrived, at or after ``since``."""
        with self._lock:
            return [t for t, m in self._messages if t >= since and line in m.splitlines()]

    def count(self, line: str, since: float = 0.0) -> int:
        return len(self.times(line, since))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()


def _env(notify: NotifySocket, watchdog_s: float) -> Dict[str, str]:
    return {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}


class FaultyAgent(AgentProcess):
    """``edge-agent run`` through this module's device-call wrapper (see the module docstring)."""

    def __init__(self, config: Path, log: Path, control: Path) -> None:
        super().__init__(config, log)
        self.control = control

    def start(self, env: Optional[Dict[str, str]] = None) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.accelerator", str(self.control), "run"]
                + ["-c", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=str(self.log.parent),  # where a core file would go, never the checkout
                env={**os.environ, "PYTHONPATH": path, **(env or {})},
            )

    def order(self, order: str, timeout: float = 30.0) -> Optional[float]:
        """Have the serving backend carry out ``order``; the time it did (None: it did not)."""
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(order)
        os.replace(tmp, self.control)
        done = self.control.with_suffix(".done")

        def carried_out() -> Optional[float]:
            for line in done.read_text().splitlines() if done.exists() else []:
                when, _, what = line.partition(" ")
                if what == order:
                    return float(when)
            return None

        try:
            return eventually(carried_out, timeout)
        finally:
            self.control.unlink(missing_ok=True)  # a restarted agent must not obey it again

    def abort(self) -> int:
        """What systemd does when the watchdog expires: SIGABRT, then SIGKILL."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGABRT)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _assigned(world: World) -> int:
    """The last ``seq`` the (stopped or killed) agent assigned: its outbox's counter."""
    outbox = Outbox(world.root / "store" / "outbox.db", 100000)
    try:
        return outbox.counter("detections")
    finally:
        outbox.close()


def _power_of_ten(n: int) -> bool:
    return n >= 1 and str(n) == "1" + "0" * (len(str(n)) - 1)


def run(root: Path, full: bool) -> Row:
    failures = FULL_FAILURES if full else QUICK_FAILURES
    unit_s = unit_watchdog_s()
    stalls = (2.0, 2.0, unit_s) if full else QUICK_STALLS
    wrong = {
        "not reloaded": 0,
        "reloaded twice": 0,
        "failure not reported": 0,
        "reported per frame": 0,
        "serving not resumed": 0,
        "no watchdog while healthy": 0,
        "watchdog pinged during stall": 0,
        "no READY after restart": 0,
        "no frames after restart": 0,
        "no watchdog after restart": 0,
        "seq gaps": 0,
        "unclean exit": 0,
    }
    reload_s: List[float] = []
    kill_after_s: List[float] = []  # from the hang to when systemd's watchdog would fire
    with make_world(root) as world:
        notify = NotifySocket(root / "notify.sock")
        agent = FaultyAgent(world.agent.config, world.agent.log, root / "control")
        try:
            figures = _scenario(world, agent, notify, failures, stalls, wrong, reload_s, kill_after_s)
        finally:
            if agent.alive():
                agent.abort()
            notify.close()
    figures.update(
        {
            "reload s": max(reload_s) if reload_s else -1.0,
            "unit WatchdogSec": unit_s,
            "stall to watchdog kill s": max(kill_after_s) if kill_after_s else -1.0,
        }
    )
    return Row(NAME, trials=failures + len(stalls), figures=figures, wrong=wrong)


def _scenario(
    world: World,
    agent: FaultyAgent,
    notify: NotifySocket,
    failures: int,
    stalls: Tuple[float, ...],
    wrong: Dict[str, int],
    reload_s: List[float],
    kill_after_s: List[float],
) -> Dict[str, Any]:
    dash = world.dash

    def events(kind: str) -> List[Dict[str, Any]]:
        return [e for e in dash.get("events") if e["type"] == kind]

    def detections() -> int:
        return len(dash.get("detections"))

    def newest() -> int:
        return max((d["seq"] for d in dash.get("detections")), default=0)

    def fresh_after(seq: int) -> Callable[[], bool]:
        """Whether FRAMES new detections (not re-sent old ones) arrived after ``seq``."""
        return lambda: len({d["seq"] for d in dash.get("detections") if d["seq"] > seq}) >= FRAMES

    def log_tail() -> str:
        return agent.log.read_text(errors="replace")[-3000:]

    started = time.time()
    agent.start(_env(notify, stalls[0]))
    if not eventually(lambda: bool(notify.times("READY=1", started)) and detections() >= FRAMES, 60):
        raise AssertionError("the agent never served:\n" + log_tail())

    # (a) the accelerator fails mid-run, `failures` times
    for k in range(1, failures + 1):
        broke = agent.order(f"fail {k}")
        if broke is None:
            raise AssertionError("the device-call wrapper did not take the order:\n" + log_tail())
        if eventually(reaches(lambda: len(events("backend_reloaded")), k), 60):
            reload_s.append(time.time() - broke)
        else:
            wrong["not reloaded"] += 1
        if not eventually(fresh_after(newest()), 30):
            wrong["serving not resumed"] += 1
    failed = [e["in_a_row"] for e in events("inference_failed")]
    wrong["failure not reported"] = max(0, failures - failed.count(1))
    wrong["reported per frame"] = sum(not _power_of_ten(n) for n in failed)
    wrong["reloaded twice"] = max(0, len(events("backend_reloaded")) - failures)

    # (b) the device call hangs: the pings stop, "systemd" aborts and restarts the agent
    pings_healthy = 0
    for k, watchdog_s in enumerate(stalls, start=1):
        since = time.time()
        if not eventually(reaches(partial(notify.count, "WATCHDOG=1", since), 2), 3 * watchdog_s + 10):
            wrong["no watchdog while healthy"] += 1
        hung = agent.order(f"hang {k}")
        if hung is None:
            raise AssertionError("the device-call wrapper did not take the order:\n" + log_tail())
        healthy = notify.times("WATCHDOG=1", since)
        before = [t for t in healthy if t <= hung + STALL_MARGIN_S]
        pings_healthy += len(before)
        gaps = [b - a for a, b in zip(before, before[1:])]
        wrong["no watchdog while healthy"] += sum(g > watchdog_s for g in gaps)
        last = before[-1] if before else hung
        # systemd fires when a whole WatchdogSec passes without a ping: wait that long and a bit
        deadline = last + watchdog_s + 0.5
        time.sleep(max(0.0, deadline - time.time()))  # a deliberate sleep: the stall, held that long
        during = [t for t in notify.times("WATCHDOG=1", hung + STALL_MARGIN_S) if t <= deadline]
        wrong["watchdog pinged during stall"] += len(during)
        kill_after_s.append((during[-1] if during else last) + watchdog_s - hung)
        agent.abort()
        served = _assigned(world)  # the last seq the killed agent gave out
        restarted = time.time()
        agent.start(_env(notify, stalls[k] if k < len(stalls) else stalls[-1]))
        if not eventually(reaches(partial(notify.count, "READY=1", restarted), 1), 60):
            wrong["no READY after restart"] += 1
        if not eventually(fresh_after(served), 30):
            wrong["no frames after restart"] += 1
        if not eventually(reaches(partial(notify.count, "WATCHDOG=1", restarted), 1), 10):
            wrong["no watchdog after restart"] += 1

    if agent.stop() != 0:
        wrong["unclean exit"] += 1
    produced = _assigned(world)

    def received() -> Set[int]:
        return {d["seq"] for d in dash.get("detections")}

    assigned = set(range(1, produced + 1))
    eventually(lambda: assigned <= received(), 10)
    wrong["seq gaps"] = len(assigned ^ received())
    return {
        "failures": failures,
        "inference_failed events": len(failed),
        "stalls": len(stalls),
        "pings before stalls": pings_healthy,
        "produced": produced,
        "duplicated": len(dash.get("detections")) - len(received()),
    }


# --------------------------------------------------------------------------------------- the agent side


def _faulty_agent(argv: List[str]) -> int:
    """``CONTROL edge-agent-args…``: run the agent with every detector's device call wrapped."""
    import edge_agent.service.agent as agent_module
    from edge_agent.cli import main
    from edge_agent.errors import BackendError

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the SIGABRT below is expected: no core file
    control = Path(argv[0])
    done = control.with_suffix(".done")
    obeyed: Set[str] = set()
    real_open = agent_module.open_detector

    def wrap(detector: Any) -> None:
        backend = detector.backend
        real_submit = backend.submit
        broken: List[str] = []

        def submit(tensor: Any) -> Any:
            try:
                order = control.read_text().strip()
            except OSError:
                order = ""
            if order and order not in obeyed:
                obeyed.add(order)
                with open(done, "a") as f:
                    f.write(f"{time.time()} {order}\n")
                if order.startswith("hang"):
                    threading.Event().wait()  # the device call never returns
                broken.append(order)
            if broken:
                raise BackendError(f"{backend.name}: device disconnected ({broken[0]})")
            return real_submit(tensor)

        backend.submit = submit

    def open_detector(*args: Any, **kwargs: Any) -> Any:
        detector, reasons = real_open(*args, **kwargs)
        wrap(detector)
        return detector, reasons

    agent_module.open_detector = open_detector
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_faulty_agent(sys.argv[1:]))
