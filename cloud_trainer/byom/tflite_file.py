"""What a .tflite file says about itself, read straight from its flatbuffer (TensorFlow's
tensorflow/lite/schema/schema.fbs and tflite-support's metadata_schema.fbs), without a TFLite
runtime: so an EdgeTPU-compiled model, which no interpreter loads without the delegate, can be
read as well as its CPU twin.

Only what ``package`` needs is read: the input tensor (shape, type, quantization), the tensor
types (the precision), the custom ops with their options, and the TFLite metadata that
tflite_support's writers add: the input's normalisation and colour space, and the associated
files, which the writers pack into a zip archive appended to the model.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import PackageError

# schema.fbs TensorType -> numpy dtype name
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}
CUSTOM = 32  # BuiltinOperator.CUSTOM
METADATA_NAME = "TFLITE_METADATA"
# metadata_schema.fbs: AssociatedFileType TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS;
# ProcessUnitOptions NormalizationOptions; ContentProperties ImageProperties; ColorSpaceType.
LABEL_FILE_TYPES = (3, 2)
NORMALIZATION = 1
IMAGE_PROPERTIES = 2
COLOR_SPACES = {1: "rgb", 2: "grayscale"}


class _Table:
    """One flatbuffer table: fields by their index in the schema (the vtable slot)."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def _u32(self, at: int) -> int:
        return int(struct.unpack_from("<I", self.buf, at)[0])

    def _field(self, index: int) -> Optional[int]:
        vtable = self.pos - int(struct.unpack_from("<i", self.buf, self.pos)[0])
        size = int(struct.unpack_from("<H", self.buf, vtable)[0])
        slot = 4 + 2 * index
        if slot >= size:
            return None
        offset = int(struct.unpack_from("<H", self.buf, vtable + slot)[0])
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: Any = 0) -> Any:
        at = self._field(index)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def table(self, index: int) -> Optional[_Table]:
        at = self._field(index)
        return None if at is None else _Table(self.buf, at + self._u32(at))

    def _vector(self, index: int) -> Tuple[int, int]:
        at = self._field(index)
        if at is None:
            return 0, 0
        start = at + self._u32(at)
        return start + 4, self._u32(start)

    def tables(self, index: int) -> List[_Table]:
        start, n = self._vector(index)
        return [_Table(self.buf, start + 4 * i + self._u32(start + 4 * i)) for i in range(n)]

    def scalars(self, index: int, fmt: str) -> List[Any]:
        start, n = self._vector(index)
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if n else []

    def raw(self, index: int) -> bytes:
        start, n = self._vector(index)
        return bytes(self.buf[start : start + n])

    def string(self, index: int) -> Optional[str]:
        at = self._field(index)
        if at is None:
            return None
        return self.raw(index).decode("utf-8", "replace")


def _root(buf: bytes) -> _Table:
    return _Table(buf, int(struct.unpack_from("<I", buf, 0)[0]))


@dataclass
class TensorInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    scale: Optional[float] = None
    zero_point: int = 0


@dataclass
class TfliteInfo:
    """What one .tflite file says about itself."""

    path: Path
    input: TensorInfo
    inputs: int
    tensor_types: List[str]
    custom_ops: Dict[str, List[Dict[str, Any]]]  # custom op name -> the options of each use
    normalisation: Optional[Tuple[List[float], List[float]]] = None  # metadata (mean, std)
    color_space: Optional[str] = None  # metadata ImageProperties: "rgb" / "grayscale"
    label_files: List[str] = field(default_factory=list)  # metadata associated label files
    packed: Dict[str, bytes] = field(default_factory=dict)  # the appended zip's files

    @property
    def edgetpu(self) -> bool:
        return "edgetpu-custom-op" in self.custom_ops

    @property
    def precision(self) -> str:
        """int8 / uint8 when the model computes in integers (its weights' types), fp16 when its
        float weights are half, else fp32."""
        types = set(self.tensor_types)
        for dtype, precision in (("int8", "int8"), ("uint8", "uint8"), ("float16", "fp16")):
            if dtype in types:
                return precision
        return "fp32"


def read_tflite(path: Path) -> TfliteInfo:
    """PackageError naming ``path`` when it is not a TFLite flatbuffer."""
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise PackageError(f"{path}: cannot read it: {e.strerror or e}") from e
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise PackageError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        return _read(path, buf)
    except (struct.error, IndexError, ValueError) as e:
        raise PackageError(f"{path}: a damaged TFLite flatbuffer ({e})") from e


