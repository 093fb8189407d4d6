"""Command results (SPEC §5), published on ``P/D/cmd/result`` (and to an MQTT 5 Response Topic).

Every accepted command ends with exactly one ``succeeded`` or ``failed``; a rejected one gets
a single ``rejected`` with the reason in ``detail``.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import Field

from ..messages import Message, utc_now_iso

ResultStatus = Literal["accepted", "in_progress", "succeeded", "failed", "rejected"]
FINAL_STATUSES = frozenset({"succeeded", "failed", "rejected"})


class CommandResult(Message):
    """``progress`` is a fraction 0..1 of the current ``stage``; ``data`` carries the reply of
    commands that return something (status, snapshot)."""

    id: str
    device: str
    ts: str = Field(default_factory=utc_now_iso)
    status: ResultStatus
    stage: Optional[str] = None
    detail: Optional[str] = None
    progress: Optional[float] = None
    data: Optional[Dict[str, Any]] = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def rejected(cls, command_id: str, device: str, reason: str) -> CommandResult:
        return cls(id=command_id, device=device, status="rejected", detail=reason)
