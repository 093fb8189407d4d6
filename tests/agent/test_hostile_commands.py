"""Hostile command payloads through the real command path (SPEC §5; issue 8, point 3): every
payload with a readable id gets exactly one ``rejected`` unless accepted, the rest are dropped
with a rate-limited log line, every result encodes, and nothing leaves a traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from edge_agent.commands.checker import MAX_NESTING, MAX_PAYLOAD_BYTES, _nesting_problem
from edge_agent.commands.envelope import MAX_ID_LENGTH
from edge_agent.messages import utc_now_iso
from edge_agent.service.commands import DropLog
from tests.command_rig import (
    DEVICE,
    ID_MAX_CHARS,
    PAYLOAD_MAX_BYTES,
    TOPICS,
    CommandRig,
    expected_id,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CommandRig]:
    with CommandRig(tmp_path / "device") as made:
        yield made


def outcome(rig: CommandRig, payload: bytes, caplog: pytest.LogCaptureFixture) -> List[Dict[str, Any]]:
    """Deliver ``payload`` as the broker would; the results it got, checked to be strict UTF-8
    JSON on P/D/cmd/result only, with no traceback or error logged on the way."""
    caplog.clear()
    rig.deliver(payload)
    sent = rig.take_sent()
    assert {topic for topic, _ in sent} <= {TOPICS.cmd_result}
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    return [json.loads(body.decode("utf-8", errors="strict")) for _, body in sent]


def envelope(**fields: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "id": "hostile-1",
        "type": "status",
        "ts": utc_now_iso(),
        "target": DEVICE,
        "args": {},
    }
    doc.update(fields)
    return doc


def raw(doc: Dict[str, Any], **literals: str) -> bytes:
    """``doc`` as JSON with each ``literals`` key's value written as the given JSON text."""
    text = json.dumps({**doc, **{k: f"@@{k}@@" for k in literals}})
    for key, literal in literals.items():
        text = text.replace(f'"@@{key}@@"', literal)
    return text.encode()


DEEP = "[" * 990 + "]" * 990
# As deep as 256 KiB allows: far past what json.loads (or any recursion) can read.
DEEPEST = "[" * 130_000 + "]" * 130_000

# (what, payload): none of these carries a readable id, so each is dropped without an answer.
DROPPED: List[Tuple[str, bytes]] = [
    ("lone surrogate id", raw(envelope(), id='"\\ud800"')),
    ("lone low surrogate id", raw(envelope(), id='"ok\\udfff"')),
    ("990 deep at the top", DEEP.encode()),
    ("990 deep unbalanced", b'{"id": "x", "args": ' + b"[" * 990),
    ("990 deep, then not JSON", raw(envelope(), args=f'{{"x": {DEEP}}}') + b" x"),
    ("990 deep, a bad token inside", raw(envelope(), args='{"x": ' + "[" * 990 + "01" + "]" * 990 + "}")),
    ("990 deep, mismatched brackets", raw(envelope(), args='{"x": ' + "[" * 990 + "}" * 990 + "}")),
    ("990 deep with a lone surrogate id", raw(envelope(), id='"\\ud800"', args=f'{{"x": {DEEP}}}')),
    ("990 deep with the id twice", b'{"id": "a", "args": ' + DEEP.encode() + b', "id": "a"}'),
    ("990 deep with an id that is an object", raw(envelope(), id='{"id": "x"}', args=DEEP)),
    ("990 deep with the id inside args only", b'{"args": {"id": "a", "x": ' + DEEP.encode() + b"}}"),
    ("the id twice", b'{"id": "a", "id": "b", "type": "status"}'),
    ("the id twice, the same", b'{"id": "a", "id": "a", "type": "status"}'),
    ("an id that is NaN", raw(envelope(), id="NaN")),
    ("an id that is 1e999", raw(envelope(), id="1e999")),
    ("a JSON array", b'["id", "x"]'),
    ("a JSON string", b'"id"'),
    ("JSON null", b"null"),
    ("a number", b"7"),
    ("NaN at the top", b"NaN"),
    ("invalid UTF-8", b'{"id": "caf\xe9", "type": "status"}'),
    ("a UTF-8 surrogate in raw bytes", b'{"id": "\xed\xa0\x80"}'),
    ("a byte order mark", b"\xef\xbb\xbf" + json.dumps(envelope()).encode()),
    ("empty", b""),
    ("truncated", json.dumps(envelope()).encode()[:30]),
    ("an id that is a number", raw(envelope(), id="17")),
    ("an empty id", raw(envelope(), id='""')),
    ("an id of 129 characters", raw(envelope(), id=json.dumps("x" * 129))),
    ("no id", b'{"type": "status"}'),
    ("over 256 KiB", b" " * (256 * 1024 + 1)),
    ("over 256 KiB with an id", raw(envelope(), args=json.dumps({"x": "y" * 256 * 1024}))),
]


