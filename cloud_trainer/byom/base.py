"""What every kind of existing model ("bring your own model") gives ``cloud-trainer package``:
the files to put in the bundle and everything the manifest needs, read from the files where
they say it, inferred from the outputs where that is unambiguous, with a note for each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence


@dataclass(frozen=True)
class ArtifactFiles:
    """One artifact: its runtime (manifest ``artifacts[].runtime``), precision and files, as
    they are on disk now (``package`` copies them into the bundle under ``name``s of its own)."""

    runtime: str
    precision: str  # "int8" | "uint8" | "fp16" | "fp32"
    file: Path
    weights: Optional[Path] = None  # OpenVINO .bin, darknet .weights, TF frozen graph .pb
    config: Optional[Path] = None  # darknet .cfg, TF .pbtxt


@dataclass
class Inferred:
    """A model, described for its manifest (SPEC §2). ``notes``: one line per fact, saying where
    it came from ("labels: 80 from the ONNX metadata 'names'", "boxes: normalized (the TFLite
    export of Ultralytics)"); package prints them."""

    kind: str  # e.g. "tflite-ssd", "ultralytics-onnx"
    labels: List[str]
    input: Dict[str, Any]  # the manifest's input section
    decoder: Dict[str, Any]  # {"type": ..., "params": {...}}
    artifacts: List[ArtifactFiles]
    notes: List[str] = field(default_factory=list)
    name: Optional[str] = None  # a name the file suggests (sanitised by package)
    defaults: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class ModelFiles:
    """What the user handed ``package``: ``model`` (a file, or a directory such as an
    Ultralytics ``*_openvino_model/``), ``weights``, ``labels`` (a label file), ``decoder``
    (a decoder type that overrides inference)."""

    model: Path
    weights: Optional[Path] = None
    labels: Optional[Path] = None
    decoder: Optional[str] = None


class ModelKind(Protocol):
    """One kind of existing model. ``claims`` is cheap (names, magic bytes, metadata) and never
    raises; ``inspect`` reads the model for real and raises PackageError naming the file and
    what is missing or ambiguous (and the option that settles it)."""

    name: str

    def claims(self, files: ModelFiles) -> bool: ...

    def inspect(self, files: ModelFiles) -> Inferred: ...


def kinds_text(kinds: Sequence[ModelKind]) -> str:
    return ", ".join(k.name for k in kinds)
