from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.config import ConfigError, dump, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_spec() -> None:
    c = load_config(environ={})
    assert c.camera.source == "usb:0" and c.camera.mode == "live" and c.camera.fps == 15
    assert c.detector.backend == "auto" and c.store.keep_versions == 3
    assert (
        c.mqtt.port == 1883
        and c.mqtt.protocol == 5
        and c.mqtt.qos == 1
        and c.mqtt.topic_prefix == "edgewatch"
    )
    assert c.mqtt.buffer.max_messages == 100000 and c.commands.require_signature is True
    assert c.http.listen == "127.0.0.1:8080" and c.device.id
    assert c.store.trusted_keys == []
    t = c.store.timeouts
    assert (t.download_stall_s, t.download_s, t.verifying_s, t.loading_s, t.warming_s, t.activating_s) == (
        30,
        600,
        120,
        120,
        60,
        30,
    )


def test_file_then_environment_then_set(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "device: {id: pi-01, groups: [garden]}\nmqtt: {host: broker, port: 1884, tls: {ca: /x/ca.pem}}\n",
    )
    env = {"EDGE_AGENT__MQTT__PORT": "8883", "EDGE_AGENT__STORE__KEEP_VERSIONS": "5", "OTHER": "1"}
    c = load_config(p, ["mqtt.port=9000", "detector.labels=[person, car]", "http.listen=null"], environ=env)
    assert c.device.id == "pi-01" and c.device.groups == ["garden"]
    assert c.mqtt.host == "broker" and c.mqtt.port == 9000  # --set wins over the environment
    assert c.store.keep_versions == 5  # the environment wins over the file
    assert str(c.mqtt.tls.ca) == "/x/ca.pem"
    assert c.detector.labels == ["person", "car"] and c.http.listen is None


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("camera: {mode: sometimes}", [], "camera.mode: Input should be 'live' or 'every'"),
        ("mqtt: {port: 70000}", [], "mqtt.port: Input should be less than 65536"),
        ("mqtt: {hots: x}", [], "mqtt.hots: unknown key"),
        ("device: {id: 'a/b'}", [], "device.id: 'a/b' cannot be an MQTT topic level"),
        ("", ["store.keep_versions=0"], "store.keep_versions: Input should be greater than or equal to 1"),
        ("", ["nokey"], "--set 'nokey': expected section.key=value"),
        ("- a list", [], "must be a mapping of sections"),
        (
            "store: {timeouts: {download_stall_s: 0}}",
            [],
            "store.timeouts.download_stall_s: Input should be greater than 0",
        ),
        ("store: {timeouts: {stall: 5}}", [], "store.timeouts.stall: unknown key"),
        ("camera: [unclosed", [], "not valid YAML"),
    ],
)
def test_invalid_configuration_names_key_and_reason(
    tmp_path: Path, text: str, overrides: list, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), overrides, environ={})
    assert message in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_dump_round_trips(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "camera: {source: 'synthetic:3', mode: every}\n"), environ={})
    again = load_config(write(tmp_path, dump(c)), environ={})
    assert again == c


def test_check_config_command(tmp_path: Path) -> None:
    p = write(tmp_path, "camera: {source: 'file:/v.mp4'}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", "-c", str(p), "--set", "mqtt.qos=0"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    effective = yaml.safe_load(ok.stdout)
    assert effective["camera"]["source"] == "file:/v.mp4" and effective["mqtt"]["qos"] == 0
    bad = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", "-c", str(p), "--set", "mqtt.qos=3"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "mqtt.qos" in bad.stderr and "Traceback" not in bad.stderr