def test_the_oracle_restates_the_agents_limits() -> None:
    """tests/command_rig.py reads SPEC §5 without the checker, but with the agent's two limits."""
    assert (ID_MAX_CHARS, PAYLOAD_MAX_BYTES) == (MAX_ID_LENGTH, MAX_PAYLOAD_BYTES)


@pytest.mark.parametrize(("what", "payload"), DROPPED, ids=[w for w, _ in DROPPED])
def test_payloads_without_a_readable_id_are_dropped(
    rig: CommandRig, caplog: pytest.LogCaptureFixture, what: str, payload: bytes
) -> None:
    assert expected_id(payload) is None  # the harness's reading of SPEC §5 agrees
    assert outcome(rig, payload, caplog) == []
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert "\n" not in line


# (what, payload, words of the reason): each carries a readable id and gets one rejected.
REJECTED: List[Tuple[str, bytes, str]] = [
    ("lone surrogate in type", raw(envelope(), type='"\\ud800"'), "not valid Unicode"),
    ("lone surrogate in target", raw(envelope(), target='"pi-\\udc00"'), "not valid Unicode"),
    ("lone surrogate as an args key", raw(envelope(type="set"), args='{"\\ud800": 1}'), "not valid Unicode"),
    (
        "lone surrogate in labels",
        raw(envelope(type="set"), args='{"labels": ["\\ud800"]}'),
        "not valid Unicode",
    ),
    ("lone surrogate as an envelope key", raw(envelope(), extra='"x", "\\udead": 1'), "not valid Unicode"),
    ("lone surrogate in sig", raw(envelope(), sig='"\\ud800"'), "not valid Unicode"),
    ("a surrogate pair is fine", raw(envelope(), type='"\\ud83d\\ude00"'), "unsigned"),
    ("32 deep in args", raw(envelope(), args='{"a":' * 31 + "1" + "}" * 31), "unsigned"),
    # JSON a command may not hold, around an id that is perfectly readable: rejected, not dropped.
    ("33 deep in args", raw(envelope(), args='{"a":' * 32 + "1" + "}" * 32), "nested deeper than 32 levels"),
    ("990 deep in args", raw(envelope(), args=f'{{"x": {DEEP}}}'), "nested deeper than 32 levels"),
    (
        "990 deep before the id",
        b'{"args": ' + DEEP.encode() + b', "id": "hostile-1"}',
        "nested deeper than 32",
    ),
    (
        "an escaped id, 990 deep",
        b'{"\\u0069d": "hostile-1", "args": ' + DEEP.encode() + b"}",
        "nested deeper",
    ),
    (
        "256 KiB of nesting in args",
        raw(envelope(), args=f'{{"x": {DEEPEST}}}'),
        "nested deeper than 32 levels",
    ),
    (
        "990 deep objects in args",
        raw(envelope(), args='{"a":' * 990 + "1" + "}" * 990),
        "nested deeper than 32",
    ),
    (
        "a 5000-digit integer",
        raw(envelope(), args='{"max_rate_hz": ' + "9" * 5000 + "}"),
        "args.max_rate_hz: a number of 5000 characters (at most 64)",
    ),
    (
        "a 65-digit integer",
        raw(envelope(), args='{"max_rate_hz": ' + "9" * 65 + "}"),
        "args.max_rate_hz: a number of 65 characters (at most 64)",
    ),
    (
        "a 66-character fraction",
        raw(envelope(), ts="0." + "1" * 64),
        "ts: a number of 66 characters (at most 64)",
    ),
    (
        "1e999",
        raw(envelope(type="set"), args='{"max_rate_hz": 1e999}'),
        "args.max_rate_hz: 1e999 is not a finite",
    ),
    ("1e999 in the envelope", raw(envelope(), ts="1e999"), "ts: 1e999 is not a finite number"),
    (
        "-1e999 in a list",
        raw(envelope(type="set"), args='{"labels": ["a", -1e999]}'),
        "args.labels[1]: -1e999",
    ),
    (
        "NaN",
        raw(envelope(type="set"), args='{"score_threshold": NaN}'),
        "args.score_threshold: NaN is not JSON",
    ),
    ("-Infinity", raw(envelope(), ts="-Infinity"), "ts: -Infinity is not JSON"),
    (
        "Infinity under an odd key",
        raw(envelope(), args='{"a b": Infinity}'),
        "args['a b']: Infinity is not JSON",
    ),
    (
        "duplicate keys inside args",
        raw(envelope(type="set"), args='{"labels": [], "labels": ["x"]}'),
        "args: duplicate key 'labels'",
    ),
    ("a duplicate key deeper", raw(envelope(), args='{"f": {"x": 1, "x": 2}}'), "args.f: duplicate key 'x'"),
    (
        "a duplicate key under a lone surrogate",
        raw(envelope(), args='{"\\ud800": {"x": 1, "x": 2}}'),
        "args['\\ud800']: duplicate key 'x'",
    ),
    (
        "a duplicate key at the top",
        b'{"id": "hostile-1", "type": "status", "type": "set"}',
        "duplicate key 'type'",
    ),
    ("a control character in the id", raw(envelope(), id='"a\\nb"'), "id: must be printable"),
    ("a NUL in the id", raw(envelope(), id='"a\\u0000b"'), "id: must be printable"),
    ("an id of 128 characters", raw(envelope(), id=json.dumps("x" * 128)), "unsigned"),
    ("a long unknown type", json.dumps(envelope(type="t" * 20000)).encode(), "unsigned"),
    (
        "an unknown key of 20000 characters",
        json.dumps({**envelope(), "k" * 20000: 1}).encode(),
        "envelope: kkk",
    ),
    ("ts as a huge number", raw(envelope(), ts="1" * 60), "ts: Input should be a valid string"),
    ("args as a list", raw(envelope(), args="[1, 2]"), "args: Input should be a valid dictionary"),
    ("fullwidth digits in ts", json.dumps(envelope(ts="２０２６-11-22T10:00:00Z")).encode(), "RFC 3339"),
    ("a year-zero ts", json.dumps(envelope(ts="0000-01-01T00:00:00+23:59")).encode(), "not a valid date"),
    ("an offset of 99 hours", json.dumps(envelope(ts="2026-11-22T10:00:00+99:00")).encode(), "envelope: ts"),
]


