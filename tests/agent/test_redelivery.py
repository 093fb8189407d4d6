"""A command the broker delivers again (MQTT DUP) after the agent took it and crashed before
acknowledging it: answered once, not once per delivery (SPEC §5, every accepted command ends
with exactly one result); a replay that is not a redelivery is still rejected."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.mqtt.link import IncomingCommand
from tests.command_rig import TOPICS, CommandRig


def _delivery(payload: bytes, redelivered: bool) -> IncomingCommand:
    return IncomingCommand(TOPICS.cmd, payload, None, None, mid=7, qos=1, redelivered=redelivered)


def _answers(rig: CommandRig) -> list:
    return [json.loads(p)["status"] for topic, p in rig.take_sent() if topic == TOPICS.cmd_result]


def test_a_redelivered_command_that_was_handled_is_not_answered_twice(tmp_path: Path) -> None:
    with CommandRig(tmp_path) as rig:
        payload = rig.command("status")
        rig.handler.handle(_delivery(payload, redelivered=False))
        assert _answers(rig) == ["succeeded"]
        rig.handler.handle(_delivery(payload, redelivered=True))  # the broker, after a crash
        assert _answers(rig) == []
        rig.handler.handle(_delivery(payload, redelivered=False))  # someone replaying it
        assert _answers(rig) == ["rejected"]


def test_a_redelivered_command_never_handled_is_handled(tmp_path: Path) -> None:
    with CommandRig(tmp_path) as rig:
        rig.handler.handle(_delivery(rig.command("status"), redelivered=True))
        assert _answers(rig) == ["succeeded"]
