"""deploy/: example configs, IAM policies, udev rules, the installer (--dry-run, shellcheck), the
broker's certificate script, and the broker config + ACL enforced by a real Mosquitto over mutual
TLS with paho clients."""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.config import load_config
from tests.mosquitto import wait_listening
from tests.pki import certificate, new_key, write_cert, write_key
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"
MAKE_CERTS = DEPLOY / "mosquitto" / "make-certs.sh"
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
OPENSSL = shutil.which("openssl")
SHELLCHECK = shutil.which("shellcheck")

# --- example configs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, backend, device",
    [("coral", "coral", "usb:0"), ("ncs2", "openvino", "MYRIAD"), ("cpu", "tflite", None)],
)
def test_example_configs_load(name: str, backend: str, device: Optional[str]) -> None:
    config = load_config(DEPLOY / "config" / f"{name}.yaml", environ={})
    assert config.detector.backend == backend
    assert config.detector.device == device
    assert config.mqtt.port == 8883
    tls = config.mqtt.tls
    assert tls.ca and tls.cert and tls.key and not tls.insecure
    assert all(str(p).startswith("/etc/edge-agent/") for p in (tls.ca, tls.cert, tls.key))
    assert config.commands.require_signature and config.commands.trusted_keys
    assert str(config.store.dir) == "/var/lib/edge-agent"  # the unit's StateDirectory=


# --- IAM ------------------------------------------------------------------------------------


def _statements(name: str) -> List[Dict[str, Any]]:
    policy = json.loads((DEPLOY / "iam" / name).read_text())
    assert policy["Version"] == "2012-10-17"
    statements: List[Dict[str, Any]] = policy["Statement"]
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        s["Action"] = actions
    return statements


def _allowed(statements: List[Dict[str, Any]], resource: str) -> Dict[str, Dict[str, Any]]:
    """action -> the statement granting it on exactly this resource."""
    return {a: s for s in statements if s["Resource"] == resource for a in s["Action"]}


