"""Broker outage: nothing the agent detects while its broker is away is lost.

``edge-agent run`` runs as a subprocess (``every`` mode, publish mode ``all``: every frame gives
one detection message with the next ``seq``) against a real Mosquitto on loopback, and a
dashboard subscribes to everything it publishes. The agent reaches the broker through a
:class:`~tests.mosquitto.TcpGate`, its network, which the scenario cuts and freezes; the
dashboard connects directly. Three cuts, each followed by the agent catching up:

1. ``outage``: the broker is stopped (it loses every session: ``persistence false``) for
   3 s (quick) or 20 s (full), then started again.
2. ``freeze``: the agent's network silently stops passing bytes (a router that hangs) for 2 s
   (quick: within the keepalive, paho's window fills up) or 15 s (full: past 1.5 × keepalive,
   so both ends drop the connection and the agent reconnects through a network that still
   holds its bytes).
3. ``restart``: the broker is stopped, the agent is stopped with SIGTERM while it is away (the
   queue stays on disk) and started again, and then the broker comes back.

The broker only delivers to subscribers it has: after a broker restart the agent's path stays
cut until the dashboard has subscribed again, so a message the broker drops for want of a
subscriber is never counted against the agent. Finally the agent is stopped with SIGTERM and
its outbox read: ``produced`` is its ``detections`` counter, the last ``seq`` it assigned.

Figures: produced, received (distinct ``seq``), duplicated (at-least-once allows them: what
was in flight when a connection died is sent again), queued in each cut (messages made while
the broker was unreachable), the longest catch-up (from the path coming back until the backlog
and a fresh frame arrived).

Wrong outcomes, each of which must be 0:

- ``lost``: a ``seq`` between 1 and ``produced`` that never arrived.
- ``seq gaps``: the runs of missing ``seq`` (one long loss is one gap, scattered losses many).
- ``unknown seq``: a ``seq`` that arrived but was never assigned (above ``produced``).
- ``not caught up``: a cut after which the backlog and fresh frames did not arrive in time.
- ``left in outbox``: messages still queued after a clean stop with the broker up.
- ``unclean exit``: the agent did not exit 0 on SIGTERM, with or without a broker.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Set

import yaml

from edge_agent.mqtt.outbox import Outbox
from tests.agent_world import World, make_world
from tests.mosquitto import TcpGate
from tests.waiting import eventually

from .report import Row

NAME = "broker outage"

FRAMES = 20  # detections that show the agent serves
KEEPALIVE_S = 5  # MQTT keepalive of the agent (the smallest the config allows), so a freeze ends it
CATCH_UP_LIMIT_S = 120.0  # paho's reconnect backoff reaches 60 s between attempts
QUICK = {"outage": 3.0, "freeze": 2.0, "restart": 3.0}
FULL = {"outage": 20.0, "freeze": 15.0, "restart": 10.0}


def _frame_time(detection: Dict[str, Any]) -> float:
    """When the detection's frame was captured (its ``ts``, RFC 3339 UTC with milliseconds)."""
    stamp = datetime.strptime(detection["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=timezone.utc).timestamp()


def _runs(missing: Set[int]) -> int:
    """How many runs of consecutive numbers ``missing`` holds."""
    return sum(1 for n in missing if n - 1 not in missing)


class _Cuts:
    """The scenario's hands on the world: the broker, the agent's network, the agent."""

    def __init__(self, world: World, gate: TcpGate) -> None:
        self.world, self.gate = world, gate
        self.queued: Dict[str, int] = {}  # per cut: detections made while the path was cut
        self.catch_up_s: List[float] = []
        self.not_caught_up = 0
        self.unclean = 0
        self._captured: Dict[int, float] = {}  # seq -> when its frame was captured
        self._read = 0  # detections already in _captured

    def detections(self) -> List[Dict[str, Any]]:
        return self.world.dash.get("detections")

    def captured(self) -> Dict[int, float]:
        """Every ``seq`` received so far, with its frame's capture time."""
        found = self.detections()
        for d in found[self._read :]:
            self._captured[d["seq"]] = _frame_time(d)
        self._read = len(found)
        return self._captured

    def cut_broker(self) -> None:
        self.gate.close()
        self.world.broker.stop()

    def restore_broker(self) -> None:
        subscribed = self.world.dash.subscriptions()
        self.world.broker.start()
        # The dashboard subscribes again on every connect; its SUBACK says it is listening.
        self.world.dash.wait_subscribed(subscribed + 1)
        self.gate.open()

    def outage(self, seconds: float) -> None:
        self.cut_broker()
        cut = time.time()
        time.sleep(seconds)  # a deliberate sleep: the outage itself
        self.restore_broker()
        self.caught_up("outage", cut)

    def freeze(self, seconds: float) -> None:
        self.gate.freeze()
        cut = time.time()
        time.sleep(seconds)  # a deliberate sleep: the network holds every byte meanwhile
        self.gate.thaw()
        self.caught_up("freeze", cut)

    def restart(self, seconds: float) -> None:
        self.cut_broker()
        cut = time.time()
        time.sleep(seconds / 2)  # a deliberate sleep: the first half of the outage
        if self.world.agent.stop() != 0:  # the queue stays on disk
            self.unclean += 1
        self.world.agent.start()
        time.sleep(seconds / 2)  # a deliberate sleep: the second half, the restarted agent offline
        self.restore_broker()
        self.caught_up("restart", cut)

    def caught_up(self, name: str, cut: float) -> None:
        """Wait until every ``seq`` up to a frame captured after the path came back arrived."""
        back = time.time()

        def done() -> bool:
            seqs = self.captured()
            fresh = [seq for seq, t in seqs.items() if t >= back]
            return bool(fresh) and all(seq in seqs for seq in range(1, min(fresh) + 1))

        if eventually(done, CATCH_UP_LIMIT_S):
            self.catch_up_s.append(time.time() - back)
        else:
            self.not_caught_up += 1
        self.queued[name] = sum(cut <= t < back for t in self.captured().values())


def run(root: Path, full: bool) -> Row:
    plan = FULL if full else QUICK
    with make_world(root) as world:
        gate = TcpGate(world.broker.port)
        try:
            config = yaml.safe_load(world.agent.config.read_text())
            config["mqtt"].update({"port": gate.port, "keepalive": KEEPALIVE_S})
            world.agent.config.write_text(yaml.safe_dump(config))
            cuts = _Cuts(world, gate)
            world.agent.start()
            if not eventually(lambda: len(cuts.detections()) >= FRAMES, 60):
                raise AssertionError("the agent never served:\n" + world.agent.log.read_text()[-3000:])
            cuts.outage(plan["outage"])
            cuts.freeze(plan["freeze"])
            cuts.restart(plan["restart"])
            if world.agent.stop() != 0:
                cuts.unclean += 1
        finally:
            gate.close()
        outbox = Outbox(root / "store" / "outbox.db", 100000)
        try:
            produced, left = outbox.counter("detections"), len(outbox)
        finally:
            outbox.close()
        assigned = set(range(1, produced + 1))
        eventually(lambda: assigned <= {d["seq"] for d in cuts.detections()}, 10)
        found = cuts.detections()
    seqs = {d["seq"] for d in found}
    missing = assigned - seqs
    return Row(
        NAME,
        trials=len(plan),
        figures={
            "outage s": plan["outage"],
            "freeze s": plan["freeze"],
            "produced": produced,
            "received": len(seqs & assigned),
            "duplicated": len(found) - len(seqs),
            **{f"queued in {name}": n for name, n in cuts.queued.items()},
            "longest catch-up s": max(cuts.catch_up_s) if cuts.catch_up_s else -1.0,
        },
        wrong={
            "lost": len(missing),
            "seq gaps": _runs(missing),
            "unknown seq": len(seqs - assigned),
            "not caught up": cuts.not_caught_up,
            "left in outbox": left,
            "unclean exit": cuts.unclean,
        },
    )
