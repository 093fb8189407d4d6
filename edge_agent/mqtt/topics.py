"""The topic names of the MQTT API (SPEC §4), in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from ..config import AgentConfig, ConfigError

_WILDCARDS = "+#"


def _check_level(value: str, key: str) -> None:
    if not value or "/" in value or any(c in value for c in _WILDCARDS):
        raise ConfigError(f"{key}: {value!r} cannot be an MQTT topic level (empty, or has '/', '+' or '#')")


@dataclass(frozen=True)
class Topics:
    """``P/D/...`` for prefix ``P`` (``mqtt.topic_prefix``) and device ``D`` (``device.id``)."""

    prefix: str
    device: str
    groups: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A prefix may span levels ("site-a/edgewatch"), but no level may be empty or a wildcard:
        # the agent subscribes to P/D/cmd, and a wildcard there would subscribe to far more.
        if any(not level or any(c in level for c in _WILDCARDS) for level in self.prefix.split("/")):
            raise ConfigError(f"mqtt.topic_prefix: {self.prefix!r} is not a valid topic prefix")
        _check_level(self.device, "device.id")
        for group in self.groups:
            _check_level(group, "device.groups")

    @classmethod
    def from_config(cls, config: AgentConfig) -> Topics:
        return cls(config.mqtt.topic_prefix, config.device.id, tuple(config.device.groups))

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def detections(self) -> str:
        return f"{self.base}/detections"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/cmd/result"

    @property
    def cmd_reply_prefix(self) -> str:
        """Where a command's MQTT 5 Response Topic may lie (SPEC §4); the shipped ACL grants a
        device this and nothing else of the kind."""
        return f"{self.cmd_result}/"

    def is_reply_topic(self, topic: str) -> bool:
        """``topic`` is a publishable topic strictly under :attr:`cmd_reply_prefix`."""
        return (
            topic.startswith(self.cmd_reply_prefix)
            and len(topic) > len(self.cmd_reply_prefix)
            and not any(c in topic for c in "+#\0")
        )

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def group_cmds(self) -> List[str]:
        # A group listed twice is still one subscription.
        return [f"{self.prefix}/group/{group}/cmd" for group in dict.fromkeys(self.groups)]

    def command_topics(self) -> List[str]:
        """Every topic the agent takes commands from: its own, then one per group."""
        return [self.cmd, *self.group_cmds]
