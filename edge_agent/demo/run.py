"""`edge-agent demo`: the real agent, a broker, the synthetic camera and a live model swap.

Everything is the production path: the agent publishes over MQTT, the demo listens like a
dashboard would, and the swap is a signed ``deploy`` command (with a throwaway key made here)
for the second bundled version, fetched from a ``file://`` URI and verified like any other.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

from ..bundle import MANIFEST, SIGNATURE, sha256_file
from ..bundle.signing import generate_keypair, load_private_key, sign
from ..commands.envelope import new_command, sign_envelope
from ..config import AgentConfig
from ..errors import EdgewatchError
from ..service.agent import Agent
from . import BUNDLES_DIR

FIRST, SECOND = "shapes-1.0.0", "shapes-1.1.0"
DEVICE = "demo-pi"
PREFIX = "edgewatch"


def _broker(url: Optional[str]) -> Tuple[str, int, Any]:
    """(host, port, embedded broker or None)."""
    if url:
        u = urlparse(url)
        if u.scheme != "mqtt" or not u.hostname:
            raise EdgewatchError(f"--broker {url!r}: expected mqtt://HOST[:PORT]")
        return u.hostname, u.port or 1883, None
    from .broker import EmbeddedBroker

    broker = EmbeddedBroker()
    port = broker.start()
    return "127.0.0.1", port, broker


def _free_or_any(listen: str) -> str:
    """The live view's address, or the same host on a free port when that one is taken."""
    import socket

    host, _, port = listen.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
        except (OSError, ValueError):
            print(f"{listen} is taken; the live view takes a free port", flush=True)
            return f"{host}:0"
    return listen


def _map50(bundle: str) -> str:
    metrics = json.loads((BUNDLES_DIR / bundle / MANIFEST).read_text()).get("metrics") or {}
    value = metrics.get("map50")
    return f"{value:.2f}" if isinstance(value, (int, float)) else "?"


def _prepare(workdir: Path) -> Tuple[Path, Path]:
    """Fresh store, a throwaway signing key, and signed copies of both bundles."""
    for leftover in ("store", "bundles"):
        shutil.rmtree(workdir / leftover, ignore_errors=True)
    private_pem, public_pem = generate_keypair()
    (workdir / "demo.key").write_bytes(private_pem)
    (workdir / "demo.pub").write_bytes(public_pem)
    key = load_private_key(workdir / "demo.key")
    for name in (FIRST, SECOND):
        dst = workdir / "bundles" / name
        shutil.copytree(BUNDLES_DIR / name, dst)
        (dst / SIGNATURE).write_bytes(sign((dst / MANIFEST).read_bytes(), key))
    return workdir / "demo.key", workdir / "demo.pub"


