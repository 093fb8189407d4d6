"""edge-ctl (SPEC §7) against a real Mosquitto broker, with a small fake device that checks
commands with the agent's own CommandChecker and answers results like the agent does."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.bundle.signing import load_private_key, load_public_key
from edge_agent.commands import (
    Command,
    CommandChecker,
    CommandRejected,
    CommandResult,
    DeployArgs,
    SeenIds,
    SetArgs,
)
from edge_agent.config import CommandsConfig, DeviceConfig
from edge_agent.ctl import main
from tests.mosquitto import Mosquitto, free_port
from tests.s3server import S3
from tests.waiting import wait_for

DEADLINE_S = 10.0
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One broker for the module's tests (each test has a topic prefix of its own)."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker.port


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own for each test: no test sees another's messages."""
    return f"test{os.getpid()}-{next(_prefixes)}"


def mqtt_client(port: int, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(DEADLINE_S), "test client could not connect"
    return client


Replies = List[Dict[str, Any]]
Behaviour = Callable[[Command], Replies]


def succeed(command: Command) -> Replies:
    data = {"state": "online"} if command.type == "status" else None
    return [{"status": "accepted"}, {"status": "succeeded", "data": data}]


class FakeDevice:
    """Subscribes to its command topics, checks each command with CommandChecker, and answers
    on P/D/cmd/result and/or the MQTT 5 Response Topic with the Correlation Data."""

    def __init__(
        self,
        port: int,
        prefix: str,
        tmp_path: Path,
        device_id: str = "pi-01",
        groups: Sequence[str] = (),
        trusted: Sequence[Path] = (),
        behaviour: Behaviour = succeed,
        result_topic: bool = True,
        response_topic: bool = True,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
    ) -> None:
        self.prefix, self.id = prefix, device_id
        self.behaviour = behaviour
        self.use_result_topic, self.use_response_topic = result_topic, response_topic
        self.commands: List[Command] = []
        self.rejections: List[CommandRejected] = []
        self.response_info: List[Tuple[Optional[str], Optional[bytes]]] = []
        self.expiry: List[Optional[int]] = []  # MQTT 5 Message Expiry Interval of each command
        seen = SeenIds(tmp_path / f"{device_id}-seen.db")
        config = CommandsConfig(require_signature=bool(trusted), trusted_keys=list(trusted))
        self.checker = CommandChecker(config, DeviceConfig(id=device_id, groups=list(groups)), seen)
        self.client = mqtt_client(port, protocol)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        topics = [f"{prefix}/{device_id}/cmd", *(f"{prefix}/group/{g}/cmd" for g in groups)]
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(DEADLINE_S)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response = (getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))
        try:
            command = self.checker.check(message.payload)
        except CommandRejected as e:
            self.rejections.append(e)
            if e.command_id is not None:
                self._reply(CommandResult.rejected(e.command_id, self.id, e.reason), response)
            return
        self.commands.append(command)
        self.response_info.append(response)
        self.expiry.append(getattr(props, "MessageExpiryInterval", None))
        for fields in self.behaviour(command):
            self._reply(CommandResult(id=command.id, device=self.id, **fields), response)

    def _reply(self, result: CommandResult, response: Tuple[Optional[str], Optional[bytes]]) -> None:
        payload = json.dumps(result.to_json_dict())
        if self.use_result_topic:
            self.client.publish(f"{self.prefix}/{self.id}/cmd/result", payload, qos=1)
        topic, correlation = response
        if self.use_response_topic and topic:
            props = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
            props.CorrelationData = correlation
            self.client.publish(topic, payload, qos=1, properties=props)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.checker.seen.close()


@pytest.fixture
def devices() -> Iterator[List[FakeDevice]]:
    started: List[FakeDevice] = []
    yield started
    for device in started:
        device.stop()


@pytest.fixture
def operator_key(tmp_path: Path) -> Path:
    """A key pair made by `edge-ctl keygen`; returns the private key's path."""
    assert main(["keygen", str(tmp_path / "operator")]) == 0
    return tmp_path / "operator.key"


