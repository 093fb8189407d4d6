"""The service end to end (issue 4's "done when"), every part real: `edge-agent run` as a
subprocess on the synthetic camera, a real Mosquitto broker and a real S3 endpoint on loopback,
`cloud-trainer publish` for the upload and `edge-ctl` for the operator's signed commands.

The two model versions are the demo bundles shipped in the package (shapes 1.0.0 and 1.1.0,
made by scripts/make-demo-bundles.sh), signed here with a key made for the test.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from edge_agent.bundle import MANIFEST
from edge_agent.bundle.signing import generate_keypair
from tests.agent_world import BIN, DEVICE, PREFIX, V1, V2, World, make_world, publish_bundle
from tests.bundle_http import BundleServer
from tests.bundle_variants import variant
from tests.waiting import holds_for, wait_for


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Keys, signed bundles v1 and v2, a broker, and an agent config running v1 in `every` mode."""
    with make_world(tmp_path) as w:
        yield w


def _results(proc: subprocess.CompletedProcess) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def assert_every_frame_once(detections: List[Dict[str, Any]]) -> None:
    seqs = [d["seq"] for d in detections]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq is not consecutive"
    frames = [d["frame"] for d in detections]
    assert frames == list(range(frames[0], frames[0] + len(frames))), "a frame is missing or repeated"