class Watcher:
    """What a dashboard sees: detection messages, events and command results."""

    def __init__(self, host: str, port: int, protocol: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        proto = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-watch-{uuid.uuid4().hex[:6]}", protocol=proto
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.detections: List[Dict[str, Any]] = []
        self.results: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        client.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic = msg.topic.rsplit("/", 1)[-1] if not msg.topic.endswith("cmd/result") else "result"
        if topic == "snapshot":
            return
        doc = json.loads(msg.payload)
        with self.lock:
            if topic == "detections":
                self.detections.append(doc)
                if doc["seq"] % 5 == 0 or len(self.detections) == 1:
                    found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in doc["detections"]) or "-"
                    m = doc["model"]
                    print(
                        f"seq {doc['seq']:>5}  {m['name']} {m['version']} on {doc['backend']}"
                        f"  {doc['latency_ms']['inference']:5.1f} ms  {found}",
                        flush=True,
                    )
            elif topic == "result":
                self.results.append(doc)
                extra = doc.get("stage") or doc.get("detail") or ""
                if doc.get("progress") is not None:
                    extra += f" {doc['progress']:.0%}"
                print(f"  deploy {doc['status']} {extra}", flush=True)
            elif topic == "events":
                details = {k: v for k, v in doc.items() if k not in ("type", "ts")}
                print(f"  event {doc['type']}: {json.dumps(details)}", flush=True)

    def publish(self, topic: str, doc: Dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def summarize(detections: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Versions seen in order, the frame where the version changed, and gaps in seq."""
    seqs = [d["seq"] for d in detections]
    gaps = [b for a, b in zip(seqs, seqs[1:]) if b != a + 1]
    switches = [
        (a["frame"], b["frame"], b["model"]["version"])
        for a, b in zip(detections, detections[1:])
        if a["model"]["version"] != b["model"]["version"]
    ]
    counts: Dict[str, int] = {}
    for d in detections:
        counts[d["model"]["version"]] = counts.get(d["model"]["version"], 0) + 1
    summary: Dict[str, Any] = {
        "messages": len(detections),
        "per_version": counts,
        "switches": switches,
        "seq_gaps": gaps,
    }
    # Did the camera stall while the new model loaded? Compare the capture times of the two
    # frames either side of the switch with the usual interval between frames.
    times = [_epoch(d["ts"]) for d in detections]
    intervals = sorted(b - a for a, b in zip(times, times[1:]))
    if intervals:
        summary["median_frame_interval_ms"] = round(intervals[len(intervals) // 2] * 1000, 1)
    summary["switch_interval_ms"] = [
        round((times[i + 1] - times[i]) * 1000, 1)
        for i, (a, b) in enumerate(zip(detections, detections[1:]))
        if a["model"]["version"] != b["model"]["version"]
    ]
    return summary


def _epoch(ts: str) -> float:
    from ..commands.envelope import parse_rfc3339

    return parse_rfc3339(ts)


def run_demo(
    broker: Optional[str] = None,
    seconds: float = 30.0,
    swap_after: float = 8.0,
    http: Optional[str] = "127.0.0.1:8080",
    workdir: Optional[str] = None,
) -> int:
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgewatch-demo-")
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    host, port, embedded = _broker(broker)
    # amqtt speaks MQTT 3.1.1 only; a given broker (mosquitto) gets MQTT 5.
    protocol = 311 if embedded is not None else 5
    key_path, pub_path = _prepare(root)
    if http:
        http = _free_or_any(http)
    config = AgentConfig.model_validate(
        {
            "device": {"id": DEVICE},
            "camera": {"source": "synthetic:7", "width": 640, "height": 480, "fps": 15, "mode": "live"},
            # 0.4 rather than the bundles' 0.3: fewer low-score duplicates in the printout
            "detector": {"score_threshold": 0.4},
            "model": {"bundle": str(root / "bundles" / FIRST)},
            "store": {"dir": str(root / "store")},
            "mqtt": {"host": host, "port": port, "protocol": protocol, "topic_prefix": PREFIX},
            "publish": {"mode": "all"},
            "commands": {"trusted_keys": [str(pub_path)]},
            "http": {"listen": http or None},
        }
    )
    print(f"edgewatch demo: broker mqtt://{host}:{port}, store {root / 'store'}", flush=True)
    print(
        f"shapes {FIRST.split('-')[1]} is deliberately under-trained (mAP@0.5 {_map50(FIRST)});"
        f" after {swap_after:g} s a signed deploy command swaps in {SECOND.split('-')[1]}"
        f" (mAP@0.5 {_map50(SECOND)}) without stopping the camera.",
        flush=True,
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run, name="edge-agent", daemon=True)
    watcher = Watcher(host, port, protocol)
    runner.start()
    if http:
        deadline = time.monotonic() + 30
        while agent.http is None and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if agent.http is not None:
            host_part = http.rsplit(":", 1)[0]
            url = f"http://{host_part}:{agent.http.port}/"
            print(f"live view: {url}  (health: {url}healthz, metrics: {url}metrics)", flush=True)
    try:
        started = time.monotonic()
        swapped = False
        while runner.is_alive() and (seconds <= 0 or time.monotonic() - started < seconds):
            if not swapped and time.monotonic() - started >= swap_after:
                swapped = True
                manifest = root / "bundles" / SECOND / MANIFEST
                print(f"deploying {SECOND} (signed command, {manifest.as_uri()})", flush=True)
                cmd = new_command(
                    "deploy", DEVICE, {"manifest": manifest.as_uri(), "sha256": sha256_file(manifest)}
                )
                watcher.publish(f"{PREFIX}/{DEVICE}/cmd", sign_envelope(cmd, load_private_key(key_path)))
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
        agent.wait_stopped(15)
        time.sleep(0.5)  # the last messages reach the watcher
        watcher.close()
        if embedded is not None:
            embedded.stop()
        with watcher.lock:
            summary = summarize(watcher.detections)
        print("summary: " + json.dumps(summary), flush=True)
        if tmp is not None:
            tmp.cleanup()
    return 0