def ctl(
    capsys: pytest.CaptureFixture[str], port: int, prefix: str, *argv: str
) -> Tuple[int, List[Dict[str, Any]], str]:
    """Runs edge-ctl in this process: (exit status, stdout JSON lines, stderr)."""
    capsys.readouterr()
    status = main(["--broker", f"mqtt://127.0.0.1:{port}", "--prefix", prefix, *argv])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return status, lines, err


# --wait and its exit statuses


@pytest.mark.parametrize(
    ("protocol", "result_topic", "response_topic"),
    [("5", True, True), ("5", False, True), ("311", True, False)],
    ids=["v5-both-topics", "v5-response-topic-only", "v311-result-topic"],
)
def test_wait_succeeded(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    operator_key: Path,
    protocol: str,
    result_topic: bool,
    response_topic: bool,
) -> None:
    device = FakeDevice(
        broker_port,
        prefix,
        tmp_path,
        trusted=[operator_key.with_suffix(".pub")],
        result_topic=result_topic,
        response_topic=response_topic,
    )
    devices.append(device)
    args = ["--protocol", protocol, "status", "--device", "pi-01", "--key", str(operator_key), "--wait"]
    status, lines, err = ctl(capsys, broker_port, prefix, *args, "--timeout", "10")
    assert status == 0, err
    # Each result exactly once, even when it arrived on two topics.
    assert [line["status"] for line in lines] == ["accepted", "succeeded"]
    (command,) = device.commands
    assert {line["id"] for line in lines} == {command.id}
    assert lines[1]["data"] == {"state": "online"}
    assert command.envelope.sig is not None  # the device's checker verified it
    topic, correlation = device.response_info[0]
    if protocol == "5":
        # Under the device's own result topic: the only Response Topic a device honours (SPEC §4).
        assert topic is not None and topic.startswith(f"{prefix}/pi-01/cmd/result/edge-ctl-")
        assert correlation == command.id.encode()
    else:
        assert topic is None


def test_rejected_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
) -> None:
    assert main(["keygen", str(tmp_path / "trusted")]) == 0
    assert main(["keygen", str(tmp_path / "other")]) == 0
    devices.append(FakeDevice(broker_port, prefix, tmp_path, trusted=[tmp_path / "trusted.pub"]))
    argv = ["pause", "--device", "pi-01", "--key", str(tmp_path / "other.key"), "--wait", "--timeout", "10"]
    status, lines, err = ctl(capsys, broker_port, prefix, *argv)
    assert status == 1
    assert [(line["status"], line["detail"]) for line in lines] == [
        ("rejected", "signature does not verify against any trusted key")
    ]
    assert "rejected: signature does not verify" in err


def test_failed_exits_1(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
) -> None:
    def fail_download(command: Command) -> Replies:
        return [
            {"status": "accepted"},
            {"status": "in_progress", "stage": "downloading", "progress": 0.0},
            {"status": "failed", "stage": "downloading", "detail": "404"},
        ]

    devices.append(FakeDevice(broker_port, prefix, tmp_path, behaviour=fail_download))
    argv = ["deploy", "--device", "pi-01", "https://example.invalid/m.json", "--wait", "--timeout", "10"]
    status, lines, err = ctl(capsys, broker_port, prefix, *argv)
    assert status == 1
    assert [line["status"] for line in lines] == ["accepted", "in_progress", "failed"]
    assert "unsigned" in err  # no --key: the operator is told


def test_timeout_exits_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
) -> None:
    devices.append(FakeDevice(broker_port, prefix, tmp_path, behaviour=lambda c: [{"status": "accepted"}]))
    status, lines, err = ctl(
        capsys, broker_port, prefix, "resume", "--device", "pi-01", "--wait", "--timeout", "1"
    )
    assert status == 2
    assert [line["status"] for line in lines] == ["accepted"]
    assert "timed out after 1 s waiting for pi-01" in err
    # Nobody there at all.
    status, lines, err = ctl(
        capsys, broker_port, prefix, "status", "--device", "ghost", "--wait", "--timeout", "0.5"
    )
    assert (status, lines) == (2, [])
    assert "no result within 0.5 s" in err


