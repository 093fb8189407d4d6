"""Darknet ``.weights`` files (darknet's ``load_weights``), little-endian as darknet writes them
on every machine it runs on:

* the header: ``major``, ``minor``, ``revision`` as int32, then ``seen`` (images trained on):
  int64 when ``major * 10 + minor >= 2`` (and both below 1000), int32 before that; a major or
  minor above 1000 marks transposed weights, which no detector cfg uses and which are refused;
* then, for every ``[convolutional]`` layer in cfg order (the only layers of those the
  converter takes that have parameters): ``filters`` biases, with ``batch_normalize=1`` also
  ``filters`` scales, rolling means and rolling variances, then the weights as
  ``[filters, in_channels / groups, size, size]``.

Nothing else is in the file, so its size is known from the cfg: a file that is shorter or longer
is an error saying how many bytes were expected and found.

Batch normalisation is folded into the convolution as darknet computes it on the CPU
(``(x - mean) / (sqrt(variance) + 1e-6) * scale + bias``); the kernels come out in Keras' layout
``[size, size, in_channels / groups, filters]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from .cfg import DarknetError, Network

BN_EPSILON = 1e-6  # darknet's normalize_cpu adds it to the standard deviation


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_int64(self) -> bool:
        return seen_is_int64(self.major, self.minor)

    @property
    def size(self) -> int:
        return 20 if self.seen_is_int64 else 16

    def as_dict(self) -> Dict[str, Any]:
        return {
            "major": self.major,
            "minor": self.minor,
            "revision": self.revision,
            "seen": self.seen,
            "seen_type": "int64" if self.seen_is_int64 else "int32",
        }


@dataclass(frozen=True)
class ConvParams:
    kernel: np.ndarray  # [size, size, in_channels / groups, filters], batch norm folded in
    bias: np.ndarray  # [filters]


def seen_is_int64(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def read_header(path: Path, data: bytes) -> Header:
    if len(data) < 16:
        raise DarknetError(
            f"{path}: {len(data)} bytes: too short for a darknet weights header (16 or 20 bytes)"
        )
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    if major > 1000 or minor > 1000:
        raise DarknetError(f"{path}: version {major}.{minor}: transposed weights are not supported")
    if seen_is_int64(major, minor):
        if len(data) < 20:
            raise DarknetError(
                f"{path}: version {major}.{minor} needs a 20-byte header, the file has {len(data)}"
            )
        seen = int(np.frombuffer(data, "<i8", 1, 12)[0])
    else:
        seen = int(np.frombuffer(data, "<i4", 1, 12)[0])
    return Header(major, minor, revision, seen)


def expected_size(net: Network, header: Header) -> int:
    return header.size + 4 * sum(conv.float_count for conv in net.convs)


def read_weights(path: Path, net: Network) -> Tuple[Header, Dict[int, ConvParams]]:
    """The header and every convolution's parameters (by layer index), checked against the cfg."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DarknetError(f"{path}: cannot read the weights: {e.strerror or e}") from e
    header = read_header(path, data)
    convs = net.convs
    expected = expected_size(net, header)
    floats = sum(c.float_count for c in convs)
    needs = (
        f"{net.path} needs {expected:,} bytes (a {header.size}-byte header for version "
        f"{header.major}.{header.minor}, then {floats:,} float32 parameters of {len(convs)} "
        "convolutional layers)"
    )
    if len(data) < expected:
        offset, short = header.size, convs[-1]
        for conv in convs:  # the first layer whose parameters run past the end
            offset += 4 * conv.float_count
            if offset > len(data):
                short = conv
                break
        raise DarknetError(
            f"{path}: too short: {needs}, the file has {len(data):,}; it ends inside layer {short.index} "
            f"([convolutional] at {short.where}). Is it the weights of another cfg?"
        )
    if len(data) > expected:
        raise DarknetError(
            f"{path}: too long: {needs}, the file has {len(data):,} ({len(data) - expected:,} bytes more). "
            "Is it the weights of another cfg?"
        )
    values = np.frombuffer(data, "<f4", floats, header.size)
    params: Dict[int, ConvParams] = {}
    at = 0
    for conv in convs:
        n = conv.filters

        def take(count: int) -> np.ndarray:
            nonlocal at
            chunk = values[at : at + count]
            at += count
            return chunk.astype(np.float64)

        bias = take(n)
        if conv.batch_normalize:
            scales, means, variances = take(n), take(n), take(n)
            if (variances < 0).any() or not np.isfinite(variances).all():
                raise DarknetError(
                    f"{path}: layer {conv.index} ([convolutional] at {conv.where}): negative or "
                    "non-finite rolling variances"
                )
            factor = scales / (np.sqrt(variances) + BN_EPSILON)
            bias = bias - means * factor
        else:
            factor = np.ones(n)
        weights = take(conv.weight_count).reshape(n, conv.in_channels // conv.groups, conv.size, conv.size)
        kernel = (weights * factor[:, None, None, None]).transpose(2, 3, 1, 0)
        params[conv.index] = ConvParams(kernel.astype(np.float32), bias.astype(np.float32))
    return header, params
