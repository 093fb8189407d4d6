"""The runtime settings (SPEC §5 ``set``): the one schema of what an operator may change while
the service runs. The configuration file's sections take their fields from here (SPEC §3 keeps
them where they are: thresholds under ``detector``, mode and rate under ``publish``), the ``set``
command's arguments extend ``Settings``, the service keeps its effective values as ``Settings``,
and edge-ctl reads ``k=v`` text by the field types here.

Pydantic only: edge-ctl imports this on an operator's laptop (no numpy, no runtimes).
"""

from __future__ import annotations

import math
import typing
from typing import TYPE_CHECKING, Annotated, Any, Dict, List, Literal, Optional, Tuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .config import AgentConfig

PublishMode = Literal["all", "detections", "changes"]


def _no_blank_labels(v: Optional[List[str]]) -> Optional[List[str]]:
    if v is not None and any(not label.strip() for label in v):
        raise ValueError("labels cannot be empty strings")
    return v


# Each setting's type and bounds, written once; the configuration's sections use these too.
Threshold = Annotated[Optional[float], Field(ge=0, le=1)]
LabelFilter = Annotated[Optional[List[str]], AfterValidator(_no_blank_labels)]
MaxRate = Annotated[Optional[float], Field(gt=0)]


class Settings(BaseModel):
    """What ``set`` changes. ``labels``: publish only these (an empty list: all again);
    ``max_rate_hz``: at most this many detection messages a second (None: no limit)."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: Threshold = None
    iou_threshold: Threshold = None
    labels: LabelFilter = None
    publish_mode: PublishMode = "detections"
    max_rate_hz: MaxRate = None

    # Where each setting lives in the configuration file (section, key), which gives its start value.
    CONFIG_KEYS: typing.ClassVar[Dict[str, Tuple[str, str]]] = {
        "score_threshold": ("detector", "score_threshold"),
        "iou_threshold": ("detector", "iou_threshold"),
        "labels": ("detector", "labels"),
        "publish_mode": ("publish", "mode"),
        "max_rate_hz": ("publish", "max_rate_hz"),
    }

    @classmethod
    def from_config(cls, config: AgentConfig) -> Settings:
        """The settings an ``AgentConfig`` starts the service with."""
        return cls.model_validate(
            {name: getattr(getattr(config, section), key) for name, (section, key) in cls.CONFIG_KEYS.items()}
        )


def parse_setting(name: str, text: str) -> Any:
    """A setting's value from its ``k=v`` text (edge-ctl ``set``), by the field's type: numbers
    for numeric settings, comma-separated lists for list settings, the text otherwise. The
    service validates the result (bounds, choices); this only gives it its JSON type."""
    field = Settings.model_fields.get(name)
    if field is None:
        raise KeyError(name)
    kinds = _kinds(field.annotation)
    if list in kinds:
        return [item.strip() for item in text.split(",") if item.strip()]
    if float in kinds:
        value = float(text)  # ValueError: not a number
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    return text


def _kinds(annotation: Any) -> set:
    """The plain types in an annotation (``Optional[List[str]]`` -> {list, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return {annotation}
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin in (list, List):
        return {list}
    return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