@pytest.mark.slow
def test_deploy_from_s3_swaps_at_one_frame_boundary(world: World, s3):
    pytest.importorskip("boto3")
    pytest.importorskip("tqdm")
    published = publish_bundle(world.bundles[V2], s3.uri("models"), s3.endpoint_url)
    assert published["version"] == V2 and published["manifest"].startswith("s3://")
    # the agent reaches S3 through the endpoint in its config (MinIO-style)
    cfg = yaml.safe_load(world.agent.config.read_text())
    cfg["s3"] = {"endpoint_url": s3.endpoint_url, "region": "us-east-1"}
    world.agent.config.write_text(yaml.safe_dump(cfg))

    world.agent.start()
    world.serving(V1)
    proc = world.deploy(published["manifest"], "--sha256", published["sha256"])
    results = _results(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = [r["status"] for r in results]
    assert statuses[0] == "accepted" and statuses[-1] == "succeeded"
    stages = [r.get("stage") for r in results if r["status"] == "in_progress"]
    for stage in ("downloading", "verifying", "loading", "warming", "activating"):
        assert stage in stages
    world.serving(V2)
    assert world.stop_and_collect() == 0

    detections = world.dash.get("detections")
    assert_every_frame_once(detections)
    versions = world.dash.versions()
    k = versions.index(V2)
    assert k > 0 and versions == [V1] * k + [V2] * (len(versions) - k)
    assert detections[0]["seq"] == 1
    status = world.dash.get("status")
    assert status[-1]["state"] == "stopped"
    assert any(e["type"] == "model_activated" for e in world.dash.get("events"))


@pytest.mark.slow
def test_failed_deploys_leave_v1_serving_and_rollback_returns(world: World):
    world.agent.start()
    world.serving(V1)
    v2 = world.bundles[V2]
    manifest_uri = (v2 / MANIFEST).as_uri()

    # 1. a wrong sha256 for the manifest: refused at verifying
    proc = world.deploy(manifest_uri, "--sha256", "0" * 64)
    assert proc.returncode == 1
    final = _results(proc)[-1]
    assert final["status"] == "failed" and final["stage"] == "verifying", final
    assert "sha256" in final["detail"]
    world.serving(V1)

    # 2. a bundle signed by a key the device does not trust: refused at verifying
    other_private, _ = generate_keypair()
    (world.root / "other.key").write_bytes(other_private)
    rogue = variant(v2, world.root / "rogue", version=V2, sign_key=world.root / "other.key")
    proc = world.deploy((rogue / MANIFEST).as_uri())
    final = _results(proc)[-1]
    assert proc.returncode == 1 and final["status"] == "failed" and final["stage"] == "verifying", final
    assert "manifest.sig does not verify" in final["detail"]
    world.serving(V1)

    # 3. a model that does not load (garbage bytes, correctly hashed and signed): refused at loading
    garbage = {name: b"not a model" * 100 for name in ("model.onnx", "model_int8.tflite")}
    broken = variant(
        v2, world.root / "broken", version="1.2.0", replace=garbage, sign_key=world.root / "op.key"
    )
    proc = world.deploy((broken / MANIFEST).as_uri())
    final = _results(proc)[-1]
    assert (
        proc.returncode == 1 and final["status"] == "failed" and final["stage"] in ("loading", "warming")
    ), final
    world.serving(V1)
    assert not list((world.root / "store" / "staging").glob("*")), "staging files were left behind"

    # 4. a good deploy, then rollback to the previous version
    proc = world.deploy(manifest_uri)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    world.serving(V2)
    proc = world.ctl(
        "rollback", "--device", DEVICE, "--key", str(world.root / "op.key"), "--wait", "--timeout", "60"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _results(proc)[-1]["status"] == "succeeded"
    world.serving(V1)
    assert world.agent.stop() == 0
    failed = [e for e in world.dash.get("events") if e["type"] == "model_failed"]
    assert len(failed) == 3
    assert_every_frame_once(world.dash.get("detections"))


@pytest.mark.slow
def test_restart_resumes_the_current_version_and_delivers_the_queue(world: World):
    world.agent.start()
    world.serving(V1)
    proc = world.deploy((world.bundles[V2] / MANIFEST).as_uri())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    world.serving(V2)

    world.broker.stop()  # the broker goes away; the agent keeps detecting into its outbox
    before = len(world.dash.get("detections"))
    time.sleep(2.0)  # a deliberate sleep: the outage, while the agent queues its detections
    assert world.agent.stop() == 0  # stopped while the broker is still away: the queue stays on disk
    subscribed = world.dash.subscriptions()
    world.broker.start()
    world.dash.wait_subscribed(subscribed + 1)  # listening again before the agent sends its queue
    world.agent.start()
    wait_for(lambda: len(world.dash.get("detections")) > before + 60, what="queued and new detections")
    world.serving(V2)
    assert world.stop_and_collect() == 0
    seqs = sorted({d["seq"] for d in world.dash.get("detections")})
    # at-least-once: nothing lost across the outage and the restart (duplicates would be visible)
    assert seqs == list(range(1, seqs[-1] + 1))
    # the restarted agent served v2 from its store, not the configured v1 bundle
    after_restart = [d for d in world.dash.get("detections") if d["seq"] > max(seqs) - 20]
    assert {d["model"]["version"] for d in after_restart} == {V2}


@pytest.mark.slow
def test_operator_commands_on_a_running_agent(world: World):
    key = str(world.root / "op.key")
    world.agent.start()
    world.serving(V1)

    proc = world.ctl("status", "--device", DEVICE, "--key", key, "--wait", "--timeout", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = _results(proc)[-1]["data"]
    assert data["model"] == {"name": "shapes", "version": V1} and data["backend"] == "tflite"

    # set: a threshold nothing reaches empties the detections; the change survives in the store
    proc = world.ctl("set", "--device", DEVICE, "--key", key, "--wait", "score_threshold=0.999")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(world.dash.get("detections"))
    wait_for(lambda: len(world.dash.get("detections")) > n + 10)
    assert all(d["detections"] == [] for d in world.dash.get("detections")[-5:])
    assert json.loads((world.root / "store" / "settings.json").read_text()) == {"score_threshold": 0.999}

    proc = world.ctl("snapshot", "--device", DEVICE, "--key", key, "--out", str(world.root / "snap.jpg"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (world.root / "snap.jpg").read_bytes()[:2] == b"\xff\xd8"

    proc = world.ctl("pause", "--device", DEVICE, "--key", key, "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(0.3)  # a deliberate sleep: grace for the frame being inferred when the pause came
    n = len(world.dash.get("detections"))
    holds_for(lambda: len(world.dash.get("detections")) == n, 0.8, "no detection while paused")
    proc = world.ctl("resume", "--device", DEVICE, "--key", key, "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: len(world.dash.get("detections")) > n + 5)

    # unsigned, and signed by a stranger: rejected, and the agent keeps serving
    proc = world.ctl("status", "--device", DEVICE, "--wait", "--timeout", "30")
    assert proc.returncode == 1 and _results(proc)[-1]["status"] == "rejected"
    stranger, _ = generate_keypair()
    (world.root / "stranger.key").write_bytes(stranger)
    proc = world.ctl("status", "--device", DEVICE, "--key", str(world.root / "stranger.key"), "--wait")
    assert proc.returncode == 1 and "signature" in _results(proc)[-1]["detail"]
    # garbage on the command topic is dropped without an answer and without harm
    world.dash.client.publish(f"{PREFIX}/{DEVICE}/cmd", b"\x00not json", qos=1).wait_for_publish(5)
    n = len(world.dash.get("detections"))
    wait_for(lambda: len(world.dash.get("detections")) > n + 5)
    assert world.agent.alive()
    assert world.agent.stop() == 0
    assert_every_frame_once(world.dash.get("detections"))


def test_systemd_notify_contract(world: World, tmp_path: Path):
    """What systemd sees of a `Type=notify` service with `WatchdogSec=`: READY=1 only once
    frames are processed, WATCHDOG=1 pings from the frame loop, STATUS= naming model, backend
    and fps, and STOPPING=1 on SIGTERM — through the real $NOTIFY_SOCKET datagram protocol."""
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    received: List[str] = []

    def drain() -> None:
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except socket.timeout:
                return

    world.agent.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    wait_for(lambda: drain() or any("READY=1" in m for m in received), what="READY=1")
    ready = next(m for m in received if "READY=1" in m)
    assert "STATUS=shapes 1.0.0 on tflite" in ready
    wait_for(lambda: len(world.dash.get("detections")) >= 1, what="detections after READY")
    wait_for(lambda: drain() or sum("WATCHDOG=1" in m for m in received) >= 3, what="watchdog pings")
    assert world.agent.stop() == 0
    drain()
    assert any("STOPPING=1" in m for m in received)
    sock.close()


@pytest.mark.slow
def test_a_deploy_cut_short_by_sigkill_ends_after_the_restart(world: World):
    """SPEC §5: every accepted command ends exactly once, across a crash too. The deploy is held
    in `downloading` (a gated server), the agent is SIGKILLed, and the restarted agent ends the
    command with `failed` at stage `interrupted`, still serving v1 and holding no half-deploy."""
    world.agent.start()
    world.serving(V1)
    server = BundleServer(world.bundles[V2], gated=True)
    try:
        proc = subprocess.Popen(
            [
                str(BIN / "edge-ctl"),
                "--broker",
                f"mqtt://127.0.0.1:{world.broker.port}",
                "--prefix",
                PREFIX,
                "deploy",
                "--device",
                DEVICE,
                server.manifest,
                "--key",
                str(world.root / "op.key"),
                "--wait",
                "--timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            lambda: any(r.get("stage") == "downloading" for r in world.dash.get("result")), what="downloading"
        )
        assert world.agent.proc is not None
        world.agent.proc.kill()
        world.agent.proc.wait(10)
        world.agent.start()
        out, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 1, out + err
    results = _results(subprocess.CompletedProcess([], 1, out, err))
    command_id = results[0]["id"]
    world.final(command_id)  # the dashboard's copy may trail edge-ctl's
    ends = [
        r
        for r in world.dash.get("result")
        if r["id"] == command_id and r["status"] in ("succeeded", "failed")
    ]
    assert [(r["status"], r.get("stage")) for r in ends] == [("failed", "interrupted")]
    world.serving(V1)
    # Restarted once more: the command stays ended (nothing is sent for it again).
    assert world.agent.stop() == 0
    seen = len(world.dash.get("detections"))
    world.agent.start()
    wait_for(lambda: len(world.dash.get("detections")) >= seen + 10, what="frames after the second restart")
    assert world.stop_and_collect() == 0  # a result sent for the command again would be here by now
    ends = [
        r
        for r in world.dash.get("result")
        if r["id"] == command_id and r["status"] in ("succeeded", "failed")
    ]
    assert len(ends) == 1
    assert sorted(p.name for p in (world.root / "store" / "models" / "shapes").iterdir()) == [V1]
