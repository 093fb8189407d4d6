"""Coral EdgeTPU: the TFLite interpreter with the libedgetpu delegate.

libedgetpu comes from the Coral apt repository (``libedgetpu1-std``), not from PyPI; the PyPI
project called ``pycoral`` is unrelated. Google's pycoral is used only to list devices, and only
when it is importable.
"""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from ..errors import BackendError, BackendUnavailable
from . import litert
from .base import AutoSlot, Probe
from .imports import captured_stderr
from .tflite import TFLiteBackend

log = logging.getLogger(__name__)

LIBRARY = "libedgetpu.so.1"
# Vendor:product before the runtime loads its firmware (Global Unichip) and after (Google).
USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
SYSFS_USB = Path("/sys/bus/usb/devices")
DEV = Path("/dev")
DEVICE_RE = re.compile(r"^(usb|pci)(?::(\d+))?$")


def parse_device(device: Optional[str]) -> Dict[str, str]:
    """``None`` -> any EdgeTPU; ``usb``/``usb:N``/``pci``/``pci:N`` as libedgetpu takes them."""
    if device is None or device == "":
        return {}
    m = DEVICE_RE.match(device)
    if not m:
        raise BackendError(f"coral: device {device!r} is not one of usb, usb:N, pci, pci:N")
    return {"device": device}


def list_edgetpus() -> List[str]:
    """EdgeTPUs attached, as device strings (``usb:0``, ``pci:0``)."""
    try:  # Google's pycoral; the unrelated PyPI 'pycoral' has no such module and is skipped.
        # (quietly: a pycoral built for another numpy prints its failure before raising it)
        with captured_stderr():
            from pycoral.utils.edgetpu import list_edge_tpus

        found = list_edge_tpus()
        counts: Dict[str, int] = {}
        out = []
        for dev in found:
            kind = str(dev.get("type", "usb"))
            out.append(f"{kind}:{counts.get(kind, 0)}")
            counts[kind] = counts.get(kind, 0) + 1
        return out
    except Exception:
        pass
    usb = 0
    if SYSFS_USB.is_dir():
        for d in sorted(SYSFS_USB.iterdir()):
            try:
                ids = ((d / "idVendor").read_text().strip(), (d / "idProduct").read_text().strip())
            except OSError:
                continue
            if ids in USB_IDS:
                usb += 1
    pci = len(list(DEV.glob("apex_*"))) if DEV.is_dir() else 0
    return [f"usb:{i}" for i in range(usb)] + [f"pci:{i}" for i in range(pci)]


def library_error() -> Optional[str]:
    """None when libedgetpu loads, else why not."""
    try:
        ctypes.CDLL(LIBRARY)
    except OSError as e:
        return (
            f"{LIBRARY} not found ({e}); install libedgetpu1-std from the Coral package repository "
            "(https://coral.ai/software/#debian-packages)"
        )
    return None


def _matches(device: Optional[str], found: List[str]) -> bool:
    if not device:
        return bool(found)
    if ":" in device:
        return device in found
    return any(f.startswith(device + ":") for f in found)


def load_delegate(options: Dict[str, str]) -> Any:
    mod, _ = litert.interpreter_module()
    return mod.load_delegate(LIBRARY, options)


class CoralBackend(TFLiteBackend):
    name: ClassVar[str] = "coral"
    runtimes: ClassVar[Sequence[str]] = ("edgetpu",)
    auto_slots: ClassVar[Sequence[AutoSlot]] = (AutoSlot(10),)

    @classmethod
    def probe(cls) -> Probe:
        try:
            _, runtime = litert.interpreter_module()
        except BackendUnavailable as e:
            return Probe(cls.name, False, reason=str(e))
        devices = list_edgetpus()
        lib = library_error()
        if lib:
            return Probe(cls.name, False, runtime=runtime, devices=devices, reason=lib)
        if not devices:
            return Probe(
                cls.name,
                False,
                runtime=runtime,
                reason="no EdgeTPU attached (USB 1a6e:089a/18d1:9302 or /dev/apex_*)",
            )
        return Probe(cls.name, True, runtime=runtime, devices=devices)

    @property
    def accelerator(self) -> str:
        return f"EdgeTPU {self.options.device or 'auto'}"

    def _delegates(self) -> list:
        options = parse_device(self.options.device)
        lib = library_error()
        if lib:
            raise BackendUnavailable(f"coral: {lib}")
        found = list_edgetpus()
        if not _matches(self.options.device, found):
            want = self.options.device or "any EdgeTPU"
            raise BackendUnavailable(
                f"coral: no EdgeTPU at {want} (found: {', '.join(found) or 'none'}); check the USB "
                "cable and the udev rules in deploy/udev, or use --backend tflite"
            )
        try:
            return [load_delegate(options)]
        except (ValueError, RuntimeError, OSError) as e:
            raise BackendUnavailable(
                f"coral: the EdgeTPU delegate failed to load on {self.options.device or 'auto'}: {e}"
            ) from e
