"""The model bundle's manifest (SPEC §2) as pydantic models.

Validation here is about the manifest on its own; the files it names are checked by
``bundle.loader`` and the fit between labels and model outputs by the backend at load time.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# semver 2.0.0, https://semver.org/#is-there-a-suggested-regular-expression-regex-to-check-a-semver-string
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# The artifact kinds the built-in backends load: "tflite", "edgetpu", "openvino", "onnx",
# "opencv". Which backend loads which, each backend class declares (Backend.runtimes); the
# manifest takes any well-formed name, so that a bundle carrying an artifact for a newer
# accelerator (a plugin's) still loads, on its other artifacts, on a device that has no backend
# for it: what nothing here runs is skipped, as unknown top-level keys are.
RUNTIME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def check_plain_file_name(value: str) -> str:
    """A bundle file is a plain name inside the bundle directory: nothing that could escape it."""
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or value.startswith("~")
    ):
        raise ValueError(f"{value!r} is not a plain file name (no '/', '..' or absolute paths)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    color: Literal["rgb", "bgr"] = "rgb"
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: int = Field(114, ge=0, le=255)
    range: Tuple[float, float] = (0.0, 1.0)

    @field_validator("range")
    @classmethod
    def _range_not_empty(cls, v: Tuple[float, float]) -> Tuple[float, float]:
        if v[0] == v[1]:
            raise ValueError(f"range {list(v)} is empty: pixel values 0..255 must map to an interval")
        return v


class DecoderSpec(Strict):
    type: str
    params: Dict[str, Any] = Field(default_factory=dict)


class Artifact(Strict):
    runtime: str
    file: str
    precision: Literal["int8", "uint8", "fp16", "fp32"]
    sha256: str
    bytes: int = Field(ge=0)
    # OpenVINO IR keeps its weights in a second file; TF frozen graphs and darknet models
    # read by OpenCV have their config in one.
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    weights_bytes: Optional[int] = Field(None, ge=0)
    config: Optional[str] = None
    config_sha256: Optional[str] = None
    config_bytes: Optional[int] = Field(None, ge=0)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if not RUNTIME_RE.match(v):
            raise ValueError(f"{v!r} is not an artifact runtime name (lower case letters, digits, '_', '-')")
        return v

    @field_validator("file", "weights", "config")
    @classmethod
    def _plain(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_plain_file_name(v)

    @field_validator("sha256", "weights_sha256", "config_sha256")
    @classmethod
    def _sha(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not SHA256_RE.match(v):
            raise ValueError("must be 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _companions(self) -> Artifact:
        for part in ("weights", "config"):
            name = getattr(self, part)
            sha = getattr(self, f"{part}_sha256")
            size = getattr(self, f"{part}_bytes")
            if name is not None and (sha is None or size is None):
                raise ValueError(f"{part} {name!r} needs {part}_sha256 and {part}_bytes")
        if self.runtime == "openvino" and self.weights is None:
            raise ValueError("an openvino artifact needs its weights (.bin) file")
        return self

    def files(self) -> List[Tuple[str, str, int]]:
        """(name, sha256, bytes) of every file this artifact consists of."""
        out = [(self.file, self.sha256, self.bytes)]
        for part in ("weights", "config"):
            name = getattr(self, part)
            if name is not None:
                out.append((name, getattr(self, f"{part}_sha256"), getattr(self, f"{part}_bytes")))
        return out


class Defaults(Strict):
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10000)


class Manifest(BaseModel):
    # Unknown top-level keys are kept (newer trainers may add some) but never required.
    model_config = ConfigDict(extra="allow", frozen=True)

    schema_: Literal[1] = Field(alias="schema")
    name: str
    version: str
    created: Optional[str] = None
    task: Literal["detect"] = "detect"
    labels: List[str] = Field(min_length=1)
    input: InputSpec
    decoder: DecoderSpec
    artifacts: List[Artifact] = Field(min_length=1)
    defaults: Defaults = Field(default_factory=lambda: Defaults())
    metrics: Dict[str, Any] = Field(default_factory=dict)
    source: Dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} does not match [a-z0-9][a-z0-9._-]{{0,63}}")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not SEMVER_RE.match(v):
            raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: List[str]) -> List[str]:
        seen = set()
        for i, label in enumerate(v):
            if not label.strip():
                raise ValueError(f"label {i} is empty")
            if label in seen:
                raise ValueError(f"label {label!r} appears twice")
            seen.add(label)
        return v

    @model_validator(mode="after")
    def _unique_files(self) -> Manifest:
        seen: Dict[str, str] = {}
        for art in self.artifacts:
            for name, _, _ in art.files():
                if name in ("manifest.json", "manifest.sig"):
                    raise ValueError(f"artifact file {name!r} would overwrite the manifest")
                if name in seen and seen[name] != art.runtime:
                    raise ValueError(f"file {name!r} is listed by two artifacts")
                seen[name] = art.runtime
        return self

    def artifact_for(self, runtime: str) -> Optional[Artifact]:
        return next((a for a in self.artifacts if a.runtime == runtime), None)

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"


def version_key(version: str) -> Tuple[int, int, int, int, str]:
    """Sort key for semantic versions: a pre-release sorts before its release."""
    m = SEMVER_RE.match(version)
    if not m:
        raise ValueError(f"{version!r} is not a semantic version")
    major, minor, patch, pre = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    return (major, minor, patch, 0 if pre else 1, pre or "")
