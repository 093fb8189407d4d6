"""Signed commands (SPEC §5): canonical JSON, signatures, every admission rule, replay memory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from pydantic import ValidationError

from edge_agent.bundle.signing import generate_keypair, load_private_key, load_public_key
from edge_agent.commands import (
    ARGS_BY_TYPE,
    CommandChecker,
    CommandRejected,
    CommandResult,
    DeployArgs,
    Envelope,
    NoArgs,
    SeenIds,
    SetArgs,
    canonical_json,
    new_command,
    parse_rfc3339,
    sign_envelope,
    verify_envelope,
)
from edge_agent.config import CommandsConfig, ConfigError, DeviceConfig
from edge_agent.messages import utc_now_iso

NOW = parse_rfc3339("2026-11-22T10:00:00.000Z")


def keypair(directory: Path, name: str) -> Path:
    """Writes NAME.key and NAME.pub; returns the directory's NAME (without suffix)."""
    private, public = generate_keypair()
    (directory / f"{name}.key").write_bytes(private)
    (directory / f"{name}.pub").write_bytes(public)
    return directory / name


@pytest.fixture
def keys(tmp_path: Path) -> Dict[str, Path]:
    return {"operator": keypair(tmp_path, "operator"), "stranger": keypair(tmp_path, "stranger")}


class Device:
    """A checker for device pi-01 (groups lab, north) with a fixed clock."""

    def __init__(self, tmp_path: Path, keys: List[Path], require_signature: bool = True) -> None:
        self.seen_path = tmp_path / "seen.db"
        self.config = CommandsConfig(
            require_signature=require_signature, trusted_keys=[k.with_suffix(".pub") for k in keys]
        )
        self.device = DeviceConfig(id="pi-01", groups=["lab", "north"])
        self.now = NOW
        self.seen = SeenIds(self.seen_path)
        self.checker = CommandChecker(self.config, self.device, self.seen, clock=lambda: self.now)

    def reopen(self) -> None:
        """A restart: a fresh checker over the same replay memory file."""
        self.seen.close()
        self.seen = SeenIds(self.seen_path)
        self.checker = CommandChecker(self.config, self.device, self.seen, clock=lambda: self.now)


@pytest.fixture
def device(tmp_path: Path, keys: Dict[str, Path]) -> Device:
    return Device(tmp_path, [keys["operator"]])


def envelope(command_type: str = "status", target: str = "pi-01", **fields: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "id": fields.pop("id", "c1b2"),
        "type": command_type,
        "ts": utc_now_iso(NOW),
        "target": target,
        "args": fields.pop("args", {}),
    }
    doc.update(fields)
    return doc


def signed(doc: Dict[str, Any], key: Path) -> bytes:
    return json.dumps(sign_envelope(doc, load_private_key(key.with_suffix(".key")))).encode()


def rejection(device: Device, payload: bytes) -> CommandRejected:
    with pytest.raises(CommandRejected) as caught:
        device.checker.check(payload)
    return caught.value


# Canonical JSON and signatures


def test_canonical_json_sorts_nested_keys_without_whitespace_or_escapes() -> None:
    doc = {"b": 1, "a": {"z": [1, 2.5, {"y": True, "x": None}], "é": "température ✓"}}
    assert canonical_json(doc) == '{"a":{"z":[1,2.5,{"x":null,"y":true}],"é":"température ✓"},"b":1}'.encode()
    # Insertion order does not matter, only the content.
    assert canonical_json(dict(reversed(list(doc.items())))) == canonical_json(doc)


def test_canonical_json_refuses_what_json_cannot_say() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_sign_verify_round_trip_and_tampering(keys: Dict[str, Path]) -> None:
    private = load_private_key(keys["operator"].with_suffix(".key"))
    public = load_public_key(keys["operator"].with_suffix(".pub"))
    other = load_public_key(keys["stranger"].with_suffix(".pub"))
    doc = sign_envelope(envelope("set", args={"labels": ["chien", "chat"], "score_threshold": 0.5}), private)
    assert verify_envelope(doc, [public])
    assert verify_envelope(doc, [other, public])  # any one trusted key is enough
    assert not verify_envelope(doc, [other])
    assert not verify_envelope(doc, [])
    # Key order in transit does not matter: the canonical form is what was signed.
    assert verify_envelope(json.loads(json.dumps(doc, sort_keys=True, indent=2)), [public])
    for field, value in [("target", "lab"), ("ts", utc_now_iso(NOW + 1)), ("args", {"labels": ["chien"]})]:
        assert not verify_envelope({**doc, field: value}, [public]), field
    assert not verify_envelope({**doc, "extra": 1}, [public])
    assert not verify_envelope({**doc, "sig": "not base64!"}, [public])
    assert not verify_envelope({**doc, "sig": "ünïcode"}, [public])
    assert not verify_envelope({k: v for k, v in doc.items() if k != "sig"}, [public])
    # Re-signing replaces an old signature rather than signing it.
    assert verify_envelope(sign_envelope({**doc, "target": "lab"}, private), [public])


