"""The agent in-process, against a real Mosquitto: what it does when its accelerator fails
mid-run (the device call is the one thing replaced: there is no Coral to pull out here)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.demo import BUNDLES_DIR
from edge_agent.errors import BackendError
from edge_agent.service.agent import Agent
from tests.bundle_http import BundleServer
from tests.bundle_variants import variant
from tests.mosquitto import Mosquitto, Subscriber


def make_agent(broker: Mosquitto, store_dir: Path, **sections: Any) -> Agent:
    doc = {
        "device": {"id": "pi-agent"},
        "camera": {"source": "synthetic:5", "width": 320, "height": 240, "fps": 50, "mode": "every"},
        "detector": {"backend": "tflite"},
        "model": {"bundle": str(BUNDLES_DIR / "shapes-1.1.0")},
        "store": {"dir": str(store_dir), **sections.pop("store", {})},
        "mqtt": {"host": broker.host, "port": broker.port},
        "publish": {"mode": "all"},
        "commands": {"require_signature": False},
        "http": {"listen": None},
    }
    doc.update(sections)
    return Agent(AgentConfig.model_validate(doc))


def events(sub: Subscriber) -> list:
    return [json.loads(m.payload) for m in sub.received("edgewatch/pi-agent/events")]


def test_an_accelerator_that_fails_mid_run_is_reloaded_and_serving_resumes(
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
    tmp_path: Path,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store")
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    detections = "edgewatch/pi-agent/detections"
    sub.wait_count(detections, 10, timeout=30)
    assert agent.pipeline is not None
    broken = agent.pipeline.detector
    assert broken is not None

    def unplugged(tensor: Any) -> Any:
        raise BackendError("EdgeTPU usb:0: device disconnected")

    broken.backend.submit = unplugged  # type: ignore[method-assign]  # the device call fails from now on
    sub.wait_for(lambda ms: any(e["type"] == "backend_reloaded" for e in events(sub)), 30, "backend_reloaded")
    assert agent.pipeline.detector is not broken
    n = len(sub.received(detections))
    sub.wait_count(detections, n + 10, timeout=30)  # serving again, on a fresh backend
    agent.stop()
    assert agent.wait_stopped(30)

    kinds = [e["type"] for e in events(sub)]
    failed = [e for e in events(sub) if e["type"] == "inference_failed"]
    assert [e["in_a_row"] for e in failed][:2] == [1, 10]  # reported sparingly, not per frame
    assert "device disconnected" in failed[0]["detail"]
    reloaded = next(e for e in events(sub) if e["type"] == "backend_reloaded")
    assert reloaded["model"] == {"name": "shapes", "version": "1.1.0"} and reloaded["backend"] == "tflite"
    assert kinds.count("backend_reloaded") == 1
    seqs = [json.loads(m.payload)["seq"] for m in sub.received(detections)]
    assert seqs == list(range(1, len(seqs) + 1))


def command(sub: Subscriber, cid: str, kind: str, **args: Any) -> None:
    from edge_agent.commands.envelope import new_command

    doc = new_command(kind, "pi-agent", args)
    doc["id"] = cid
    sub.client.publish("edgewatch/pi-agent/cmd", json.dumps(doc), qos=1).wait_for_publish(5)


def results(sub: Subscriber, cid: str) -> list:
    docs = [json.loads(m.payload) for m in sub.received("edgewatch/pi-agent/cmd/result")]
    return [d for d in docs if d["id"] == cid]


def test_a_fresh_device_waits_for_its_first_model_and_a_second_deploy_meanwhile_is_busy(
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
    tmp_path: Path,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store", model={"bundle": None})
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    status = "edgewatch/pi-agent/status"
    sub.wait_for(lambda ms: any(m.topic == status for m in ms), 30, "a status")
    first = json.loads(sub.received(status)[0].payload)
    assert first["state"] == "online" and first["model"] is None  # up, connected, no model yet

    server = BundleServer(BUNDLES_DIR / "shapes-1.0.0", gated=True)
    try:
        command(sub, "first", "deploy", manifest=f"{server.url}/manifest.json")
        sub.wait_for(lambda ms: any(r.get("stage") == "downloading" for r in results(sub, "first")), 30)
        command(sub, "second", "deploy", manifest=f"{server.url}/manifest.json")
        sub.wait_for(lambda ms: len(results(sub, "second")) >= 1, 30, "the answer to the second deploy")
        second = results(sub, "second")
        assert [r["status"] for r in second] == ["rejected"] and "busy" in second[0]["detail"]
        server.release()
        sub.wait_for(lambda ms: results(sub, "first")[-1]["status"] in ("succeeded", "failed"), 30)
        assert results(sub, "first")[-1]["status"] == "succeeded", results(sub, "first")
    finally:
        server.close()
    detections = "edgewatch/pi-agent/detections"
    sub.wait_count(detections, 5, timeout=30)
    assert {json.loads(m.payload)["model"]["version"] for m in sub.received(detections)} == {"1.0.0"}
    agent.stop()
    assert agent.wait_stopped(30)


def test_snapshots_are_published_at_most_once_a_second_when_enabled(
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
    tmp_path: Path,
) -> None:
    import time

    import cv2
    import numpy as np

    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/snapshot", "edgewatch/pi-agent/detections"])
    agent = make_agent(mosquitto, tmp_path / "store", publish={"mode": "all", "snapshots": True})
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    sub.wait_count("edgewatch/pi-agent/snapshot", 2, timeout=30)
    time.sleep(1.0)  # a deliberate sleep: one more second of frames and snapshots to measure the rate over
    agent.stop()
    assert agent.wait_stopped(30)
    snaps = sub.received("edgewatch/pi-agent/snapshot")
    frames = sub.received("edgewatch/pi-agent/detections")
    assert len(frames) > 3 * len(snaps)  # 50 fps of detections, about one JPEG a second
    image = cv2.imdecode(np.frombuffer(snaps[-1].payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (240, 320, 3)
    assert snaps[-1].content_type == "image/jpeg"


def signed_command(sub: Subscriber, key: Path, cid: str, kind: str, **args: Any) -> None:
    from edge_agent.bundle.signing import load_private_key
    from edge_agent.commands.envelope import new_command, sign_envelope

    doc = new_command(kind, "pi-agent", args)
    doc["id"] = cid
    doc = sign_envelope(doc, load_private_key(key))
    sub.client.publish("edgewatch/pi-agent/cmd", json.dumps(doc), qos=1).wait_for_publish(5)


def final(sub: Subscriber, cid: str, timeout: float = 60) -> dict:
    done = ("succeeded", "failed", "rejected")
    sub.wait_for(lambda ms: any(r["status"] in done for r in results(sub, cid)), timeout, f"the end of {cid}")
    return next(r for r in results(sub, cid) if r["status"] in done)


def broken_tflite(tmp_path: Path) -> Path:
    """Demo 1.1.0 as 1.2.0 with garbage (correctly hashed) for its TFLite file; its ONNX loads."""
    replace = {"model_int8.tflite": b"garbage"}
    return variant(BUNDLES_DIR / "shapes-1.1.0", tmp_path / "broken", version="1.2.0", replace=replace)


def test_a_deploy_whose_artifact_does_not_load_on_the_serving_backend_fails_at_loading(
    mosquitto: Mosquitto, mqtt_subscriber: Any, tmp_path: Path
) -> None:
    """A fallback is for a missing accelerator, never for a broken model: garbage in the
    serving backend's artifact (correctly hashed) fails the deploy even though the bundle's ONNX
    file would load; the same bundle deploys when the command names the backend it runs on."""
    broken = broken_tflite(tmp_path)
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store")
    threading.Thread(target=agent.run, daemon=True).start()
    detections = "edgewatch/pi-agent/detections"
    sub.wait_count(detections, 3, timeout=30)
    try:
        command(sub, "broken", "deploy", manifest=(broken / "manifest.json").as_uri())
        end = final(sub, "broken")
        assert (end["status"], end["stage"]) == ("failed", "loading"), end
        assert "model_int8.tflite" in end["detail"]
        assert agent.services.store.find("1.2.0") is None  # not left installed either
        n = len(sub.received(detections))
        sub.wait_count(detections, n + 3, timeout=30)
        assert {json.loads(m.payload)["model"]["version"] for m in sub.received(detections)} == {"1.1.0"}
        assert {json.loads(m.payload)["backend"] for m in sub.received(detections)} == {"tflite"}

        # Naming "auto" is no way around it either: auto moves on only past a missing runtime.
        command(sub, "auto", "deploy", manifest=(broken / "manifest.json").as_uri(), backend="auto")
        end = final(sub, "auto")
        assert (end["status"], end["stage"]) == ("failed", "loading"), end

        command(sub, "named", "deploy", manifest=(broken / "manifest.json").as_uri(), backend="onnx")
        assert final(sub, "named")["status"] == "succeeded"
        sub.wait_for(
            lambda ms: (
                json.loads(ms[-1].payload).get("backend") == "onnx" if ms[-1].topic == detections else False
            ),
            30,
            "detections from onnx",
        )
    finally:
        agent.stop()
        assert agent.wait_stopped(30)

    # A restart loads 1.2.0 where its deploy proved it loads (onnx), not on the configured
    # tflite, where it would fail and an older version would quietly take over.
    restarted = make_agent(mosquitto, tmp_path / "store")
    threading.Thread(target=restarted.run, daemon=True).start()
    try:
        n = len(sub.received(detections))
        sub.wait_count(detections, n + 5, timeout=30)
        fresh = [json.loads(m.payload) for m in sub.received(detections)[n:]]
        assert {(d["model"]["version"], d["backend"]) for d in fresh[-3:]} == {("1.2.0", "onnx")}
    finally:
        restarted.stop()
        assert restarted.wait_stopped(30)


def test_a_first_deploy_on_auto_fails_at_loading_when_an_available_backends_artifact_is_broken(
    mosquitto: Mosquitto, mqtt_subscriber: Any, tmp_path: Path
) -> None:
    """Nothing serves yet and detector.backend is auto (the default): tflite is available and its
    artifact is garbage, so the deploy fails; auto does not skip to the ONNX file."""
    broken = broken_tflite(tmp_path)
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store", model={"bundle": None}, detector={"backend": "auto"})
    threading.Thread(target=agent.run, daemon=True).start()
    try:
        sub.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms), 30, "a status")
        command(sub, "first", "deploy", manifest=(broken / "manifest.json").as_uri())
        end = final(sub, "first")
        assert (end["status"], end["stage"]) == ("failed", "loading"), end
        assert "model_int8.tflite" in end["detail"]
        assert agent.services.store.current() is None and agent.services.store.versions() == []
    finally:
        agent.stop()
        assert agent.wait_stopped(30)


def test_bundles_are_verified_with_the_release_keys_and_commands_with_the_operator_keys(
    mosquitto: Mosquitto, mqtt_subscriber: Any, tmp_path: Path, caplog: Any
) -> None:
    """store.trusted_keys (SPEC §3): an operator key cannot sign a model, a release key cannot
    command the device; with no release keys listed, the command keys serve both (and a
    warning says so once)."""
    from edge_agent.bundle.signing import write_keypair
    from edge_agent.service.agent import release_keys

    operator_key, operator_pub = write_keypair(tmp_path / "operator")
    release_key, release_pub = write_keypair(tmp_path / "release")
    by_operator = variant(
        BUNDLES_DIR / "shapes-1.1.0", tmp_path / "op", version="1.2.0", sign_key=operator_key
    )
    by_release = variant(
        BUNDLES_DIR / "shapes-1.1.0", tmp_path / "rel", version="1.2.0", sign_key=release_key
    )
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(
        mosquitto,
        tmp_path / "store",
        commands={"require_signature": True, "trusted_keys": [str(operator_pub)]},
        store={"trusted_keys": [str(release_pub)]},
    )
    threading.Thread(target=agent.run, daemon=True).start()
    sub.wait_count("edgewatch/pi-agent/detections", 3, timeout=30)
    try:
        signed_command(sub, release_key, "by-release", "status")
        end = final(sub, "by-release")
        assert end["status"] == "rejected" and "signature" in end["detail"]

        signed_command(
            sub, operator_key, "op-signed", "deploy", manifest=(by_operator / "manifest.json").as_uri()
        )
        end = final(sub, "op-signed")
        assert (end["status"], end["stage"]) == ("failed", "verifying"), end
        assert "does not verify" in end["detail"]

        signed_command(
            sub, operator_key, "rel-signed", "deploy", manifest=(by_release / "manifest.json").as_uri()
        )
        assert final(sub, "rel-signed")["status"] == "succeeded"
    finally:
        agent.stop()
        assert agent.wait_stopped(30)

    # The fallback for configurations from before the split, with its one warning.
    from edge_agent.bundle.signing import load_public_key
    from edge_agent.config import AgentConfig

    shared = AgentConfig.model_validate({"commands": {"trusted_keys": [str(operator_pub)]}})
    op = load_public_key(operator_pub)
    with caplog.at_level("WARNING"):
        assert release_keys(shared, [op]) == [op]
    assert sum("store.trusted_keys is empty" in r.getMessage() for r in caplog.records) == 1


def test_an_unusable_release_key_is_refused_at_start_naming_the_setting(tmp_path: Path) -> None:
    import pytest

    from edge_agent.config import AgentConfig, ConfigError
    from edge_agent.service.agent import release_keys

    (tmp_path / "release.pub").write_text("not a key")
    config = AgentConfig.model_validate({"store": {"trusted_keys": [str(tmp_path / "release.pub")]}})
    with pytest.raises(
        ConfigError, match=r"^store\.trusted_keys\[0\]: .*release\.pub: not a readable PEM public key"
    ):
        release_keys(config, [])
