"""edgewatch edge agent: frames in, detections out, on whatever accelerator the device has."""

__version__ = "0.1.0"