def test_without_wait_prints_the_id_after_puback(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
) -> None:
    device = FakeDevice(broker_port, prefix, tmp_path)
    devices.append(device)
    capsys.readouterr()
    # Broker options after the subcommand work as well as before it.
    argv = ["rollback", "--device", "pi-01", "--version", "1.2.0", "--expires", "30"]
    status = main([*argv, "--broker", f"mqtt://127.0.0.1:{broker_port}", "--prefix", prefix])
    out = capsys.readouterr().out
    assert status == 0
    wait_for(lambda: len(device.commands) == 1, DEADLINE_S, "the device to get the command")
    command = device.commands[0]
    assert out.strip() == command.id
    assert command.type == "rollback" and command.args.model_dump() == {"version": "1.2.0"}
    assert command.envelope.expires is not None
    expiry = device.expiry[0]
    assert expiry is not None and 0 < expiry <= 30  # the broker counts it down while it holds it


# set k=v


def test_set_parses_values_to_their_types(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    operator_key: Path,
) -> None:
    device = FakeDevice(broker_port, prefix, tmp_path, trusted=[operator_key.with_suffix(".pub")])
    devices.append(device)
    settings = [
        "score_threshold=0.55",
        "iou_threshold=1",
        "labels=person, car",
        "publish_mode=changes",
        "max_rate_hz=2",
    ]
    argv = ["set", "--device", "pi-01", "--key", str(operator_key), *settings, "--wait", "--timeout", "10"]
    status, _, err = ctl(capsys, broker_port, prefix, *argv)
    assert status == 0, err
    (command,) = device.commands
    assert command.args == SetArgs(
        score_threshold=0.55,
        iou_threshold=1.0,
        labels=["person", "car"],
        publish_mode="changes",
        max_rate_hz=2.0,
    )
    # labels= with nothing: an empty list.
    status, _, err = ctl(
        capsys, broker_port, prefix, "set", "--device", "pi-01", "--key", str(operator_key), "labels="
    )
    assert status == 0, err
    wait_for(lambda: len(device.commands) == 2, DEADLINE_S, "the second command")
    assert isinstance(device.commands[1].args, SetArgs) and device.commands[1].args.labels == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("score_threshold=abc", "'abc' is not a number"),
        ("score_threshold=nan", "'nan' is not a number"),
        ("score_threshold=1.5", "set: args.score_threshold: Input should be less than or equal to 1"),
        ("publish_mode=sometimes", "args.publish_mode: Input should be 'all', 'detections' or 'changes'"),
        ("volume=11", "expected KEY=VALUE with KEY one of score_threshold"),
        ("score_threshold", "expected KEY=VALUE"),
    ],
)
def test_set_refuses_bad_settings_before_sending(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    setting: str,
    message: str,
) -> None:
    device = FakeDevice(broker_port, prefix, tmp_path)
    devices.append(device)
    status, _, err = ctl(capsys, broker_port, prefix, "set", "--device", "pi-01", setting)
    assert status == 1
    assert message in err and len(err.strip().splitlines()) == 1
    # Proof that nothing went out: a valid command sent next is the first the device sees.
    assert ctl(capsys, broker_port, prefix, "pause", "--device", "pi-01", "--wait", "--timeout", "10")[0] == 0
    assert [c.type for c in device.commands] == ["pause"]


# Groups