def test_new_command() -> None:
    doc = new_command("rollback", "pi-01", {"version": "1.0.0"}, expires_in_s=60)
    assert set(doc) == {"id", "type", "ts", "target", "args", "expires"}
    assert len(doc["id"]) == 32 and int(doc["id"], 16) >= 0
    assert 59.9 < parse_rfc3339(doc["expires"]) - parse_rfc3339(doc["ts"]) < 60.1
    assert new_command("status", "pi-01", {})["id"] != doc["id"]
    assert "expires" not in new_command("status", "pi-01", {})
    Envelope.model_validate(doc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", NOW),
        ("2026-11-22T10:00:00.5Z", NOW + 0.5),
        ("2026-11-22T10:00:00.123456789Z", NOW + 0.123456789),
        ("2026-11-22T11:30:00+01:30", NOW),
        ("2026-11-22t08:00:00-02:00", NOW),
    ],
)
def test_rfc3339(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["2026-11-22T10:00:00", "2026-11-22", "2026-13-01T00:00:00Z", "yesterday"])
def test_rfc3339_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


# Admission


def test_accepts_a_signed_command(device: Device, keys: Dict[str, Path]) -> None:
    command = device.checker.check(signed(envelope("status"), keys["operator"]))
    assert (command.id, command.type, command.envelope.target) == ("c1b2", "status", "pi-01")
    assert isinstance(command.args, NoArgs)
    doc = envelope("set", id="c2", target="north", args={"score_threshold": 0.25, "labels": ["car"]})
    command = device.checker.check(signed(doc, keys["operator"]))
    assert isinstance(command.args, SetArgs) and command.args.score_threshold == 0.25
    assert command.args.labels == ["car"] and command.args.iou_threshold is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b'{"id": "x", "id": "y"}', "duplicate key 'id'"),
        (b'{"id": "x", "id": "x"}', "duplicate key 'id'"),
        (b'{"n": ' + b"[" * 5000 + b"]" * 5000 + b', "id": "x", "id": "x"}', "duplicate key 'id'"),
        (b'{"n": ' + b"[" * 5000 + b"]" * 5000 + b"}", "no usable id"),
        (b'{"id": "x", "n": ' + b"[" * 5000 + b"]" * 4999 + b"}", "brackets do not balance"),
        (b'{"id": "x", "n": ' + b"[" * 5000 + b"}" * 5000 + b"]}", "not UTF-8 JSON"),
        (b"[" * 5000 + b"]" * 5000, "not a JSON object"),
        (b'["id"]', "not a JSON object"),
        (b'{"type": "status"}', "no usable id"),
        (b'{"id": 7}', "no usable id"),
        (b'{"id": ""}', "no usable id"),
        (json.dumps({"id": "x" * 129}).encode(), "no usable id"),
        (b" " * 300_000, "is over"),
    ],
)
def test_payloads_too_broken_to_answer(device: Device, payload: bytes, reason: str) -> None:
    rejected = rejection(device, payload)
    assert rejected.command_id is None
    assert reason in rejected.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": "x", "n": NaN}', "n: NaN is not JSON"),
        (b'{"id": "x", "args": {"x": 1, "x": 2}}', "args: duplicate key 'x'"),
        (b'{"id": "x", "type": "status", "type": "set"}', "envelope: duplicate key 'type'"),
        (b'{"id": "x", "ts": 1e999}', "ts: 1e999 is not a finite number"),
        (
            b'{"id": "x", "args": {"n": [1, ' + b"9" * 65 + b"]}}",
            "args.n[1]: a number of 65 characters (at most 64)",
        ),
        (b'{"id": "x", "args": ' + b"[" * 33 + b"]" * 33 + b"}", "nested deeper than 32 levels"),
        (b'{"args": ' + b"[" * 5000 + b"]" * 5000 + b', "id": "x"}', "nested deeper than 32 levels"),
    ],
)
def test_json_a_command_may_not_hold_is_rejected_with_its_id(
    device: Device, payload: bytes, reason: str
) -> None:
    """A payload with a readable id gets its ``rejected`` (SPEC §5), whatever else it holds."""
    rejected = rejection(device, payload)
    assert (rejected.command_id, rejected.reason) == ("x", reason)
    assert not rejected.signature_verified