@pytest.mark.parametrize(("what", "payload", "reason"), REJECTED, ids=[w for w, _, _ in REJECTED])
def test_payloads_with_a_readable_id_get_exactly_one_rejected(
    rig: CommandRig, caplog: pytest.LogCaptureFixture, what: str, payload: bytes, reason: str
) -> None:
    command_id = expected_id(payload)
    assert command_id is not None
    (result,) = outcome(rig, payload, caplog)
    assert (result["id"], result["device"], result["status"]) == (command_id, DEVICE, "rejected")
    assert reason in result["detail"], result["detail"]
    assert len(result["detail"]) <= 500  # a reason quotes what was sent, but not all of it
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected command")]
    assert "\n" not in line and "\x00" not in line  # a sender's text cannot forge a log line


def test_signed_commands_with_hostile_arguments(rig: CommandRig, caplog: pytest.LogCaptureFixture) -> None:
    """What a holder of a trusted key sends still cannot break the agent: arguments the checker
    refuses are one rejected, and big but finite numbers are just numbers."""
    (result,) = outcome(
        rig, rig.command("set", args={"max_rate_hz": 1e308, "labels": ["été", "a\u2028b"]}), caplog
    )
    assert result["status"] == "succeeded" and result["data"]["max_rate_hz"] == 1e308
    (result,) = outcome(rig, rig.command("set", args={"score_threshold": 10**60}), caplog)
    assert result["status"] == "rejected" and "less than or equal to 1" in result["detail"]
    (result,) = outcome(rig, rig.command("deploy", args={"manifest": "https://[::1/m"}), caplog)
    assert result["status"] == "rejected" and "args.manifest" in result["detail"]
    (result,) = outcome(rig, rig.command("rollback", args={"version": "1.0.0" * 1000}), caplog)
    assert result["status"] == "rejected" and len(result["detail"]) <= 500