@pytest.mark.parametrize("second_fails", [False, True])
def test_group_waits_for_every_device_that_answers(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    operator_key: Path,
    second_fails: bool,
) -> None:
    def fail(command: Command) -> Replies:
        return [{"status": "accepted"}, {"status": "failed", "detail": "camera lost"}]

    trusted = [operator_key.with_suffix(".pub")]
    devices.append(FakeDevice(broker_port, prefix, tmp_path, "pi-01", ["lab"], trusted))
    devices.append(
        FakeDevice(
            broker_port, prefix, tmp_path, "pi-02", ["lab"], trusted, fail if second_fails else succeed
        )
    )
    devices.append(FakeDevice(broker_port, prefix, tmp_path, "pi-03", ["attic"], trusted))
    argv = [
        "status",
        "--group",
        "lab",
        "--key",
        str(operator_key),
        "--wait",
        "--timeout",
        "20",
        "--settle",
        "0.5",
    ]
    started = time.monotonic()
    status, lines, err = ctl(capsys, broker_port, prefix, *argv)
    assert status == (1 if second_fails else 0), err
    assert time.monotonic() - started < 15  # --settle ended it, not the timeout
    finals = {line["device"]: line["status"] for line in lines if line["status"] != "accepted"}
    assert finals == {"pi-01": "succeeded", "pi-02": "failed" if second_fails else "succeeded"}
    assert [len(d.commands) for d in devices] == [1, 1, 0]
    assert devices[0].commands[0].envelope.target == "lab"
    # No Response Topic for a group: a device honours one only under its own P/D/cmd/result/.
    assert devices[0].response_info == [(None, None)]


# keygen