def test_a_signed_command_with_a_duplicate_key_is_not_verified(device: Device, keys: Dict[str, Path]) -> None:
    """The last of two values may be what was signed, but a duplicate key is refused before the
    signature is looked at: no Response Topic for it."""
    good = signed(envelope(id="d1", args={"x": 2}), keys["operator"])
    doubled = good.replace(b'"args": {"x": 2}', b'"args": {"x": 1, "x": 2}')
    assert doubled != good
    rejected = rejection(device, doubled)
    assert (rejected.command_id, rejected.reason, rejected.signature_verified) == (
        "d1",
        "args: duplicate key 'x'",
        False,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("ts"), "envelope: ts: missing"),
        (lambda d: d.update(ts="22/11/2026"), "envelope: ts: '22/11/2026' is not an RFC 3339 date-time"),
        (lambda d: d.update(ts=1700000000), "envelope: ts: Input should be a valid string"),
        (lambda d: d.update(extra=True), "envelope: extra: unknown envelope key"),
        (lambda d: d.update(args=[1]), "envelope: args: Input should be a valid dictionary"),
        (lambda d: d.update(id="two words"), "envelope: id: must be printable"),
        (lambda d: d.pop("target"), "envelope: target: missing"),
    ],
)
def test_envelope_shape(device: Device, keys: Dict[str, Path], change: Any, reason: str) -> None:
    doc = envelope()
    change(doc)
    rejected = rejection(device, signed(doc, keys["operator"]))
    assert rejected.command_id == doc["id"]
    assert rejected.reason.startswith(reason)


def test_signature_rules(device: Device, keys: Dict[str, Path]) -> None:
    unsigned = json.dumps(envelope(id="u1")).encode()
    assert rejection(device, unsigned).reason == "unsigned, and this device requires signed commands"
    foreign = signed(envelope(id="u2"), keys["stranger"])
    assert rejection(device, foreign).reason == "signature does not verify against any trusted key"
    tampered = json.loads(signed(envelope(id="u3"), keys["operator"]))
    tampered["target"] = "lab"
    assert rejection(device, json.dumps(tampered).encode()).reason == (
        "signature does not verify against any trusted key"
    )


def test_required_signature_without_trusted_keys_rejects_everything(
    tmp_path: Path, keys: Dict[str, Path]
) -> None:
    lonely = Device(tmp_path, [])
    reason = rejection(lonely, signed(envelope(), keys["operator"])).reason
    assert "commands.trusted_keys is empty" in reason and "require_signature" in reason


def test_signature_not_required(tmp_path: Path, keys: Dict[str, Path]) -> None:
    relaxed = Device(tmp_path, [keys["operator"]], require_signature=False)
    assert relaxed.checker.check(json.dumps(envelope(id="a")).encode()).id == "a"
    assert relaxed.checker.check(signed(envelope(id="b"), keys["operator"])).id == "b"
    # A signature that is there but wrong is still refused.
    reason = rejection(relaxed, signed(envelope(id="c"), keys["stranger"])).reason
    assert reason == "signature does not verify against any trusted key"


def test_the_checker_says_whether_the_signature_verified(tmp_path: Path, keys: Dict[str, Path]) -> None:
    """Only then may a command's Response Topic be honoured (SPEC §4), also for its rejection."""
    strict = Device(tmp_path / "strict", [keys["operator"]])
    assert strict.checker.check(signed(envelope(id="v1"), keys["operator"])).signature_verified
    assert rejection(strict, signed(envelope(id="v2", target="pi-02"), keys["operator"])).signature_verified
    assert not rejection(strict, signed(envelope(id="v3"), keys["stranger"])).signature_verified
    assert not rejection(strict, json.dumps(envelope(id="v4")).encode()).signature_verified
    relaxed = Device(tmp_path / "relaxed", [keys["operator"]], require_signature=False)
    assert not relaxed.checker.check(json.dumps(envelope(id="v5")).encode()).signature_verified
    assert relaxed.checker.check(signed(envelope(id="v6"), keys["operator"])).signature_verified
    keyless = Device(tmp_path / "keyless", [], require_signature=False)
    assert not keyless.checker.check(signed(envelope(id="v7"), keys["operator"])).signature_verified