def test_dropped_payloads_are_logged_at_most_once_a_minute(
    rig: CommandRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for i in range(200):
        rig.deliver(b"\xff" * i)
    assert rig.take_sent() == []
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(lines) == 1 and lines[0].startswith(f"dropped a command on {TOPICS.cmd}: not UTF-8 JSON")
    rig.handler.stop()  # the count of the rest is not lost at the end
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(lines) == 2 and lines[1].startswith("dropped 199 commands too broken to answer; the latest on")


def test_drop_log_summarises_once_per_interval() -> None:
    now = [0.0]
    drops = DropLog(interval_s=60, clock=lambda: now[0])
    logged: List[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("edge_agent.service.commands")
    logger.addHandler(handler)
    try:
        for step in range(300):  # one payload a second for five minutes
            now[0] = float(step)
            drops.note("ew/pi/cmd", f"reason {step}\nforged line")
        drops.flush()
    finally:
        logger.removeHandler(handler)
    assert drops.dropped == 300
    assert len(logged) == 6  # the first, one a minute after, and the rest at the end
    assert logged[0] == "dropped a command on ew/pi/cmd: 'reason 0\\nforged line'"
    assert (
        logged[1]
        == "dropped 60 commands too broken to answer; the latest on ew/pi/cmd: 'reason 60\\nforged line'"
    )
    assert logged[-1].startswith("dropped 59 commands")
    assert sum(int(line.split()[1]) if line.split()[1].isdigit() else 1 for line in logged) == 300


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"id": "x"}', None),
        (b"[" * 33 + b"]" * 33, f"nested deeper than {MAX_NESTING} levels"),
        (b"[" * 32 + b"]" * 32, None),
        (b'{"a": "' + b"[" * 100 + b'"}', None),  # brackets in strings do not count
        (b'{"a": "\\"' + b"[" * 100 + b'"}', None),  # nor after an escaped quote
        (b'{"a": "\\\\"' + b"[" * 100, "its brackets do not balance"),  # an escaped backslash ends it
        (b"]" * 40 + b"[" * 40, "its brackets do not balance"),
        (b"[" * 100_000, "its brackets do not balance"),
    ],
)
def test_nesting_is_measured_before_parsing(payload: bytes, problem: Optional[str]) -> None:
    assert _nesting_problem(payload, MAX_NESTING) == problem


@pytest.mark.slow
def test_generated_payloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Quick form (EDGEWATCH_FUZZ_EXAMPLES, default 300; the same payloads every run) of the
    hypothesis fuzz that `make reliability` runs with 10,000 random ones."""
    pytest.importorskip("hypothesis")  # in the dev extra; not in a device-only environment
    from tests.fuzz_commands import fuzz_examples, run_fuzz

    caplog.set_level(logging.WARNING)
    examples = fuzz_examples()
    counts = run_fuzz(examples, tmp_path / "fuzz", strict=True, derandomize=True)
    assert counts.wrong == 0, counts.failures
    assert counts.payloads >= examples
    # The generator reaches every outcome, not just the first refusal.
    assert counts.accepted > 0 and counts.rejected > 0 and counts.payloads > counts.readable_ids
    assert counts.drop_log_lines <= 2, counts.as_dict()
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
