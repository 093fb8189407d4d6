"""The service end to end (issue 4's "done when"), every part real: `edge-agent run` as a
subprocess on the synthetic camera, a real Mosquitto broker and a real S3 endpoint on loopback,
`cloud-trainer publish` for the upload and `edge-ctl` for the operator's signed commands.

The two model versions are the demo bundles shipped in the package (shapes 1.0.0 and 1.1.0,
made by scripts/make-demo-bundles.sh), signed here with a key made for the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from edge_agent.bundle import MANIFEST, SIGNATURE, sha256_file
from edge_agent.bundle.signing import generate_keypair, load_private_key, sign
from edge_agent.demo import BUNDLES_DIR
from tests.mosquitto import Mosquitto

BIN = Path(sys.executable).parent
DEVICE = "pi-e2e"
PREFIX = "edgewatch"
V1, V2 = "1.0.0", "1.1.0"


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Dashboard:
    """A subscriber to everything the device publishes, like Home Assistant or Node-RED."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: Dict[str, List[Any]] = {"detections": [], "events": [], "result": [], "status": []}
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dash-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        kind = "result" if msg.topic.endswith("cmd/result") else msg.topic.rsplit("/", 1)[-1]
        if kind in self.messages:
            with self.lock:
                self.messages[kind].append(json.loads(msg.payload))

    def get(self, kind: str) -> List[Any]:
        with self.lock:
            return list(self.messages[kind])

    def versions(self) -> List[str]:
        return [d["model"]["version"] for d in self.get("detections")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AgentProcess:
    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc: Optional[subprocess.Popen] = None

    def start(self, env: Optional[Dict[str, str]] = None) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "edge-agent"), "run", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            log = self.log.read_text()
            raise AssertionError("edge-agent did not stop within 30 s of SIGTERM:\n" + log) from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def world(tmp_path: Path):
    """Keys, signed bundles v1 and v2, a broker, and an agent config running v1 in `every` mode."""
    private_pem, public_pem = generate_keypair()
    (tmp_path / "op.key").write_bytes(private_pem)
    (tmp_path / "op.pub").write_bytes(public_pem)
    key = load_private_key(tmp_path / "op.key")
    bundles = {}
    for version in (V1, V2):
        dst = tmp_path / "bundles" / f"shapes-{version}"
        shutil.copytree(BUNDLES_DIR / f"shapes-{version}", dst)
        (dst / SIGNATURE).write_bytes(sign((dst / MANIFEST).read_bytes(), key))
        bundles[version] = dst
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    config = {
        "device": {"id": DEVICE, "groups": ["lab"]},
        "camera": {"source": "synthetic:11", "width": 320, "height": 240, "fps": 25, "mode": "every"},
        "detector": {"backend": "tflite"},
        "model": {"bundle": str(bundles[V1])},
        "store": {"dir": str(tmp_path / "store"), "keep_versions": 3},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": PREFIX},
        "publish": {"mode": "all"},
        "commands": {"trusted_keys": [str(tmp_path / "op.pub")]},
        "http": {"listen": None},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    dash = Dashboard(broker.port)
    agent = AgentProcess(cfg_path, tmp_path / "agent.log")
    w = World(tmp_path, broker, dash, agent, bundles)
    yield w
    if agent.alive():
        agent.stop()
    dash.close()
    broker.stop()


class World:
    def __init__(
        self, root: Path, broker: Any, dash: Dashboard, agent: AgentProcess, bundles: Dict[str, Path]
    ):
        self.root, self.broker, self.dash, self.agent, self.bundles = root, broker, dash, agent, bundles

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        cmd = [
            str(BIN / "edge-ctl"),
            "--broker",
            f"mqtt://127.0.0.1:{self.broker.port}",
            "--prefix",
            PREFIX,
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())

    def deploy(self, uri: str, *extra: str) -> subprocess.CompletedProcess:
        return self.ctl(
            "deploy",
            "--device",
            DEVICE,
            uri,
            "--key",
            str(self.root / "op.key"),
            "--wait",
            "--timeout",
            "60",
            *extra,
        )

    def serving(self, version: str, frames: int = 5) -> None:
        """Wait until the last `frames` detection messages were all made by `version`."""
        wait_for(
            lambda: len(self.dash.versions()) >= frames and set(self.dash.versions()[-frames:]) == {version},
            what=f"frames from {version}; log:\n{self.agent.log.read_text()[-3000:]}",
        )


def _results(proc: subprocess.CompletedProcess) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def assert_every_frame_once(detections: List[Dict[str, Any]]) -> None:
    seqs = [d["seq"] for d in detections]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq is not consecutive"
    frames = [d["frame"] for d in detections]
    assert frames == list(range(frames[0], frames[0] + len(frames))), "a frame is missing or repeated"


def test_deploy_from_s3_swaps_at_one_frame_boundary(world: World, s3):
    pytest.importorskip("boto3")
    pytest.importorskip("tqdm")
    out = subprocess.run(
        [
            str(BIN / "cloud-trainer"),
            "publish",
            str(world.bundles[V2]),
            s3.uri("models"),
            "--endpoint-url",
            s3.endpoint_url,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    published = json.loads(out.stdout.strip().splitlines()[-1])
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
    assert world.agent.stop() == 0
    time.sleep(0.3)

    detections = world.dash.get("detections")
    assert_every_frame_once(detections)
    versions = world.dash.versions()
    k = versions.index(V2)
    assert k > 0 and versions == [V1] * k + [V2] * (len(versions) - k)
    assert detections[0]["seq"] == 1
    status = world.dash.get("status")
    assert status[-1]["state"] == "stopped"
    assert any(e["type"] == "model_activated" for e in world.dash.get("events"))


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
    rogue = world.root / "rogue"
    shutil.copytree(v2, rogue)
    other_private, _ = generate_keypair()
    (world.root / "other.key").write_bytes(other_private)
    (rogue / SIGNATURE).write_bytes(
        sign((rogue / MANIFEST).read_bytes(), load_private_key(world.root / "other.key"))
    )
    proc = world.deploy((rogue / MANIFEST).as_uri())
    final = _results(proc)[-1]
    assert proc.returncode == 1 and final["status"] == "failed" and final["stage"] == "verifying", final
    assert "manifest.sig does not verify" in final["detail"]
    world.serving(V1)

    # 3. a model that does not load (garbage bytes, correctly hashed and signed): refused at loading
    broken = world.root / "broken"
    shutil.copytree(v2, broken)
    doc = json.loads((broken / MANIFEST).read_text())
    for art in doc["artifacts"]:
        path = broken / art["file"]
        path.write_bytes(b"not a model" * 100)
        art["sha256"], art["bytes"] = sha256_file(path), path.stat().st_size
    doc["version"] = "1.2.0"
    (broken / MANIFEST).write_text(json.dumps(doc, indent=2))
    (broken / SIGNATURE).write_bytes(
        sign((broken / MANIFEST).read_bytes(), load_private_key(world.root / "op.key"))
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


def test_restart_resumes_the_current_version_and_delivers_the_queue(world: World):
    world.agent.start()
    world.serving(V1)
    proc = world.deploy((world.bundles[V2] / MANIFEST).as_uri())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    world.serving(V2)

    world.broker.stop()  # the broker goes away; the agent keeps detecting into its outbox
    before = len(world.dash.get("detections"))
    time.sleep(2.0)
    assert world.agent.stop() == 0  # stopped while the broker is still away: the queue stays on disk
    world.broker.start()
    wait_for(lambda: world.dash.client.is_connected(), what="the dashboard to reconnect")
    time.sleep(0.5)  # its subscription is on its way
    world.agent.start()
    wait_for(lambda: len(world.dash.get("detections")) > before + 60, what="queued and new detections")
    world.serving(V2)
    assert world.agent.stop() == 0
    time.sleep(0.3)
    seqs = sorted({d["seq"] for d in world.dash.get("detections")})
    # at-least-once: nothing lost across the outage and the restart (duplicates would be visible)
    assert seqs == list(range(1, seqs[-1] + 1))
    # the restarted agent served v2 from its store, not the configured v1 bundle
    after_restart = [d for d in world.dash.get("detections") if d["seq"] > max(seqs) - 20]
    assert {d["model"]["version"] for d in after_restart} == {V2}


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
    time.sleep(0.3)
    n = len(world.dash.get("detections"))
    time.sleep(0.8)
    assert len(world.dash.get("detections")) == n
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
