"""Shared fixtures. Real model files come from tests/models/build.py (TensorFlow), built once
into EDGEWATCH_TEST_MODELS and reused while the builder and the scene generator are unchanged.
Environments without TensorFlow (the Python 3.9 device check) use what `make test` built."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The helper modules' own asserts get pytest's messages too (registered before their import).
pytest.register_assert_rewrite("tests.mosquitto", "tests.pki", "tests.s3server")

from tests.mosquitto import mosquitto, mqtt_subscriber  # noqa: E402,F401  (fixtures: a real Mosquitto)
from tests.s3server import s3, s3_endpoint  # noqa: E402,F401  (fixtures: a real S3 endpoint on loopback)

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("EDGEWATCH_TEST_MODELS", ROOT / ".cache" / "test-models"))
# What the built models depend on: the builder, the whole trainer, and the agent code it uses.
BUILD_INPUTS = [
    "tests/models/build.py",
    "cloud_trainer/**/*.py",
    "edge_agent/sources/synthetic.py",
    "edge_agent/preprocess.py",
    "edge_agent/bundle/*.py",
]


def _key() -> str:
    h = hashlib.sha256()
    for pattern in BUILD_INPUTS:
        for path in sorted(ROOT.glob(pattern)):
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _have_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def models_dir() -> Path:
    stamp = MODELS / "COMPLETE"
    key = _key()
    if stamp.is_file() and stamp.read_text().strip() == key:
        return MODELS
    if not _have_tensorflow():
        if os.environ.get("EDGEWATCH_REQUIRE_MODELS"):
            pytest.fail(f"test models missing or stale in {MODELS}; run `make test` (with TensorFlow) first")
        pytest.skip("test models need TensorFlow to build")
    MODELS.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    # A subprocess keeps TensorFlow (and its memory) out of the test process.
    subprocess.run([sys.executable, "-m", "tests.models.build", str(MODELS)], cwd=ROOT, check=True)
    stamp.write_text(key + "\n")
    return MODELS


@pytest.fixture(scope="session")
def shapes_bundle(models_dir: Path) -> Path:
    return models_dir / "shapes"