def test_unreadable_trusted_key_names_its_config_entry(tmp_path: Path, keys: Dict[str, Path]) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    config = CommandsConfig(trusted_keys=[keys["operator"].with_suffix(".pub"), tmp_path / "junk.pub"])
    with pytest.raises(ConfigError, match=r"commands\.trusted_keys\[1\]: .*junk\.pub"):
        CommandChecker(config, DeviceConfig(id="pi-01"), SeenIds(tmp_path / "s.db"))


@pytest.mark.parametrize("offset", [-912.4, 912.4])
def test_clock_skew(device: Device, keys: Dict[str, Path], offset: float) -> None:
    ts = utc_now_iso(NOW + offset)
    reason = rejection(device, signed(envelope(ts=ts), keys["operator"])).reason
    assert reason == f"ts {ts} is 912 s from the device clock (max 300)"
    # Just inside the limit passes.
    device.checker.check(signed(envelope(id="edge", ts=utc_now_iso(NOW - 299)), keys["operator"]))


def test_expiry(device: Device, keys: Dict[str, Path]) -> None:
    past = utc_now_iso(NOW - 5)
    reason = rejection(device, signed(envelope(expires=past), keys["operator"])).reason
    assert reason == f"expired at {past} (5 s ago)"
    future = envelope(id="later", expires=utc_now_iso(NOW + 5))
    assert device.checker.check(signed(future, keys["operator"])).envelope.expires == future["expires"]


def test_target(device: Device, keys: Dict[str, Path]) -> None:
    reason = rejection(device, signed(envelope(target="pi-02"), keys["operator"])).reason
    assert reason == "target 'pi-02' is neither this device nor one of its groups"
    assert device.checker.check(signed(envelope(id="g", target="lab"), keys["operator"])).id == "g"


def test_replay_is_refused_across_restarts(device: Device, keys: Dict[str, Path]) -> None:
    payload = signed(envelope(id="once"), keys["operator"])
    device.checker.check(payload)
    assert rejection(device, payload).reason == "id once was already used"
    device.reopen()
    assert rejection(device, payload).reason == "id once was already used"


def test_only_commands_that_passed_the_signature_are_remembered(
    device: Device, keys: Dict[str, Path]
) -> None:
    rejection(device, json.dumps(envelope(id="squat")).encode())  # unsigned
    rejection(device, signed(envelope(id="squat2"), keys["stranger"]))
    assert "squat" not in device.seen and "squat2" not in device.seen
    assert device.checker.check(signed(envelope(id="squat"), keys["operator"])).id == "squat"


def test_unknown_type_and_bad_args_still_use_up_the_id(device: Device, keys: Dict[str, Path]) -> None:
    reason = rejection(device, signed(envelope("reboot", id="r"), keys["operator"])).reason
    assert reason.startswith("unknown type 'reboot' (known: deploy, rollback, set")
    assert "r" in device.seen


@pytest.mark.parametrize(
    ("command_type", "args", "reason"),
    [
        ("set", {"score_threshold": 1.5}, "args.score_threshold: Input should be less than or equal to 1"),
        ("set", {"score_threshold": "0.5"}, "args.score_threshold: Input should be a valid number"),
        ("set", {"max_rate_hz": 0}, "args.max_rate_hz: Input should be greater than 0"),
        (
            "set",
            {"publish_mode": "some"},
            "args.publish_mode: Input should be 'all', 'detections' or 'changes'",
        ),
        ("set", {"labels": ["ok", " "]}, "args.labels: labels cannot be empty strings"),
        ("set", {}, "args: give at least one of: score_threshold, iou_threshold, labels"),
        ("set", {"volume": 11}, "args.volume: unknown argument"),
        ("status", {"verbose": True}, "args.verbose: unknown argument"),
        ("rollback", {"version": "1.x"}, "args.version: '1.x' is not a semantic version"),
        ("deploy", {}, "args.manifest: Field required"),
        (
            "deploy",
            {"manifest": "ftp://h/m.json"},
            "args.manifest: 'ftp://h/m.json' has scheme 'ftp'; use one of",
        ),
        (
            "deploy",
            {"manifest": "models/m.json"},
            "has no scheme; use one of: s3://, https://, http://, file://",
        ),
        ("deploy", {"manifest": "s3://bucket"}, "args.manifest: 's3://bucket' has no key after the bucket"),
        ("deploy", {"manifest": "file://host/m.json"}, "a file:// URI names an absolute local path"),
        (
            "deploy",
            {"manifest": "https://h/m.json", "sha256": "AB" * 32},
            "args.sha256: must be 64 lowercase hex",
        ),
        (
            "deploy",
            {"manifest": "https://h/m.json", "allow_downgrade": "yes"},
            "args.allow_downgrade: Input should",
        ),
        ("deploy", {"manifest": "https://h/m", "files": {"../x": "https://h/x"}}, "is not a plain file name"),
        ("deploy", {"manifest": "https://h/m", "files": {"x": "s3://b/x"}}, "'s3://b/x' has scheme 's3'"),
    ],
)
def test_argument_errors_name_the_field(
    device: Device, keys: Dict[str, Path], command_type: str, args: Dict[str, Any], reason: str
) -> None:
    rejected = rejection(device, signed(envelope(command_type, args=args), keys["operator"]))
    assert rejected.command_id == "c1b2"
    assert reason in rejected.reason