def test_keygen_writes_a_private_key_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_umask = os.umask(0)  # the most permissive umask: keygen must still write 0600
    try:
        assert main(["keygen", str(tmp_path / "ops")]) == 0
    finally:
        os.umask(old_umask)
    private, public = tmp_path / "ops.key", tmp_path / "ops.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    signature = load_private_key(private).sign(b"x")
    load_public_key(public).verify(signature, b"x")
    before = private.read_bytes()
    capsys.readouterr()
    assert main(["keygen", str(tmp_path / "ops")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert private.read_bytes() == before
    # Half a pair in the way is refused too, and nothing is written.
    (tmp_path / "half.pub").write_text("x")
    assert main(["keygen", str(tmp_path / "half")]) == 1
    assert not (tmp_path / "half.key").exists()


# deploy --presign


def upload_bundle(s3: S3, prefix: str) -> Tuple[str, Dict[str, bytes], bytes]:
    """A small bundle with an OpenVINO artifact (xml + weights) and an ONNX one, signed."""
    files = {"model_fp16.xml": b"<net/>", "model_fp16.bin": b"\x01" * 300, "model.onnx": b"onnx" * 50}

    def sha(name: str) -> str:
        return hashlib.sha256(files[name]).hexdigest()

    manifest = {
        "schema": 1,
        "name": "shapes",
        "version": "1.4.0",
        "labels": ["circle", "square"],
        "input": {"width": 64, "height": 64},
        "decoder": {"type": "yolov8", "params": {"boxes": "normalized"}},
        "artifacts": [
            {
                "runtime": "openvino",
                "file": "model_fp16.xml",
                "precision": "fp16",
                "sha256": sha("model_fp16.xml"),
                "bytes": len(files["model_fp16.xml"]),
                "weights": "model_fp16.bin",
                "weights_sha256": sha("model_fp16.bin"),
                "weights_bytes": len(files["model_fp16.bin"]),
            },
            {
                "runtime": "onnx",
                "file": "model.onnx",
                "precision": "fp32",
                "sha256": sha("model.onnx"),
                "bytes": 200,
            },
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    files["manifest.sig"] = b"c2lnbmF0dXJl"
    for name, data in [*files.items(), ("manifest.json", manifest_bytes)]:
        s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{name}", Body=data)
    return s3.uri(f"{prefix}/manifest.json"), files, manifest_bytes


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DEADLINE_S) as response:
        return bytes(response.read())


def test_presign_sends_urls_that_fetch_the_bundle(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    operator_key: Path,
    s3: S3,
) -> None:
    device = FakeDevice(broker_port, prefix, tmp_path, trusted=[operator_key.with_suffix(".pub")])
    devices.append(device)
    uri, files, manifest_bytes = upload_bundle(s3, "models/shapes/1.4.0")
    argv = ["deploy", "--device", "pi-01", uri, "--key", str(operator_key), "--presign"]
    status, _, err = ctl(capsys, broker_port, prefix, *argv, "--endpoint-url", s3.endpoint_url, "--wait")
    assert status == 0, err
    (command,) = device.commands
    args = command.args
    assert isinstance(args, DeployArgs) and args.files is not None
    assert args.sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert "s3://" not in args.manifest and "Signature=" in args.manifest
    assert fetch(args.manifest) == manifest_bytes
    assert set(args.files) == set(files)
    for name, url in args.files.items():
        assert fetch(url) == files[name], name


def test_presign_refuses_an_incomplete_bundle_or_a_wrong_sha256(
    capsys: pytest.CaptureFixture[str], broker_port: int, prefix: str, s3: S3
) -> None:
    uri, _, manifest_bytes = upload_bundle(s3, "b")
    base = ["deploy", "--device", "pi-01", uri, "--presign", "--endpoint-url", s3.endpoint_url]
    status, _, err = ctl(capsys, broker_port, prefix, *base, "--sha256", "0" * 64)
    assert status == 1 and f"sha256 is {hashlib.sha256(manifest_bytes).hexdigest()}" in err
    s3.client.delete_object(Bucket=s3.bucket, Key="b/model_fp16.bin")
    status, _, err = ctl(capsys, broker_port, prefix, *base)
    assert status == 1
    assert err.strip() == f"edge-ctl: s3://{s3.bucket}/b/model_fp16.bin: missing (listed by the manifest)"


# snapshot and watch


def test_snapshot_writes_the_jpeg(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    device: FakeDevice

    def snap(command: Command) -> Replies:
        device.client.publish(f"{prefix}/pi-01/snapshot", jpeg, qos=0)
        return [{"status": "succeeded"}]

    device = FakeDevice(broker_port, prefix, tmp_path, behaviour=snap)
    devices.append(device)
    out = tmp_path / "frame.jpg"
    status, _, err = ctl(
        capsys, broker_port, prefix, "snapshot", "--device", "pi-01", "--out", str(out), "--timeout", "10"
    )
    assert status == 0, err
    assert out.read_bytes() == jpeg


def test_watch_prints_status_and_detections(
    capsys: pytest.CaptureFixture[str], broker_port: int, prefix: str
) -> None:
    publisher = mqtt_client(broker_port)
    status_doc = {
        "state": "online",
        "ts": "2026-11-22T10:00:00.123Z",
        "model": {"name": "shapes", "version": "1.4.0"},
        "backend": "coral",
        "fps": 14.87,
        "camera": "ok",
    }
    publisher.publish(f"{prefix}/pi-01/status", json.dumps(status_doc), qos=1, retain=True).wait_for_publish(
        5
    )
    detection = {
        "device": "pi-01",
        "ts": "2026-11-22T10:00:01.000Z",
        "seq": 7,
        "model": {"name": "shapes", "version": "1.4.0"},
        "detections": [{"label": "circle", "score": 0.912}],
    }
    stop = threading.Event()

    def publish_detections() -> None:  # until watch has seen one: it subscribes at its own pace
        while not stop.is_set():
            publisher.publish(f"{prefix}/pi-01/detections", json.dumps(detection), qos=0)
            stop.wait(0.05)

    thread = threading.Thread(target=publish_detections)
    thread.start()
    try:
        capsys.readouterr()
        assert (
            main(["--broker", f"mqtt://127.0.0.1:{broker_port}", "--prefix", prefix, "watch", "--count", "2"])
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        assert (
            main(
                [
                    "--broker",
                    f"mqtt://127.0.0.1:{broker_port}",
                    "--prefix",
                    prefix,
                    "watch",
                    "--device",
                    "pi-01",
                    "--json",
                    "--count",
                    "1",
                ]
            )
            == 0
        )
        raw = json.loads(capsys.readouterr().out)
    finally:
        stop.set()
        thread.join()
        publisher.publish(f"{prefix}/pi-01/status", b"", retain=True).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
    assert lines[0] == "10:00:00.123 pi-01 status online model=shapes@1.4.0 backend=coral fps=14.9 camera=ok"
    assert lines[1] == "10:00:01.000 pi-01 detections seq=7 shapes@1.4.0 circle:0.91"
    assert raw == {"topic": f"{prefix}/pi-01/status", "payload": status_doc}


# Errors


def test_unreachable_broker_is_one_line_naming_it() -> None:
    port = free_port()  # nothing listens there
    code = "import sys; from edge_agent.ctl import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--broker", f"mqtt://127.0.0.1:{port}", "status", "--device", "pi-01"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and f"mqtt://127.0.0.1:{port}" in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--broker", "http://h", "status", "--device", "d"],
            "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        ),
        (["--broker", "mqtt://h:99999", "status", "--device", "d"], "the port is not a number"),
        (["--broker", "mqtt://h", "--ca", "ca.pem", "status", "--device", "d"], "need an mqtts:// broker"),
        (["status"], "one of the arguments --device --group is required"),
        (["status", "--device", "a/b"], "--device 'a/b': not usable as an MQTT topic level"),
        (["status", "--device", "d", "--timeout", "0"], "--timeout must be a positive number"),
        (
            ["deploy", "--device", "d", "ftp://x/m.json"],
            "deploy: args.manifest: 'ftp://x/m.json' has scheme 'ftp'",
        ),
        (["status", "--device", "d", "--key", "/nonexistent.key"], "/nonexistent.key: not a readable"),
    ],
)
def test_usage_errors_are_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], argv: List[str], message: str
) -> None:
    status: object
    try:
        status = main(argv)
    except SystemExit as exited:  # argparse's own errors
        status = exited.code
    assert status == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_console_script_is_installed() -> None:
    script = shutil.which("edge-ctl", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("edgewatch is not installed in this environment (pip install -e .)")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("edge-ctl ")


def test_deploy_by_channel_sends_the_version_it_points_at_with_its_sha256(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_port: int,
    prefix: str,
    devices: List[FakeDevice],
    operator_key: Path,
    s3: S3,
) -> None:
    pytest.importorskip("boto3")
    device = FakeDevice(broker_port, prefix, tmp_path, trusted=[operator_key.with_suffix(".pub")])
    devices.append(device)
    uri, _, manifest_bytes = upload_bundle(s3, "models/shapes/1.4.0")
    sha = hashlib.sha256(manifest_bytes).hexdigest()
    pointer = {"version": "1.4.0", "manifest": uri, "sha256": sha}
    s3.client.put_object(Bucket=s3.bucket, Key="models/shapes/channels/stable.json", Body=json.dumps(pointer))
    channel = s3.uri("models/shapes/channels/stable.json")
    base = [
        "deploy",
        "--device",
        "pi-01",
        channel,
        "--key",
        str(operator_key),
        "--endpoint-url",
        s3.endpoint_url,
    ]
    status, _, err = ctl(capsys, broker_port, prefix, *base, "--wait")
    assert status == 0, err
    assert f"{channel} -> 1.4.0" in err
    (command,) = device.commands
    assert isinstance(command.args, DeployArgs)
    assert (command.args.manifest, command.args.sha256) == (uri, sha)
    # a --sha256 that disagrees with the channel is refused before anything is sent
    status, _, err = ctl(capsys, broker_port, prefix, *base, "--sha256", "0" * 64)
    assert status == 1 and "points at 1.4.0" in err and len(device.commands) == 1
    # with --presign the resolved version is what gets pre-signed
    status, _, err = ctl(capsys, broker_port, prefix, *base, "--presign", "--wait")
    assert status == 0, err
    presigned = device.commands[-1].args
    assert (
        isinstance(presigned, DeployArgs) and presigned.sha256 == sha and "Signature=" in presigned.manifest
    )