def test_device_policy_reads_only_the_prefix() -> None:
    statements = _statements("device-policy.json")
    actions = {a for s in statements for a in s["Action"]}
    assert actions == {"s3:GetObject", "s3:ListBucket"}
    assert "s3:GetObject" in _allowed(statements, "arn:aws:s3:::BUCKET/PREFIX/*")
    listing = _allowed(statements, "arn:aws:s3:::BUCKET")["s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["PREFIX/*"]}}


def test_trainer_policy_publishes_to_the_prefix() -> None:
    statements = _statements("trainer-policy.json")
    on_objects = _allowed(statements, "arn:aws:s3:::BUCKET/PREFIX/*")
    assert {"s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"} <= set(on_objects)
    listing = _allowed(statements, "arn:aws:s3:::BUCKET")["s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["PREFIX/*"]}}
    # Published versions are immutable: neither side may delete.
    assert not any("Delete" in a for s in statements for a in s["Action"])


# --- udev -----------------------------------------------------------------------------------


def test_udev_rules_cover_the_accelerators() -> None:
    rules = [
        line
        for line in (DEPLOY / "udev" / "99-edgewatch.rules").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for vendor, product in [
        ("1a6e", "089a"),
        ("18d1", "9302"),
        ("03e7", "2485"),
        ("03e7", "f63b"),
        ("03e7", "2150"),
    ]:
        matching = [
            r
            for r in rules
            if f'ATTR{{idVendor}}=="{vendor}"' in r and f'ATTR{{idProduct}}=="{product}"' in r
        ]
        assert len(matching) == 1, (vendor, product)
        rule = matching[0]
        assert 'SUBSYSTEM=="usb"' in rule and 'MODE="0660"' in rule and 'GROUP="plugdev"' in rule
    apex = [r for r in rules if 'SUBSYSTEM=="apex"' in r]
    assert len(apex) == 1 and 'GROUP="plugdev"' in apex[0] and 'MODE="0660"' in apex[0]
    # Every GOTO has its LABEL, and every assignment/match is KEY op "value".
    for goto in re.findall(r'GOTO="([^"]+)"', "\n".join(rules)):
        assert f'LABEL="{goto}"' in rules
    for rule in rules:
        for item in rule.split(", "):
            assert re.fullmatch(r'[A-Z_]+(\{[A-Za-z_]+\})?(==|!=|=|\+=)"[^"]*"', item.strip()), item


# --- the installer --------------------------------------------------------------------------


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _commands(output: str) -> List[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_scripts_parse() -> None:
    for script in (INSTALL, MAKE_CERTS):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text()


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_scripts_are_shellcheck_clean() -> None:
    assert SHELLCHECK is not None
    result = subprocess.run([SHELLCHECK, str(INSTALL), str(MAKE_CERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("accelerator", ["coral", "ncs2", "cpu"])
def test_install_dry_run(accelerator: str) -> None:
    existed = {p: p.exists() for p in (Path("/opt/edge-agent"), Path("/etc/edge-agent"))}
    result = _install("--accelerator", accelerator, "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    text = "\n".join(commands)
    # Under --dry-run nothing is touched.
    assert {p: p.exists() for p in existed} == existed

    if not Path("/opt/edge-agent/venv/bin/python").exists():
        assert "-m venv --system-site-packages /opt/edge-agent/venv" in text
        pip = [c for c in commands if re.search(r"-m pip install --quiet \S+\[", c)]
        assert len(pip) == 1
        extras_match = re.search(r"\[([a-z0-9,]+)\]$", pip[0])
        assert extras_match, pip[0]
        extras = set(extras_match.group(1).split(","))
        assert {"tflite", "s3"} <= extras
        assert ("coral" in extras) == (accelerator == "coral")
    if subprocess.run(["id", "-u", "edge-agent"], capture_output=True).returncode != 0:
        useradd = [c for c in commands if c.startswith("useradd ")]
        assert len(useradd) == 1
        assert "--system" in useradd[0] and "--groups video,plugdev" in useradd[0]
        assert "/usr/sbin/nologin" in useradd[0] and useradd[0].endswith(" edge-agent")
    if not Path("/etc/udev/rules.d/99-edgewatch.rules").exists():
        assert f"{DEPLOY}/udev/99-edgewatch.rules /etc/udev/rules.d/99-edgewatch.rules" in text
        if Path("/run/udev/control").is_socket():
            assert "udevadm control --reload" in commands
            assert any(c.startswith("udevadm trigger") for c in commands)
        else:
            assert "udev is not running here" in result.stdout
    if not Path("/etc/edge-agent/config.yaml").exists():
        assert f"{DEPLOY}/config/{accelerator}.yaml /etc/edge-agent/config.yaml" in text
    if not Path("/etc/systemd/system/edge-agent.service").exists():
        assert f"{ROOT}/systemd/edge-agent.service /etc/systemd/system/edge-agent.service" in text
        if Path("/run/systemd/system").is_dir():
            assert "systemctl daemon-reload" in commands
            assert "systemctl enable --now edge-agent.service" in commands
        else:  # a container or chroot: enabled for the next boot
            assert "systemctl daemon-reload" not in commands
            assert "systemctl enable edge-agent.service" in commands

    coral_repo = [c for c in commands if "coral-edgetpu-stable" in c]
    apt_installs = [c for c in commands if "apt-get install" in c]
    if accelerator == "coral":
        if not Path("/etc/apt/sources.list.d/coral-edgetpu.list").exists():
            assert len(coral_repo) == 1 and "signed-by=" in coral_repo[0]
        if subprocess.run(["dpkg", "-s", "libedgetpu1-std"], capture_output=True).returncode != 0:
            assert any("libedgetpu1-std" in c for c in apt_installs)
            # The repository (and its key) must be there before apt looks for the package.
            assert commands.index(coral_repo[0]) < commands.index("apt-get update")
    else:
        assert coral_repo == [] and not any("libedgetpu" in c for c in apt_installs)

    openvino = [c for c in commands if "openvino==2022.3.*" in c]
    if accelerator != "ncs2":
        assert openvino == []
    elif not Path("/opt/edge-agent/.install-stamp").exists():
        python_version = subprocess.run(
            ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if platform.machine() != "x86_64":  # no 2022.3 wheel for ARM at all: the manual way
            assert openvino == []
            assert "OpenVINO 2022.3" in result.stderr and "/etc/edge-agent/environment" in result.stderr
        elif python_version in ("3.9", "3.10"):
            assert len(openvino) == 1
        else:  # no 2022.3 wheel for this Python: say so and what to do, install the rest
            assert openvino == []
            assert "OpenVINO 2022.3" in result.stderr and "--python" in result.stderr


def test_install_refuses_bad_arguments(tmp_path: Path) -> None:
    bad = _install("--accelerator", "tpu", "--dry-run")
    assert bad.returncode == 1 and "--accelerator must be coral, ncs2 or cpu" in bad.stderr
    missing = _install("--config", str(tmp_path / "nope.yaml"), "--accelerator", "cpu", "--dry-run")
    assert missing.returncode == 1 and "no such config file" in missing.stderr
    not_source = _install("--source", str(tmp_path), "--accelerator", "cpu", "--dry-run")
    assert not_source.returncode == 1 and "not an edgewatch checkout" in not_source.stderr
    unknown = _install("--frobnicate")
    assert unknown.returncode == 1 and "unknown option --frobnicate" in unknown.stderr
    assert _install("--help").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_install_needs_root_unless_dry_run() -> None:
    # The script comes on stdin: nobody may not be able to read a checkout under a 0700 directory.
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s", "--"]
    refused = subprocess.run(
        [*as_nobody, "--accelerator", "cpu"],
        input=INSTALL.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert refused.returncode == 1 and "needs root" in refused.stderr
    assert refused.stdout == ""  # refused before doing or printing anything


def test_install_uses_the_given_config_only_for_a_new_install(tmp_path: Path) -> None:
    if Path("/etc/edge-agent/config.yaml").exists():
        pytest.skip("this machine has an edge-agent config")
    mine = tmp_path / "site.yaml"
    mine.write_text("device: {id: pi-07}\n")
    result = _install("--accelerator", "cpu", "--config", str(mine), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{mine} /etc/edge-agent/config.yaml" in result.stdout


# --- certificates ---------------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
def test_make_certs_builds_a_pki_and_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    run = [str(MAKE_CERTS), "-o", str(out), "-b", "broker.example.lan", "-b", "10.0.0.5"]
    subprocess.run([*run, "pi-01", "operator"], check=True, capture_output=True, timeout=60)
    ca_before = (out / "ca.crt").read_bytes()
    pi01_before = (out / "pi-01.crt").read_bytes()
    subprocess.run([*run, "pi-01", "pi-02"], check=True, capture_output=True, timeout=60)
    assert (out / "ca.crt").read_bytes() == ca_before  # a second run never replaces the CA...
    assert (out / "pi-01.crt").read_bytes() == pi01_before  # ...nor an issued certificate

    ca = x509.load_pem_x509_certificate(ca_before)
    for name in ("broker", "pi-01", "pi-02", "operator"):
        cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        wanted = ExtendedKeyUsageOID.SERVER_AUTH if name == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        assert list(usage) == [wanted]
        assert (out / f"{name}.key").stat().st_mode & 0o077 == 0, "private keys are owner-only"
    san = x509.load_pem_x509_certificate((out / "broker.crt").read_bytes()).extensions
    names = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example.lan"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]

    bad = subprocess.run([*run, "a/b"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a usable client name" in bad.stderr


# --- the broker: edgewatch.conf + acl over mutual TLS ---------------------------------------


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    write_cert(cert, directory / f"{name}.crt")
    write_key(key, directory / f"{name}.key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_config(certs: Path, acl: Path, port: int) -> str:
    """deploy/mosquitto/edgewatch.conf with only its file paths and port rewritten."""
    replacements = {
        "listener": f"listener {port} 127.0.0.1",
        "cafile": f"cafile {certs / 'ca.crt'}",
        "certfile": f"certfile {certs / 'broker.crt'}",
        "keyfile": f"keyfile {certs / 'broker.key'}",
        "acl_file": f"acl_file {acl}",
    }
    lines, seen = [], set()
    for line in (DEPLOY / "mosquitto" / "edgewatch.conf").read_text().splitlines():
        key = line.split()[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if key in replacements:
            seen.add(key)
            line = replacements[key]
        lines.append(line)
    assert seen == set(replacements), f"edgewatch.conf lacks {set(replacements) - seen}"
    for required in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
    ):
        assert required in lines, required
    # Test-only additions: log to the test's output, and stay root (tmp files are root's alone).
    lines += ["log_dest stderr", "log_type error", "log_type warning", "log_type notice"]
    if os.geteuid() == 0:
        lines.append("user root")
    return "\n".join(lines) + "\n"


@dataclass
class Broker:
    port: int
    certs: Path
    log: Path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    certs = tmp_path_factory.mktemp("broker-certs")
    ca_key = new_key()
    ca = certificate("edgewatch test CA", ca_key, None)
    _write_pair(certs, "ca", ca, ca_key)
    broker_key = new_key()
    _write_pair(
        certs,
        "broker",
        certificate("broker", broker_key, (ca, ca_key), ExtendedKeyUsageOID.SERVER_AUTH),
        broker_key,
    )
    for name in ("pi-01", "pi-02", "operator", "dashboard"):
        key = new_key()
        _write_pair(certs, name, certificate(name, key, (ca, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH), key)
    # A client certificate from a CA the broker does not trust.
    rogue_key = new_key()
    rogue_ca = certificate("rogue CA", rogue_key, None)
    key = new_key()
    _write_pair(
        certs, "rogue", certificate("pi-01", key, (rogue_ca, rogue_key), ExtendedKeyUsageOID.CLIENT_AUTH), key
    )

    acl = certs / "acl"
    shutil.copy(DEPLOY / "mosquitto" / "acl", acl)
    port = _free_port()
    conf = certs / "mosquitto.conf"
    conf.write_text(broker_config(certs, acl, port))
    log = certs / "mosquitto.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, [port], 15, log.read_text)
        yield Broker(port=port, certs=certs, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Client:
    """A paho MQTT 5 client over mutual TLS that records PUBACK reason codes and messages."""

    name: str
    mqtt: Any
    acks: Dict[int, Any] = field(default_factory=dict)
    messages: List[Tuple[str, bytes]] = field(default_factory=list)
    subacks: Dict[int, List[Any]] = field(default_factory=dict)
    sessions_present: List[bool] = field(default_factory=list)  # one per successful CONNACK
    disconnects: List[Any] = field(default_factory=list)  # reason codes
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Any, what: str, timeout: float = 10) -> None:
        """Wait until ``predicate()`` holds, woken by each callback (they notify ``cond``)."""
        wait_for(predicate, timeout, f"{self.name}: {what}", condition=self.cond)

    def publish(self, topic: str, payload: str = "{}") -> int:
        """Publishes at QoS 1 and returns the broker's PUBACK reason code (0 = accepted,
        135 = not authorized)."""
        info = self.mqtt.publish(topic, payload, qos=1)
        self.wait_for(lambda: info.mid in self.acks, f"PUBACK for {topic}")
        return int(self.acks[info.mid].value)

    def subscribe(self, topic: str) -> int:
        result, mid = self.mqtt.subscribe(topic, qos=1)
        assert result == 0
        self.wait_for(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return int(self.subacks[mid][0].value)

    def wait_message(self, topic: str) -> bytes:
        self.wait_for(lambda: any(t == topic for t, _ in self.messages), f"a message on {topic}")
        return next(p for t, p in self.messages if t == topic)

    def received(self, topic: str, payload: bytes) -> bool:
        with self.cond:
            return (topic, payload) in self.messages


def _connect(broker: Broker, cert_name: str, client_id: Optional[str] = None) -> Tuple[Any, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{cert_name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(
        ca_certs=str(broker.certs / "ca.crt"),
        certfile=str(broker.certs / f"{cert_name}.crt"),
        keyfile=str(broker.certs / f"{cert_name}.key"),
    )
    connected: Dict[str, Any] = {}
    done = threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        connected["rc"] = reason_code
        done.set()

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        connected.setdefault("rc", reason_code)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    return client, (connected, done)


@pytest.fixture
def connect(broker: Broker) -> Iterator[Any]:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    clients: List[Client] = []

    def make(
        cert_name: str,
        client_id: Optional[str] = None,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
        will: Optional[Tuple[str, str]] = None,
    ) -> Client:
        """A connected client with the certificate ``cert_name``; the client id is random unless
        given. ``will``: (topic, payload), retained at QoS 1 like the agent's."""
        client, (connected, done) = _connect(broker, cert_name, client_id)
        wrapper = Client(cert_name, client)

        def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            with wrapper.cond:
                if not reason_code.is_failure:
                    wrapper.sessions_present.append(bool(flags.session_present))
                wrapper.cond.notify_all()
            connected["rc"] = reason_code
            done.set()

        def on_disconnect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            with wrapper.cond:
                wrapper.disconnects.append(reason_code)
                wrapper.cond.notify_all()
            connected.setdefault("rc", reason_code)
            done.set()

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            with wrapper.cond:
                wrapper.acks[mid] = reason_code
                wrapper.cond.notify_all()

        def on_message(c: Any, userdata: Any, message: Any) -> None:
            with wrapper.cond:
                wrapper.messages.append((message.topic, message.payload))
                wrapper.cond.notify_all()

        def on_subscribe(c: Any, userdata: Any, mid: int, reason_codes: List[Any], properties: Any) -> None:
            with wrapper.cond:
                wrapper.subacks[mid] = reason_codes
                wrapper.cond.notify_all()

        client.on_publish, client.on_message, client.on_subscribe = on_publish, on_message, on_subscribe
        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        properties = Properties(PacketTypes.CONNECT)
        if session_expiry:
            properties.SessionExpiryInterval = session_expiry
        # The name in the broker certificate.
        client.connect("localhost", broker.port, clean_start=clean_start, properties=properties)
        client.loop_start()
        clients.append(wrapper)
        assert done.wait(10), f"{cert_name}: no CONNACK"
        assert not connected["rc"].is_failure, f"{cert_name}: {connected['rc']}"
        return wrapper

    yield make
    # Session Expiry 0 on the DISCONNECT: no session outlives its test.
    no_session = Properties(PacketTypes.DISCONNECT)
    no_session.SessionExpiryInterval = 0
    for c in clients:
        c.mqtt.disconnect(properties=no_session)
        c.mqtt.loop_stop()


NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16  # accepted


def test_device_publishes_only_under_its_own_id(connect: Any) -> None:
    operator = connect("operator")
    assert operator.subscribe("edgewatch/#") == 1  # granted QoS 1: operators read everything
    pi01 = connect("pi-01")

    # Refused ones first: messages from one client arrive in order, so once the allowed one is
    # in, a refused one that had slipped through would be in too.
    assert pi01.publish("edgewatch/pi-02/detections", '{"forged": true}') == NOT_AUTHORIZED
    assert pi01.publish("edgewatch/pi-01/cmd", '{"self": true}') == NOT_AUTHORIZED
    assert pi01.publish("edgewatch/group/site-a/cmd", '{"group": true}') == NOT_AUTHORIZED
    assert pi01.publish("other/topic") == NOT_AUTHORIZED
    for suffix in ("detections", "status", "events", "cmd/result", "snapshot"):
        assert pi01.publish(f"edgewatch/pi-01/{suffix}", '{"ok": true}') == 0, suffix
    assert operator.wait_message("edgewatch/pi-01/snapshot") == b'{"ok": true}'
    topics = {t for t, _ in operator.messages}
    assert "edgewatch/pi-02/detections" not in topics
    assert "edgewatch/pi-01/cmd" not in topics and "edgewatch/group/site-a/cmd" not in topics


def test_operator_commands_reach_the_device(connect: Any) -> None:
    pi01 = connect("pi-01")
    assert pi01.subscribe("edgewatch/pi-01/cmd") == 1
    assert pi01.subscribe("edgewatch/group/site-a/cmd") == 1
    operator = connect("operator")
    assert operator.publish("edgewatch/pi-01/cmd", '{"id": "c1"}') == 0
    assert pi01.wait_message("edgewatch/pi-01/cmd") == b'{"id": "c1"}'
    assert operator.publish("edgewatch/group/site-a/cmd", '{"id": "c2"}') == 0
    assert pi01.wait_message("edgewatch/group/site-a/cmd") == b'{"id": "c2"}'
    # An operator sends commands; it does not speak for devices.
    assert operator.publish("edgewatch/pi-01/detections") == NOT_AUTHORIZED


def test_a_device_does_not_read_another_devices_commands(connect: Any) -> None:
    pi02 = connect("pi-02")
    pi02.subscribe("edgewatch/pi-01/cmd")  # may be granted as a filter, but nothing is delivered
    assert pi02.subscribe("edgewatch/pi-02/cmd") == 1
    operator = connect("operator")
    assert operator.publish("edgewatch/pi-01/cmd", '{"id": "secret"}') == 0
    assert operator.publish("edgewatch/pi-02/cmd", '{"id": "mine"}') == 0
    assert pi02.wait_message("edgewatch/pi-02/cmd") == b'{"id": "mine"}'
    assert [t for t, _ in pi02.messages] == ["edgewatch/pi-02/cmd"]


def test_dashboard_only_reads(connect: Any) -> None:
    dashboard = connect("dashboard")
    assert dashboard.subscribe("edgewatch/+/detections") == 1
    pi01 = connect("pi-01")
    assert dashboard.publish("edgewatch/pi-01/cmd") == NOT_AUTHORIZED
    assert dashboard.publish("edgewatch/pi-01/detections") == NOT_AUTHORIZED
    assert pi01.publish("edgewatch/pi-01/detections", '{"seq": 1}') == 0
    assert dashboard.wait_message("edgewatch/pi-01/detections") == b'{"seq": 1}'


def test_device_replies_only_under_its_own_reply_prefix(connect: Any) -> None:
    operator = connect("operator")
    assert operator.subscribe("edgewatch/#") == 1
    dashboard = connect("dashboard")
    assert dashboard.subscribe("edgewatch/+/cmd/result") == 1
    dashboard.subscribe("edgewatch/+/cmd/result/#")  # may be granted as a filter, nothing is delivered
    pi01 = connect("pi-01")

    assert pi01.publish("edgewatch/pi-02/cmd/result/req-1", '{"forged": true}') == NOT_AUTHORIZED
    assert pi01.publish("edgewatch/pi-01/cmdx/result/req-1") == NOT_AUTHORIZED
    assert pi01.publish("edgewatch/pi-01/cmd/result/req-1", '{"reply": 1}') == 0
    assert pi01.publish("edgewatch/pi-01/cmd/result/any/depth", '{"reply": 2}') == 0
    assert pi01.publish("edgewatch/pi-01/cmd/result", '{"result": 1}') == 0
    # In order from one publisher: the result is the last, so the replies are in by then.
    assert operator.wait_message("edgewatch/pi-01/cmd/result") == b'{"result": 1}'
    assert operator.received("edgewatch/pi-01/cmd/result/req-1", b'{"reply": 1}')
    assert operator.received("edgewatch/pi-01/cmd/result/any/depth", b'{"reply": 2}')
    assert not any(t.startswith("edgewatch/pi-02/") for t, _ in operator.messages)
    # Dashboards see every result on cmd/result; the replies are copies for the requester.
    assert dashboard.wait_message("edgewatch/pi-01/cmd/result") == b'{"result": 1}'
    # (Once per matching subscription: "cmd/result/#" matches "cmd/result" too.)
    assert {t for t, _ in dashboard.messages} == {"edgewatch/pi-01/cmd/result"}


# The agent's way of connecting: a persistent session, and a retained "offline" Last Will.
SESSION_EXPIRY_S = 300


@pytest.mark.parametrize(
    "victim_id, attacker_id",
    [
        ("edge-agent-pi-02", "edge-agent-pi-02"),  # the agent's default client id
        ("pi-02", "pi-02"),  # a device connecting with its device id (its CN) as client id
        ("edge-agent-pi-02", "pi-02"),  # the CN, the client id the broker gives the victim
    ],
)
def test_a_device_cannot_take_over_another_devices_session(
    connect: Any, victim_id: str, attacker_id: str
) -> None:
    token = uuid.uuid4().hex
    online, offline = f'{{"state": "online", "run": "{token}"}}', '{"state": "offline"}'
    victim = connect(
        "pi-02",
        victim_id,
        clean_start=False,
        session_expiry=SESSION_EXPIRY_S,
        will=("edgewatch/pi-02/status", offline),
    )
    assert victim.subscribe("edgewatch/pi-02/cmd") == 1
    retained = victim.mqtt.publish("edgewatch/pi-02/status", online, qos=1, retain=True)
    victim.wait_for(lambda: retained.mid in victim.acks, "PUBACK for the retained status")

    # Device pi-01, with its own valid certificate, asks for the victim's client id. A clean start
    # is the worst case: taking over a session that way would also fire the victim's Will.
    attacker = connect("pi-01", attacker_id, clean_start=True)
    assert attacker.sessions_present == [False]  # connected, as itself, with a session of its own
    # The broker has handled the takeover (if any) before its CONNACK: the retained status shows
    # whether the victim's Will fired.
    operator = connect("operator")
    assert operator.subscribe("edgewatch/pi-02/status") == 1
    assert operator.wait_message("edgewatch/pi-02/status") == online.encode()

    # The victim still holds its connection and its session: a command reaches it.
    command = f'{{"id": "{token}"}}'.encode()
    assert operator.publish("edgewatch/pi-02/cmd", command.decode()) == 0
    victim.wait_for(lambda: ("edgewatch/pi-02/cmd", command) in victim.messages, "the command")
    assert victim.disconnects == [] and victim.sessions_present == [False], "the victim was thrown off"
    assert not attacker.received("edgewatch/pi-02/cmd", command)

    # The attacker is still confined to its own topics, under whatever client id it asked for.
    assert attacker.publish("edgewatch/pi-02/status", offline) == NOT_AUTHORIZED
    assert attacker.publish("edgewatch/pi-01/events", '{"ok": true}') == NO_MATCHING_SUBSCRIBERS
    assert victim.disconnects == []
    # Leave no retained status for the other tests.
    cleared = victim.mqtt.publish("edgewatch/pi-02/status", b"", qos=1, retain=True)
    victim.wait_for(lambda: cleared.mid in victim.acks, "PUBACK for clearing the status")


def test_a_devices_session_is_its_certificates(connect: Any) -> None:
    """The broker keys the session on the certificate, not on the client id the device sends: the
    agent's persistent session (clean_start false) resumes whatever id it reconnects with."""
    first = connect("pi-01", "edge-agent-pi-01", clean_start=True, session_expiry=SESSION_EXPIRY_S)
    assert first.subscribe("edgewatch/pi-01/cmd") == 1
    first.mqtt.disconnect()  # a clean DISCONNECT: the session stays for SESSION_EXPIRY_S
    first.wait_for(lambda: first.disconnects != [], "the DISCONNECT")
    first.mqtt.loop_stop()

    operator = connect("operator")
    command = f'{{"id": "{uuid.uuid4().hex}"}}'
    assert operator.publish("edgewatch/pi-01/cmd", command) == 0  # queued in the session

    again = connect("pi-01", "some-other-id", clean_start=False, session_expiry=SESSION_EXPIRY_S)
    assert again.sessions_present == [True]
    again.wait_for(lambda: ("edgewatch/pi-01/cmd", command.encode()) in again.messages, "the queued command")


def test_one_certificate_is_one_connection(connect: Any) -> None:
    """The client id is the certificate's CN, so a second connection with the same certificate
    closes the first: operators and dashboards that run at the same time need a certificate each."""
    first = connect("operator")
    first.mqtt.reconnect_delay_set(min_delay=3600, max_delay=3600)  # no fight over the id
    second = connect("operator")
    first.wait_for(lambda: first.disconnects != [], "the first connection to be closed")
    # The second one works: its command is accepted (no device listens now).
    assert second.publish("edgewatch/pi-01/cmd", '{"id": "x"}') == NO_MATCHING_SUBSCRIBERS
    assert second.disconnects == []


def test_no_trusted_certificate_no_connection(broker: Broker) -> None:
    client, (connected, done) = _connect(broker, "rogue")
    try:
        client.connect("localhost", broker.port)
    except OSError:  # refused within the TLS handshake (TLS 1.2: ssl.SSLError)
        return
    try:
        client.loop_start()
        # TLS 1.3 checks the client certificate after the client's side of the handshake: the
        # broker's alert then ends the connection before any CONNACK.
        assert done.wait(10), "neither CONNACK nor disconnect"
        assert connected["rc"].is_failure, connected
    finally:
        client.loop_stop()
