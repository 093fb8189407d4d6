"""One device's world for end-to-end tests and the reliability suite: `edge-agent run` as a
subprocess on the synthetic camera, a real Mosquitto on loopback, a dashboard subscribed to
everything the device publishes, signed demo bundles v1 and v2 and an operator key, and
`edge-ctl` to send commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from edge_agent.bundle import MANIFEST, SIGNATURE, load_bundle
from edge_agent.bundle.signing import generate_keypair, load_private_key, sign
from edge_agent.demo import BUNDLES_DIR
from edge_agent.errors import BundleError
from tests.mosquitto import Mosquitto
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
DEVICE = "pi-e2e"
PREFIX = "edgewatch"
V1, V2 = "1.0.0", "1.1.0"


def publish_bundle(bundle: Path, bucket_uri: str, endpoint_url: str) -> Dict[str, str]:
    """``cloud-trainer publish`` as a release does: its JSON line (manifest URI, sha256, version)."""
    from tests.s3server import FAKE_ENV

    out = subprocess.run(
        [
            str(BIN / "cloud-trainer"),
            "publish",
            str(bundle),
            bucket_uri,
            "--endpoint-url",
            endpoint_url,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **FAKE_ENV},
    )
    if out.returncode != 0:
        raise AssertionError(f"cloud-trainer publish failed: {out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Dashboard:
    """A subscriber to everything the device publishes, like Home Assistant or Node-RED."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: Dict[str, List[Any]] = {"detections": [], "events": [], "result": [], "status": []}
        self.lock = threading.Lock()
        self._subacks = 0  # one per connect: it subscribes again on each
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dash-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait_subscribed(1)  # listening before anything the test starts can publish

    def _on_subscribe(self, *args: Any) -> None:
        with self.lock:
            self._subacks += 1

    def subscriptions(self) -> int:
        """How many SUBACKs the dashboard got so far (it subscribes again on every connect)."""
        with self.lock:
            return self._subacks

    def wait_subscribed(self, count: int, timeout: float = 30) -> None:
        """Wait for the dashboard's ``count``-th SUBACK: from then on the broker sends it
        everything published to the device's topics (after a broker restart: ``subscriptions()
        + 1`` counted before the restart)."""
        wait_for(lambda: self.subscriptions() >= count, timeout, f"the dashboard's SUBACK number {count}")

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


@dataclass(frozen=True)
class StoreState:
    installed: List[str]  # versions in models/
    current: Optional[str]  # what current.json names
    verified: bool  # the current version's files match its manifest
    staging: List[str]  # what is left in staging/


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

    def command(self, kind: str, key: Optional[Path] = None, **args: Any) -> str:
        """Publish a command signed by ``key`` (default: the operator's); returns its id."""
        from edge_agent.commands.envelope import new_command, sign_envelope

        doc = sign_envelope(new_command(kind, DEVICE, args), load_private_key(key or self.root / "op.key"))
        self.publish_command(json.dumps(doc).encode())
        return str(doc["id"])

    def publish_command(self, payload: bytes) -> None:
        self.dash.client.publish(f"{PREFIX}/{DEVICE}/cmd", payload, qos=1).wait_for_publish(5)

    def results(self, command_id: str) -> List[Dict[str, Any]]:
        return [r for r in self.dash.get("result") if r.get("id") == command_id]

    def endings(self, command_id: str) -> List[Dict[str, Any]]:
        """The final results (succeeded, failed, rejected) of a command, as received."""
        return [r for r in self.results(command_id) if r["status"] in ("succeeded", "failed", "rejected")]

    def final(self, command_id: str, timeout: float = 60) -> Dict[str, Any]:
        return wait_for(lambda: self.endings(command_id), timeout, f"the end of command {command_id}")[0]

    def fresh_frames(self, count: int = 5, timeout: float = 30) -> List[Dict[str, Any]]:
        """The next ``count`` detection messages from now on."""
        seen = len(self.dash.get("detections"))
        wait_for(lambda: len(self.dash.get("detections")) >= seen + count, timeout, f"{count} new frames")
        return self.dash.get("detections")[seen : seen + count]

    def settle(self) -> None:
        """Wait until every answer to what was sent so far has arrived: the agent handles
        commands in order and sends results oldest first, so once the answer to a fresh status
        command is here, so is any (second) answer to an earlier one."""
        self.final(self.command("status"))

    def serving_version(self) -> str:
        """The version the agent serves, as it answers a status command (detections queued
        before a restart still arrive after it, so the next frames would not tell)."""
        return str(self.final(self.command("status"))["data"]["model"]["version"])

    def store_state(self) -> StoreState:
        """What the store holds on disk now."""
        store = self.root / "store"
        models = store / "models" / "shapes"
        installed = sorted(p.name for p in models.iterdir()) if models.exists() else []
        pointer = store / "current.json"
        current = json.loads(pointer.read_text())["version"] if pointer.exists() else None
        staging = store / "staging"
        leftovers = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        verified = False
        if current is not None:
            try:
                load_bundle(models / current, verify=True)
                verified = True
            except BundleError:
                pass
        return StoreState(installed, current, verified, leftovers)

    def serving(self, version: str, frames: int = 5) -> None:
        """Wait until the last `frames` detection messages were all made by `version`."""
        wait_for(
            lambda: len(self.dash.versions()) >= frames and set(self.dash.versions()[-frames:]) == {version},
            what=lambda: f"frames from {version}; log:\n{self.agent.log.read_text()[-3000:]}",
        )

    def stop_and_collect(self) -> int:
        """Stop the agent (``agent.stop()``, its exit code) and, once it exited cleanly, wait
        until its final "stopped" status is here. The agent sends that status after delivering
        its queue, on the same connection, so from then on the dashboard holds every detection,
        event and result the agent delivered. Only for an agent connected to the broker."""
        before = self._stopped_statuses()
        code = self.agent.stop()
        if code == 0:
            wait_for(lambda: self._stopped_statuses() > before, 30, "the agent's final 'stopped' status")
        return code

    def _stopped_statuses(self) -> int:
        return sum(s.get("state") == "stopped" for s in self.dash.get("status"))


@contextlib.contextmanager
def make_world(tmp_path: Path, **config: Any) -> Iterator[World]:
    """Keys, signed bundles v1 and v2, a broker, and an agent config running v1 in `every` mode
    (``config``: section keys that replace the defaults'); the agent is not started."""
    tmp_path.mkdir(parents=True, exist_ok=True)
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
    settings: Dict[str, Any] = {
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
    for section, values in config.items():  # merged key by key into the defaults
        settings[section] = {**settings.get(section, {}), **values} if isinstance(values, dict) else values
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(settings))
    dash = Dashboard(broker.port)
    agent = AgentProcess(cfg_path, tmp_path / "agent.log")
    w = World(tmp_path, broker, dash, agent, bundles)
    try:
        yield w
    finally:
        if agent.alive():
            agent.stop()
        dash.close()
        broker.stop()
