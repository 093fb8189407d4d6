"""Decoders: pure functions from a model's output tensors to detections, one per
``decoder.type`` of the manifest (SPEC §2)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..errors import DecoderError
from . import openvino_ssd, ssd, yolov2, yolov3, yolov8
from .base import DecodeOptions, Decoder, DecoderParams, OutputTensor

__all__ = [
    "DECODERS",
    "DecodeOptions",
    "Decoder",
    "DecoderParams",
    "OutputTensor",
    "get_decoder",
    "parse_params",
]

DECODERS: Dict[str, Decoder[Any]] = {
    d.type: d for d in (ssd.DECODER, yolov8.DECODER, yolov2.DECODER, yolov3.DECODER, openvino_ssd.DECODER)
}


def get_decoder(type_name: str) -> Decoder[Any]:
    try:
        return DECODERS[type_name]
    except (KeyError, TypeError) as e:
        raise DecoderError(
            f"unknown decoder type {type_name!r}; known types: {', '.join(sorted(DECODERS))}"
        ) from e


def _describe(decoder: Decoder[Any], err: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = ", ".join(decoder.params.model_fields) or "none"
        return f"unknown param {loc!r} (known: {known})"
    if err["type"] == "missing":
        return f"param {loc!r} is required"
    return f"param {loc!r}: {msg}" if loc else msg


def parse_params(type_name: str, params: Optional[Mapping[str, Any]]) -> DecoderParams:
    """Validate a manifest's ``decoder.params`` against the type's params model."""
    decoder = get_decoder(type_name)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise DecoderError(f"{type_name} decoder params must be an object, got {type(params).__name__}")
    try:
        result: DecoderParams = decoder.params.model_validate(dict(params))
    except ValidationError as e:
        details = "; ".join(_describe(decoder, err) for err in e.errors())
        raise DecoderError(f"{type_name} decoder: {details}") from e
    return result
