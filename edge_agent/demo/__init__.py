"""`edge-agent demo` (SPEC §8): the whole loop on one machine, with the bundled demo models
(``bundles/``), an embedded MQTT broker (``broker``) and a synthetic camera."""

from __future__ import annotations

from pathlib import Path

BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"
"""Where the demo's model bundles live: ``shapes-1.0.0`` and ``shapes-1.1.0``."""
