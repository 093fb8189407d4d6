"""The MQTT side of the agent (SPEC §4): topic names, the on-disk outbox, the broker link."""

from __future__ import annotations

from .link import IncomingCommand, LinkStats, MqttLink
from .outbox import Outbox, OutboxItem
from .topics import Topics

__all__ = ["IncomingCommand", "LinkStats", "MqttLink", "Outbox", "OutboxItem", "Topics"]
