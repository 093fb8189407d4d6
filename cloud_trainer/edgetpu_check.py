"""A static check of an int8 TFLite model against what the EdgeTPU compiler maps.

It reads the model with the TFLite interpreter (the same runtime the device uses) and lists
every operation or tensor the EdgeTPU would not take: operations outside Coral's supported
list, tensors that are not 8-bit (int32 biases aside), dynamic shapes, and tensors with more
than three dimensions above size 1. The compiler hands the first unsupported operation and
everything after it to the CPU, so the report names that operation.
Source: https://coral.ai/docs/edgetpu/models-intro/#supported-operations
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge_agent.backends import litert

SUPPORTED_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXP", "FLOOR",
    "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX",
    "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK",
}  # fmt: skip
EIGHT_BIT = (np.uint8, np.int8)


@dataclass
class Finding:
    op_index: int
    op: str
    problem: str

    def __str__(self) -> str:
        return f"op {self.op_index} {self.op}: {self.problem}"


@dataclass
class Report:
    model: str
    ops: int
    findings: List[Finding] = field(default_factory=list)

    @property
    def maps_fully(self) -> bool:
        return not self.findings

    def as_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "ops": self.ops,
            "maps_fully": self.maps_fully,
            "first_cpu_op": str(self.findings[0]) if self.findings else None,
            "findings": [str(f) for f in self.findings],
        }


def check(path: Path) -> Report:
    mod, _ = litert.interpreter_module()
    interp = mod.Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # the only API that lists a model's operations
    report = Report(str(path), len(ops))
    # Tensors no operation produces and that are not the model's input are constants (weights,
    # shapes, permutations): the compiler takes those as they are.
    produced = {t for op in ops for t in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    for op in ops:
        name = str(op["op_name"])
        if name not in SUPPORTED_OPS:
            report.findings.append(Finding(op["index"], name, "operation not supported by the EdgeTPU"))
            continue
        for t in list(op["inputs"]) + list(op["outputs"]):
            if t < 0 or t not in produced:
                continue
            d = tensors[t]
            dtype = np.dtype(d["dtype"])
            is_bias = (
                dtype == np.int32
                and len(d["shape"]) == 1
                and name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
            )
            if dtype not in [np.dtype(x) for x in EIGHT_BIT] and not is_bias:
                report.findings.append(
                    Finding(op["index"], name, f"tensor {d['name']!r} is {dtype}, not 8-bit")
                )
            sig = d.get("shape_signature")
            if sig is not None and any(int(x) < 0 for x in sig):
                report.findings.append(
                    Finding(op["index"], name, f"tensor {d['name']!r} has a dynamic shape {list(sig)}")
                )
            if sum(1 for x in d["shape"] if x > 1) > 3:
                report.findings.append(
                    Finding(
                        op["index"],
                        name,
                        f"tensor {d['name']!r} {list(d['shape'])} has more than 3 dimensions > 1",
                    )
                )
    return report
