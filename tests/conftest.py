"""Shared fixtures. The real model files the runtime tests use are shipped, already built, in
tests/fixtures/models (made once by tests/models/build.py; the command is in that folder's
README.md): every machine runs the same files, and no test needs TensorFlow to get them. The
tree is read-only to the tests: a test that changes a bundle copies it to tmp_path first, and
the session fails if the shipped files changed under it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator

import pytest

# The helper modules' own asserts get pytest's messages too (registered before their import).
pytest.register_assert_rewrite("tests.mosquitto", "tests.pki", "tests.s3server")

from tests.mosquitto import mosquitto, mqtt_subscriber  # noqa: E402,F401  (fixtures: a real Mosquitto)
from tests.s3server import s3, s3_endpoint  # noqa: E402,F401  (fixtures: a real S3 endpoint on loopback)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"


def tree_digest(root: Path) -> Dict[str, str]:
    """sha256 of every file under ``root``, by relative path (what the shipped tree holds)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="session")
def models_dir() -> Iterator[Path]:
    """The shipped test models. Hashed before the first test that uses them and after the
    session: a test that wrote into them (instead of a copy in tmp_path) fails the run."""
    before = tree_digest(MODELS)
    assert before, f"no test models in {MODELS}"
    yield MODELS
    after = tree_digest(MODELS)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests changed the shipped test models (copy them to tmp_path first): {changed}"


@pytest.fixture(scope="session")
def shapes_bundle(models_dir: Path) -> Path:
    return models_dir / "shapes"
