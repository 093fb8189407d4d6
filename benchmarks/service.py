"""(c): ``edge-agent run`` as systemd runs it, measured from outside.

The agent is a subprocess publishing to a real Mosquitto on loopback at QoS 1; a subscriber
stamps each detection message as it arrives. From those stamps and the messages themselves:

- frames per second: messages per second once the service is warm (the first second after the
  first message is left out: it holds the pipeline's fill and XNNPACK's first-run packing);
- latency capture -> subscriber: arrival time minus the frame's capture time (``ts``, taken on
  the same clock when the camera delivered the frame);
- start-up: from ``Popen`` to the first detection message at the subscriber;
- peak RSS: ``VmHWM`` of the agent process, read just before it is stopped;
- during a deploy: each frame's result time (``ts`` + ``latency_ms.total``) gives the gaps the
  swap makes, and the ``frame`` numbers show whether any frame was lost or repeated.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

from tests.agent_world import DEVICE, PREFIX, V2, AgentProcess, World, publish_bundle
from tests.waiting import wait_for

WARM_S = 1.0  # left out after the first message


class Arrivals:
    """A subscriber to the device's detections that stamps each message on arrival."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._lock = threading.Lock()
        self._items: List[Tuple[float, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/{DEVICE}/detections", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            raise RuntimeError("the bench's subscriber got no SUBACK from the broker")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()  # first: nothing of the subscriber's own work is counted as latency
        with self._lock:
            self._items.append((now, bytes(msg.payload)))

    def take(self) -> List[Tuple[float, bytes]]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def first_at(self) -> Optional[float]:
        with self._lock:
            return self._items[0][0] if self._items else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _capture_time(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


@dataclass
class Message:
    arrived: float
    captured: float
    frame: int
    version: str
    inference_ms: float
    total_ms: float

    @property
    def done(self) -> float:
        """When the pipeline had this frame's result."""
        return self.captured + self.total_ms / 1000.0


def parse(items: List[Tuple[float, bytes]]) -> List[Message]:
    out = []
    for arrived, payload in items:
        doc = json.loads(payload)
        out.append(
            Message(
                arrived=arrived,
                captured=_capture_time(doc["ts"]),
                frame=int(doc["frame"]),
                version=str(doc["model"]["version"]),
                inference_ms=float(doc["latency_ms"]["inference"]),
                total_ms=float(doc["latency_ms"]["total"]),
            )
        )
    return out


@dataclass
class ServiceRun:
    fps: float
    frames: int
    startup_s: float
    peak_rss_mb: float
    inference_ms: float  # the mean the messages report
    latency_ms: Dict[str, float]  # capture -> subscriber
    lost: int  # frame numbers missing or repeated between the first and the last message
    deploy: Dict[str, Any] = field(default_factory=dict)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def lost_frames(messages: List[Message]) -> int:
    """Frame numbers missing between the first and the last, plus those that came twice."""
    frames = [m.frame for m in messages]
    if not frames:
        return 0
    unique = len(set(frames))
    missing = max(frames) - min(frames) + 1 - unique
    return missing + len(frames) - unique


def _percentiles(values_ms: List[float]) -> Dict[str, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
    }


class ServiceBench:
    """Runs the agent in one world (keys, signed bundles v1 and v2, a broker) with a fresh store
    and config for each run."""

    def __init__(self, world: World, env: Optional[Dict[str, str]] = None):
        self.world = world
        self.env = env or {}
        self.arrivals = Arrivals(world.broker.port)
        self._runs = 0
        self._base = yaml.safe_load(world.agent.config.read_text())

    def close(self) -> None:
        self.arrivals.close()

    def _configure(self, sections: Dict[str, Dict[str, Any]]) -> AgentProcess:
        self._runs += 1
        run_dir = self.world.root / f"run-{self._runs}"
        run_dir.mkdir()
        settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._base.items()}
        settings["store"] = {"dir": str(run_dir / "store"), "keep_versions": 3}
        for section, values in sections.items():
            settings[section] = {**settings.get(section, {}), **values}
        config = run_dir / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        agent = AgentProcess(config, run_dir / "agent.log")
        self.world.agent = agent
        return agent

    def run(
        self,
        *,
        backend: str,
        bundle: str,
        source: str,
        seconds: float,
        camera_fps: float = 1000.0,  # above any model's rate here: the camera never waits
        options: Optional[Dict[str, Any]] = None,
        deploy_uri: Optional[Dict[str, str]] = None,
        s3_endpoint: Optional[str] = None,
    ) -> ServiceRun:
        """One run of ``seconds`` after warm-up (a file source ends the run at its end)."""
        sections: Dict[str, Dict[str, Any]] = {
            "camera": {"source": source, "width": 640, "height": 480, "fps": camera_fps, "mode": "every"},
            "detector": {"backend": backend, "options": options or {}},
            "model": {"bundle": bundle},
            "publish": {"mode": "all"},
            "mqtt": {"qos": 1},
        }
        if s3_endpoint:
            sections["s3"] = {"endpoint_url": s3_endpoint, "region": "us-east-1"}
        agent = self._configure(sections)
        self.arrivals.take()
        started = time.time()
        agent.start(self.env)
        assert agent.proc is not None
        first = wait_for(
            lambda: self.arrivals.first_at() or (not agent.alive() and -1.0),
            120,
            lambda: f"a first detection from {backend}; log:\n{agent.log.read_text()[-3000:]}",
        )
        if first == -1.0:
            raise RuntimeError(
                f"edge-agent exited before its first message:\n{agent.log.read_text()[-3000:]}"
            )
        window_start = first + WARM_S
        deadline = window_start + seconds
        deploy: Dict[str, Any] = {}
        if deploy_uri is not None:
            time.sleep(max(0.0, window_start + seconds / 2 - time.time()))
            sent = time.time()
            proc = self.world.deploy(deploy_uri["manifest"], "--sha256", deploy_uri["sha256"])
            ended = time.time()
            deploy = {"sent": sent, "ended": ended, "ok": proc.returncode == 0, "ctl": proc.stdout[-500:]}
            deadline = max(deadline, ended + 2.0)  # frames after the swap, on the new model
        rss = float("nan")
        while time.time() < deadline and agent.alive():
            with contextlib.suppress(OSError, RuntimeError):  # it may exit between the two calls
                rss = peak_rss_mb(agent.proc.pid)
            time.sleep(0.1)
        ended_itself = not agent.alive() or "the camera source ended" in agent.log.read_text()
        window_end = time.time()
        # One that ended by itself delivered its queue, then its final status: all are here.
        code = agent.stop() if ended_itself else self.world.stop_and_collect()
        if code != 0 and not (code == -signal.SIGTERM and ended_itself):  # ending as we stopped it
            raise RuntimeError(f"edge-agent exited {code}:\n{agent.log.read_text()[-3000:]}")
        messages = parse(self.arrivals.take())
        if ended_itself:
            window_end = max(m.arrived for m in messages)
        steady = [m for m in messages if window_start <= m.arrived <= window_end]
        fps = len(steady) / (window_end - window_start) if window_end > window_start else float("nan")
        result = ServiceRun(
            fps=fps,
            frames=len(messages),
            startup_s=first - started,
            peak_rss_mb=rss,
            inference_ms=float(np.mean([m.inference_ms for m in steady])) if steady else float("nan"),
            latency_ms=_percentiles([(m.arrived - m.captured) * 1000 for m in steady]) if steady else {},
            lost=lost_frames(messages),
        )
        if deploy_uri is not None:
            result.deploy = swap_gaps(messages, deploy)
        return result

    def publish_v2(self, s3_endpoint: str) -> Dict[str, str]:
        from tests.s3server import new_bucket

        bucket = new_bucket(s3_endpoint)
        return publish_bundle(self.world.bundles[V2], bucket.uri("models"), s3_endpoint)


def swap_gaps(messages: List[Message], deploy: Dict[str, Any]) -> Dict[str, Any]:
    """The largest gap between two consecutive frames' results while the deploy ran (from the
    command to its final result, plus a second), against the median gap before it."""
    ordered = sorted(messages, key=lambda m: m.frame)
    done = np.array([m.done for m in ordered])
    gaps = np.diff(done) * 1000.0
    before = gaps[done[1:] < deploy["sent"]]
    during = (done[1:] >= deploy["sent"]) & (done[:-1] <= deploy["ended"] + 1.0)
    versions = [m.version for m in ordered]
    switches = sum(1 for a, b in zip(versions, versions[1:]) if a != b)
    arrivals = np.diff(np.array(sorted(m.arrived for m in messages))) * 1000.0
    return {
        "deployed": bool(deploy["ok"]),
        "versions": sorted(set(versions)),
        "switches": switches,
        "median_gap_ms": round(float(np.median(before)), 2) if before.size else float("nan"),
        "largest_gap_before_ms": round(float(before.max()), 2) if before.size else float("nan"),
        "largest_gap_ms": round(float(gaps[during].max()), 2) if during.any() else float("nan"),
        "largest_arrival_gap_ms": round(float(arrivals.max()), 2) if arrivals.size else float("nan"),
        "deploy_s": round(deploy["ended"] - deploy["sent"], 2),
    }


def bench_env(repo: Path, plugin_site: Path) -> Dict[str, str]:
    """The agent's environment: the repository (for the simulated plug-in) on PYTHONPATH."""
    paths = [str(repo), str(plugin_site), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    return {"PYTHONPATH": ":".join(paths)}
