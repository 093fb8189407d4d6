"""The MQTT side of the agent (SPEC §4): topic names, the on-disk outbox, the broker link, and
the TLS and credentials of every MQTT client here (:mod:`.tls`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .topics import Topics

if TYPE_CHECKING:
    from .link import IncomingCommand, LinkStats, MqttLink
    from .outbox import Outbox, OutboxItem

__all__ = ["IncomingCommand", "LinkStats", "MqttLink", "Outbox", "OutboxItem", "Topics"]


def __getattr__(name: str) -> Any:
    """The link's and the outbox's names, imported on first use (PEP 562): edge-ctl's connection
    needs only :mod:`.tls`, not the agent's client loop and SQLite queue."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "outbox" if name in ("Outbox", "OutboxItem") else "link"
    value = globals()[name] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return value
