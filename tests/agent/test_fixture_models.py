"""The shipped test models (tests/fixtures/models): whole, verified, small, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.bundle import load_bundle

BUNDLES = ("shapes", "shapes-fp32", "ssd", "ovssd")
# Beside the manifest's artifacts: the OpenVINO 2022.3 check's reference outputs.
EXTRA_FILES = {"shapes": {"reference.npz"}}


def test_the_shipped_set_is_exactly_the_bundles(models_dir: Path) -> None:
    """No leftovers of a build (shapes-work, checkpoints, datasets) beside the bundles."""
    assert sorted(p.name for p in models_dir.iterdir()) == sorted([*BUNDLES, "README.md"])


@pytest.mark.parametrize("name", BUNDLES)
def test_every_shipped_bundle_loads_and_verifies(models_dir: Path, name: str) -> None:
    d = models_dir / name
    bundle = load_bundle(d, verify=True)  # sizes and sha256 of every artifact
    listed = {"manifest.json"}
    for a in bundle.manifest.artifacts:
        listed.update(f for f in (a.file, a.weights, a.config) if f)
    present = {p.name for p in d.iterdir()}
    assert present == listed | EXTRA_FILES.get(name, set()), f"{name}: unlisted or missing files"


def test_the_shipped_set_stays_small(models_dir: Path) -> None:
    files = [p for p in models_dir.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 4_000_000, f"test models take {total} bytes"
    assert max(p.stat().st_size for p in files) < 1_000_000