def test_valid_arguments_of_every_type() -> None:
    sha = "ab" * 32
    deploy = DeployArgs.model_validate(
        {
            "manifest": "s3://bucket/models/shapes/1.4.0/manifest.json",
            "sha256": sha,
            "backend": "coral",
            "allow_downgrade": True,
            "files": {"model.tflite": "https://bucket.s3.amazonaws.com/model.tflite?X-Amz-Signature=1"},
        }
    )
    assert deploy.allow_downgrade and deploy.files is not None
    for uri in ("https://h/m.json", "http://127.0.0.1:9000/b/m.json", "file:///srv/bundles/m.json"):
        assert DeployArgs(manifest=uri).manifest == uri
    assert set(ARGS_BY_TYPE) == {"deploy", "rollback", "set", "status", "snapshot", "pause", "resume"}
    assert SetArgs(labels=[]).labels == []  # a given empty list is a setting, not "nothing given"


# The replay memory


def test_seen_ids_are_committed_before_add_returns(tmp_path: Path) -> None:
    seen = SeenIds(tmp_path / "store" / "seen.db")
    seen.add("abc")
    # Another connection (as after a crash) sees it without any close or flush.
    other = sqlite3.connect(str(tmp_path / "store" / "seen.db"))
    assert other.execute("SELECT id FROM seen").fetchall() == [("abc",)]
    other.close()
    assert "abc" in seen and "abd" not in seen and 5 not in seen
    seen.close()


def test_seen_ids_are_bounded_forgetting_the_oldest(tmp_path: Path) -> None:
    with SeenIds(tmp_path / "seen.db", capacity=3) as seen:
        for i in range(5):
            seen.add(f"id{i}")
        seen.add("id4")  # again: no change
        assert len(seen) == 3
        assert [f"id{i}" in seen for i in range(5)] == [False, False, True, True, True]
    with SeenIds(tmp_path / "seen.db", capacity=3) as reopened:
        assert "id4" in reopened and "id1" not in reopened
        reopened.add("id5")
        assert len(reopened) == 3 and "id2" not in reopened


def test_a_damaged_memory_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    path.write_bytes(b"this is not a database" * 100)
    with SeenIds(path) as seen:
        seen.add("fresh")
        assert "fresh" in seen
    assert len(list(tmp_path.glob("seen.db.corrupt-*"))) == 1


# Results


def test_command_result_shape() -> None:
    result = CommandResult(id="c1", device="pi-01", status="in_progress", stage="downloading", progress=0.5)
    doc = result.to_json_dict()
    assert doc == {
        "id": "c1",
        "device": "pi-01",
        "ts": doc["ts"],
        "status": "in_progress",
        "stage": "downloading",
        "progress": 0.5,
    }
    parse_rfc3339(doc["ts"])
    assert not result.is_final
    rejected = CommandResult.rejected("c1", "pi-01", "id c1 was already used")
    assert rejected.is_final and rejected.to_json_dict()["detail"] == "id c1 was already used"
    reply: Optional[Dict[str, Any]] = {"state": "online"}
    assert CommandResult(id="c", device="d", status="succeeded", data=reply).to_json_dict()["data"] == reply
    with pytest.raises(ValidationError):
        CommandResult.model_validate({"id": "c", "device": "d", "status": "done"})
