"""Command results (SPEC §5), published on ``P/D/cmd/result`` (and, for a command whose signature
verified, to its MQTT 5 Response Topic when that lies under ``P/D/cmd/result/``; SPEC §4).

Every accepted command ends with exactly one ``succeeded`` or ``failed``; a rejected one gets
a single ``rejected`` with the reason in ``detail``.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import Field, field_validator

from ..messages import Message, encodable, utc_now_iso

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

    @field_validator("id", "stage", "detail", mode="before")
    @classmethod
    def _encodable(cls, v: Any) -> Any:
        # A detail quotes what a command carried; the result must encode whatever that was.
        return encodable(v) if isinstance(v, str) else v

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def rejected(cls, command_id: str, device: str, reason: str) -> CommandResult:
        return cls(id=command_id, device=device, status="rejected", detail=reason)