def _read(path: Path, buf: bytes) -> TfliteInfo:
    model = _root(buf)
    # Model: 1 operator_codes, 2 subgraphs, 4 buffers, 6 metadata.
    codes = []
    for code in model.tables(1):
        # OperatorCode: 0 deprecated_builtin_code (int8), 1 custom_code, 3 builtin_code (int32)
        builtin = max(int(code.scalar(0, "b")), int(code.scalar(3, "i")))
        codes.append(code.string(1) if builtin == CUSTOM else None)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise PackageError(f"{path}: a TFLite model without a subgraph")
    graph = subgraphs[0]
    # SubGraph: 0 tensors, 1 inputs, 3 operators. Tensor: 0 shape, 1 type, 3 name, 4 quantization.
    tensors = graph.tables(0)
    types = [TENSOR_TYPES.get(int(t.scalar(1, "b")), "other") for t in tensors]
    inputs = graph.scalars(1, "i")
    if not inputs:
        raise PackageError(f"{path}: the model has no input tensor")
    tensor = tensors[inputs[0]]
    scale, zero_point = None, 0
    quant = tensor.table(4)
    if quant is not None:  # QuantizationParameters: 2 scale [float], 3 zero_point [long]
        scales, zeros = quant.scalars(2, "f"), quant.scalars(3, "q")
        if scales:
            scale, zero_point = float(scales[0]), int(zeros[0]) if zeros else 0
    info = TfliteInfo(
        path=path,
        input=TensorInfo(
            tensor.string(3) or "input", tuple(tensor.scalars(0, "i")), types[inputs[0]], scale, zero_point
        ),
        inputs=len(inputs),
        tensor_types=types,
        custom_ops={},
    )
    for op in graph.tables(3):  # Operator: 0 opcode_index, 5 custom_options
        index = int(op.scalar(0, "I"))
        name = codes[index] if index < len(codes) else None
        if name:
            info.custom_ops.setdefault(name, []).append(_flexbuffer_map(op.raw(5)))
    buffers = model.tables(4)
    for entry in model.tables(6):  # Metadata: 0 name, 1 buffer
        if entry.string(0) == METADATA_NAME:
            index = int(entry.scalar(1, "I"))
            if index < len(buffers):
                _metadata(info, _buffer(buf, buffers[index]))
    info.packed = _packed_files(buf)
    return info


def _buffer(buf: bytes, table: _Table) -> bytes:
    """A Buffer's bytes: inline (0 data), or (models over 2 GB) at 1 offset / 2 size in the file."""
    data = table.raw(0)
    if data:
        return data
    offset, size = int(table.scalar(1, "Q")), int(table.scalar(2, "Q"))
    return bytes(buf[offset : offset + size]) if offset > 1 else b""


def _metadata(info: TfliteInfo, data: bytes) -> None:
    if len(data) < 8 or data[4:8] != b"M001":
        return
    meta = _root(data)
    # ModelMetadata: 3 subgraph_metadata, 6 associated_files.
    # SubGraphMetadata: 2 input_tensor_metadata, 3 output_tensor_metadata, 4 associated_files.
    # TensorMetadata: 3 content, 4 process_units, 6 associated_files.
    files = list(meta.tables(6))
    for sub in meta.tables(3)[:1]:
        tensors_in = sub.tables(2)
        files += sub.tables(4)
        for tensor in sub.tables(3):
            files += tensor.tables(6)
        if tensors_in:
            _input_metadata(info, tensors_in[0])
    for wanted in LABEL_FILE_TYPES:  # AssociatedFile: 0 name, 2 type
        info.label_files += [f.string(0) or "" for f in files if int(f.scalar(2, "b")) == wanted]


def _input_metadata(info: TfliteInfo, tensor: _Table) -> None:
    for unit in tensor.tables(4):  # ProcessUnit: 0 options_type, 1 options
        options = unit.table(1)
        if int(unit.scalar(0, "B")) == NORMALIZATION and options is not None:
            info.normalisation = (options.scalars(0, "f"), options.scalars(1, "f"))  # mean, std
    content = tensor.table(3)  # Content: 0 content_properties_type, 1 content_properties
    if content is not None and int(content.scalar(0, "B")) == IMAGE_PROPERTIES:
        props = content.table(1)  # ImageProperties: 0 color_space
        if props is not None:
            info.color_space = COLOR_SPACES.get(int(props.scalar(0, "b")))


def _packed_files(buf: bytes) -> Dict[str, bytes]:
    """The small files of a zip archive appended to the model (tflite_support packs a model's
    associated files that way); {} when there is none."""
    stream = io.BytesIO(buf)
    if not zipfile.is_zipfile(stream):
        return {}
    try:
        with zipfile.ZipFile(stream) as archive:
            return {i.filename: archive.read(i) for i in archive.infolist() if i.file_size < 16 << 20}
    except (zipfile.BadZipFile, OSError):
        return {}


def _flexbuffer_map(data: bytes) -> Dict[str, Any]:
    """A custom op's options (a FlexBuffer map, as TFLite_Detection_PostProcess writes them);
    {} when they are not one, or the flatbuffers package (TensorFlow's) is not there to read it."""
    if not data:
        return {}
    try:
        from flatbuffers import flexbuffers

        value = flexbuffers.Loads(data)
    except Exception:  # options in another encoding say nothing package needs
        return {}
    return value if isinstance(value, dict) else {}
