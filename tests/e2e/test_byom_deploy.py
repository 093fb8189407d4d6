"""A packaged model deploys over MQTT like a trained one (issue 10's "done when"): an
Ultralytics-style TFLite export (tests/ultralytics_like.py) goes through `cloud-trainer package
--model … --sign-key` as a user runs it, is served over HTTP, and a signed deploy command swaps
it into a running `edge-agent run` (real Mosquitto, synthetic camera) in place of the demo
bundle; the detections then name the packaged model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_agent.bundle import load_bundle
from tests import ultralytics_like as ul
from tests.agent_world import BIN, V1, make_world
from tests.bundle_http import BundleServer
from tests.waiting import wait_for

VERSION = "3.0.0"


@pytest.mark.slow
@pytest.mark.needs_tf
def test_packaged_ultralytics_model_deploys_over_mqtt(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    model = ul.export_tflite(tmp_path / "export", "full_integer_quant")
    bundle = tmp_path / "yolov8t-bundle"
    with make_world(tmp_path / "world") as world:
        # signed with the release key the agent trusts (the world's operator key plays both roles)
        proc = subprocess.run(
            [
                str(BIN / "cloud-trainer"),
                "package",
                "--model",
                str(model),
                "--out",
                str(bundle),
                "--version",
                VERSION,
                "--sign-key",
                str(world.root / "op.key"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        packaged = json.loads(proc.stdout.strip().splitlines()[-1])
        assert packaged["signed"] and packaged["name"] == "yolov8t" and packaged["version"] == VERSION
        assert "boxes: normalized" in proc.stderr and "tflite: verified" in proc.stderr

        world.agent.start()
        world.serving(V1)
        with BundleServer(bundle) as server:
            command = world.command(
                "deploy", manifest=server.manifest, sha256=load_bundle(bundle).manifest_sha256
            )
            final = world.final(command, timeout=120)
        assert final["status"] == "succeeded", final
        stages = [r.get("stage") for r in world.results(command) if r["status"] == "in_progress"]
        for stage in ("downloading", "verifying", "loading", "warming", "activating"):
            assert stage in stages

        new = {"name": "yolov8t", "version": VERSION}
        wait_for(
            lambda: world.dash.get("detections") and world.dash.get("detections")[-1]["model"] == new,
            what="a detection message from the packaged model",
        )
        frames = world.fresh_frames(5)
        assert all(f["model"] == new and f["backend"] == "tflite" for f in frames), frames
        labels = {d["label"] for f in frames for d in f["detections"]}
        assert labels <= set(ul.NAMES.values()), labels
        assert world.serving_version() == VERSION
        assert world.stop_and_collect() == 0
        activated = [e for e in world.dash.get("events") if e["type"] == "model_activated"]
        assert activated, world.dash.get("events")
