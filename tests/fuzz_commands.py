"""Hostile command payloads through the agent's real command path (SPEC §5; issue 8, point 3).

:func:`run_fuzz` feeds a :class:`~tests.command_rig.CommandRig` payloads that hypothesis generates
(valid envelopes, signed or not, with random arguments, then mutated as JSON or as bytes; random
JSON; random bytes; and the literals that broke it before: lone surrogates, deep nesting, huge
numbers, NaN, duplicate keys, at the top too), each with a random MQTT 5 Response Topic, through
the link's own ``on_message`` callback. It returns :class:`FuzzCounts` for a report, or
(``strict``) fails at the first payload that breaks a rule, with hypothesis's smallest example.
The rules:

- every payload with a readable id (:func:`~tests.command_rig.expected_id`, written from SPEC §5
  apart from the checker) is answered with results for that id only, ending in exactly one final status: one
  ``rejected`` when it is not accepted; a payload without one gets no result at all;
- every result is strict UTF-8 JSON;
- nothing goes anywhere but P/D/cmd/result, and under P/D/cmd/result/ for a verified signature;
- no log record with a traceback or at ERROR, and no exception escapes.

``EDGEWATCH_FUZZ_EXAMPLES`` sets how many examples the quick test in ``make test`` runs;
``python -m tests.fuzz_commands [EXAMPLES]`` prints the figures of a random run (10,000 by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_agent.messages import utc_now_iso
from tests.command_rig import (
    DEVICE,
    GROUP,
    PREFIX,
    TOPICS,
    CommandRig,
    Raw,
    dumps_raw,
    expected_id,
    fresh_id,
    signature_verifies,
    signed_doc,
)

QUICK_EXAMPLES = 300
FINAL = ("succeeded", "failed", "rejected")


def fuzz_examples(default: int = QUICK_EXAMPLES) -> int:
    return int(os.environ.get("EDGEWATCH_FUZZ_EXAMPLES", default))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# ----------------------------------------------------------------------------------- counting


@dataclass
class FuzzCounts:
    payloads: int = 0
    readable_ids: int = 0  # payloads that carry one
    accepted: int = 0  # of those, ended succeeded or failed
    rejected: int = 0  # of those, answered with one rejected
    unanswered_ids: int = 0  # of those, no result at all
    wrong_answers: int = 0  # results for a payload without a readable id, for another id, or not one final
    unencodable_results: int = 0  # a result that is not strict UTF-8 JSON
    stray_topics: int = 0  # a publish outside P/D/cmd/result, or a Response Topic honoured unverified
    errors: int = 0  # log records at ERROR or above
    tracebacks: int = 0  # log records with a traceback, and exceptions that escaped
    drop_log_lines: int = 0  # lines about dropped payloads (rate-limited: a few, not one each)
    seconds: float = 0.0
    failures: List[str] = field(default_factory=list)  # the first few, for a report

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "failures"}

    @property
    def wrong(self) -> int:
        """Every wrong outcome together: 0 when the command path held."""
        return (
            self.unanswered_ids
            + self.wrong_answers
            + self.unencodable_results
            + self.stray_topics
            + self.errors
            + self.tracebacks
        )


def _decoded(payload: bytes) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads(payload.decode("utf-8", errors="strict"))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_one(
    rig: CommandRig, payload: bytes, response_topic: Optional[str], counts: FuzzCounts, log: _Records
) -> List[str]:
    """Deliver one payload and count what came of it; the rules it broke, as text."""
    problems: List[str] = []
    before = len(log.records)
    counts.payloads += 1
    try:
        rig.deliver(payload, response_topic)
    except Exception as e:  # the link's callback catches everything; this would be a regression
        counts.tracebacks += 1
        problems.append(f"exception escaped: {e!r}")
    sent = rig.take_sent()
    for record in log.records[before:]:
        if record.exc_info:
            counts.tracebacks += 1
            problems.append(f"traceback logged: {record.getMessage()[:200]}")
        elif record.levelno >= logging.ERROR:
            counts.errors += 1
            problems.append(f"error logged: {record.getMessage()[:200]}")
        if record.getMessage().startswith("dropped"):
            counts.drop_log_lines += 1

    results = []
    for topic, body in sent:
        doc = _decoded(body)
        if doc is None:
            counts.unencodable_results += 1
            problems.append(f"result on {topic} is not UTF-8 JSON: {body[:200]!r}")
        if topic == TOPICS.cmd_result:
            results.append(doc or {})
        elif not (
            topic == response_topic and TOPICS.is_reply_topic(topic) and signature_verifies(payload, rig)
        ):
            counts.stray_topics += 1
            problems.append(f"published on {topic!r} (response topic {response_topic!r})")

    command_id = expected_id(payload)
    if command_id is None:
        if results:
            counts.wrong_answers += 1
            problems.append(f"answered a payload without a readable id: {results}")
        return problems
    counts.readable_ids += 1
    statuses = [r.get("status") for r in results]
    finals = [s for s in statuses if s in FINAL]
    if not results:
        counts.unanswered_ids += 1
        problems.append(f"no result for id {command_id!r}")
    elif any(r.get("id") != command_id for r in results) or len(finals) != 1 or statuses[-1] not in FINAL:
        counts.wrong_answers += 1
        problems.append(f"results {results} for id {command_id!r}")
    elif finals[0] == "rejected":
        counts.rejected += 1
    else:
        counts.accepted += 1
    return problems


# ----------------------------------------------------------------------------------- payloads

# Text as hostile senders write it: control characters, line separators, lone surrogates.
_odd_chars = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.sampled_from(["\n", "\r", "\x00", "\x1b", "\u2028", "\ufeff", " ", '"', "\\", "/", "+", "#"]),
)
texts = st.one_of(st.text(max_size=12), st.text(max_size=12), st.lists(_odd_chars, max_size=12).map("".join))
ids = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    texts,
    st.text(min_size=120, max_size=140),
    st.integers(-5, 5),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
# JSON text that json.dumps cannot write: the literals behind the tracebacks of issue 8.
raw_literals = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0.0e0"]),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 80).map(lambda n: "0." + "1" * n),
    st.integers(1, 2000).map(lambda d: "[" * d + "]" * d),
    st.sampled_from([20_000, 100_000]).map(lambda d: "[" * d + "]" * d),  # far past json.loads
    st.integers(1, 400).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.integers(1, 2000).map(lambda d: "[" * d),
    st.sampled_from(['{"k":1,"k":2}', '"\\ud83d\\ude00"', '"\\u0000"', '"\\ud800\\ud800"', '"\\udfff"']),
    st.integers(0xD800, 0xDFFF).map(lambda c: f'"\\u{c:04x}"'),
)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    raw_literals.map(Raw),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)

_semver = st.builds("{}.{}.{}".format, st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
_urls = st.one_of(
    st.sampled_from(["s3://b/m/manifest.json", "https://h/m.json", "file:///srv/m.json", "ftp://h/x"]),
    st.builds("https://{}/{}".format, texts, texts),
    texts,
)
ARGS: Dict[str, Any] = {
    "deploy": st.fixed_dictionaries(
        {"manifest": _urls},
        optional={
            "sha256": st.one_of(st.just("ab" * 32), texts),
            "backend": st.one_of(st.sampled_from(["tflite", "onnx"]), texts),
            "allow_downgrade": st.one_of(st.booleans(), json_values),
            "files": st.dictionaries(texts, _urls, max_size=3),
        },
    ),
    "rollback": st.fixed_dictionaries({}, optional={"version": st.one_of(_semver, texts)}),
    "set": st.fixed_dictionaries(
        {},
        optional={
            "score_threshold": st.one_of(st.floats(-1, 2), json_values),
            "iou_threshold": st.floats(0, 1),
            "labels": st.lists(texts, max_size=3),
            "publish_mode": st.one_of(st.sampled_from(["all", "detections", "changes"]), texts),
            "max_rate_hz": st.one_of(st.floats(-1, 1e6), st.integers(-(10**30), 10**30)),
        },
    ),
    "status": st.just({}),
    "snapshot": st.just({}),
    "pause": st.just({}),
    "resume": st.just({}),
}


@st.composite
def envelopes(draw: st.DrawFn, keys: List[Any], targets: Tuple[str, ...] = (DEVICE, GROUP)) -> bytes:
    """A command envelope: valid apart from its arguments (half of them), or with fields changed
    or random; signed by the trusted key (mostly), a stranger or nobody, before or after."""
    hostile = draw(st.integers(0, 3))  # 0, 1: only the arguments are random; 2: a few fields; 3: all
    kind = draw(
        st.sampled_from(sorted(ARGS)) if hostile < 3 else st.one_of(st.sampled_from(sorted(ARGS)), texts)
    )
    doc: Dict[str, Any] = {
        "id": fresh_id() if hostile < 3 else draw(ids),
        "type": kind,
        "ts": utc_now_iso()
        if hostile < 3
        else draw(st.one_of(st.just(utc_now_iso(time.time() - 3600)), texts)),
        "target": draw(st.sampled_from(targets) if hostile < 3 else st.sampled_from(["pi-other"]) | texts),
        "args": draw(ARGS.get(kind, st.dictionaries(texts, json_values, max_size=3))),
    }
    if draw(st.booleans()):
        doc["expires"] = utc_now_iso(time.time() + 60) if hostile < 3 else draw(texts)
    signer = draw(st.sampled_from([0, 0, 0, 1, None]))  # mostly the trusted key
    sign_first = hostile == 2 and draw(st.booleans())
    if signer is not None and sign_first:
        doc = signed_doc(doc, keys[signer])
    for _ in range(draw(st.integers(1, 2)) if hostile == 2 else 0):
        key = draw(st.sampled_from(["id", "type", "ts", "target", "args", "expires", "sig"]) | texts)
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(json_values)
    if signer is not None and not sign_first:
        doc = signed_doc(doc, keys[signer])
    payload = dumps_raw(doc)
    if hostile == 2 and draw(st.integers(0, 3)) == 0:  # a key twice at the top: the id, now and then
        key = draw(st.sampled_from(["id", "type", "ts", "args", "sig"]) | texts)
        payload = b"{" + dumps_raw({key: draw(json_values)})[1:-1] + b", " + payload[1:]
    if hostile == 2 and draw(st.integers(0, 4)) == 0:  # now and then, damage the bytes themselves
        position = draw(st.integers(0, len(payload)))
        cut = draw(st.integers(0, 4))
        payload = payload[:position] + draw(st.binary(max_size=4)) + payload[position + cut :]
    return payload


def payloads(keys: List[Any], targets: Tuple[str, ...] = (DEVICE, GROUP)) -> st.SearchStrategy[bytes]:
    """Hostile payloads for a device (and group) in ``targets`` whose trusted key is ``keys[0]``."""
    return st.one_of(
        envelopes(keys, targets),
        envelopes(keys, targets),
        envelopes(keys, targets),
        st.dictionaries(st.one_of(st.just("id"), texts), json_values, max_size=5).map(dumps_raw),
        st.fixed_dictionaries({"id": ids}, optional={"type": texts, "args": json_values}).map(dumps_raw),
        json_values.map(dumps_raw),
        st.binary(max_size=200),
    )


response_topics = st.sampled_from(
    [
        None,
        f"{PREFIX}/{DEVICE}/status",
        f"{PREFIX}/{DEVICE}/detections",
        f"{PREFIX}/other/cmd",
        f"{PREFIX}/{DEVICE}/cmd/result",
        f"{PREFIX}/{DEVICE}/cmd/result/",
        f"{PREFIX}/{DEVICE}/cmd/result/ops-1",
        f"{PREFIX}/{DEVICE}/cmd/result/#",
        f"{PREFIX}/{DEVICE}/cmd/resultx/1",
    ]
)


# ----------------------------------------------------------------------------------- running


def run_fuzz(
    examples: int,
    directory: Optional[Path] = None,
    *,
    strict: bool = False,
    derandomize: bool = False,
    require_signature: bool = True,
) -> FuzzCounts:
    """Feed ``examples`` generated payloads to a fresh :class:`CommandRig` and count the outcomes.
    ``strict``: fail (AssertionError, shrunk by hypothesis) at the first payload that breaks a
    rule. ``derandomize``: the same payloads on every run (the quick test in ``make test``)."""
    counts = FuzzCounts()
    records = _Records()
    logger = logging.getLogger("edge_agent")
    logger.addHandler(records)
    started = time.monotonic()
    with _directory(directory) as where, CommandRig(where, require_signature=require_signature) as rig:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.explicit, Phase.generate, Phase.shrink) if strict else (Phase.generate,),
        )
        @given(payload=payloads(rig.keys), response_topic=response_topics)
        def one(payload: bytes, response_topic: Optional[str]) -> None:
            problems = check_one(rig, payload, response_topic, counts, records)
            if problems and len(counts.failures) < 20:
                counts.failures.append(f"{payload[:300]!r}: {'; '.join(problems)}")
            if strict:
                assert not problems, f"payload {payload[:500]!r}: " + "; ".join(problems)

        try:
            one()
        finally:
            logger.removeHandler(records)
            counts.seconds = round(time.monotonic() - started, 1)
    return counts


@contextlib.contextmanager
def _directory(path: Optional[Path]) -> Iterator[Path]:
    """``path`` as given, or a temporary directory removed afterwards."""
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgewatch-fuzz-") as tmp:
        yield Path(tmp)


def main() -> None:
    """``python -m tests.fuzz_commands [EXAMPLES]``: the figures as one JSON line."""
    import sys

    examples = int(sys.argv[1]) if len(sys.argv) > 1 else fuzz_examples(10_000)
    counts = run_fuzz(examples)
    print(json.dumps(counts.as_dict()))
    for failure in counts.failures:
        print(failure, file=sys.stderr)
    sys.exit(1 if counts.wrong else 0)


if __name__ == "__main__":
    main()
