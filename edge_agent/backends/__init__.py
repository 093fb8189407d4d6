"""Inference backends: one module each, one small interface (``base.Backend``)."""

from .base import Backend, BackendOptions, Pending, Probe
from .registry import available_names, backend_class, create

__all__ = ["Backend", "BackendOptions", "Pending", "Probe", "available_names", "backend_class", "create"]
