"""The MQTT link against a real Mosquitto: status and Last Will, commands (MQTT 5 request/response
and 3.1.1), write-ahead delivery through outages and crashes, TLS and passwords."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import ConfigError, MQTTConfig
from edge_agent.mqtt import IncomingCommand, MqttLink, Outbox, Topics
from tests.mosquitto import Mosquitto, Subscriber, TcpGate
from tests.pki import make_tls_files
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "ew"
DEVICE = "pi-01"
TOPICS = Topics(PREFIX, DEVICE, ("lab",))
MakeLink = Callable[..., MqttLink]
MakeSubscriber = Callable[..., Subscriber]


def mqtt_config(port: int, **overrides: Any) -> MQTTConfig:
    return MQTTConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "keepalive": 5, "topic_prefix": PREFIX, **overrides}
    )


def detection(seq: int) -> bytes:
    return json.dumps({"device": DEVICE, "seq": seq, "detections": []}).encode()


def seqs(messages: Sequence[Any]) -> List[int]:
    return [m.json()["seq"] for m in messages]


def states(messages: Sequence[Any]) -> List[str]:
    return [m.json()["state"] for m in messages if m.topic == TOPICS.status]


class Commands:
    """An on_command that records what arrives (and can be told to fail)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: List[IncomingCommand] = []
        self._lock = threading.Lock()
        self._fail = fail_first

    def __call__(self, command: IncomingCommand) -> None:
        with self._lock:
            self.received.append(command)
            if self._fail > 0:
                self._fail -= 1
                raise RuntimeError("handler bug")

    def wait(self, count: int) -> List[IncomingCommand]:
        wait_for(lambda: len(self.received) >= count, what=f"{count} command(s)")
        with self._lock:
            return list(self.received)


@pytest.fixture
def make_link(tmp_path: Path) -> Iterator[MakeLink]:
    made: List[MqttLink] = []

    def make(
        config: MQTTConfig,
        topics: Topics = TOPICS,
        outbox: Optional[Outbox] = None,
        on_command: Optional[Callable[[IncomingCommand], None]] = None,
        **kwargs: Any,
    ) -> MqttLink:
        box = outbox if outbox is not None else Outbox(tmp_path / f"outbox-{len(made)}.db", 1000)
        link = MqttLink(config, topics, box, on_command or (lambda c: None), reconnect_delay=(1, 2), **kwargs)
        made.append(link)
        return link

    yield make
    for link in made:
        link.stop(None, timeout=1)
        link.outbox.close()


# ------------------------------------------------------------------------------ an agent process to kill


def child_main() -> None:
    """A minimal agent in its own process, so that a test can SIGKILL it. It starts, says
    "started" (once connected, with "connect"), waits for a line on stdin, queues its messages,
    waits for what "until" asks (delivered, or handed to paho), says "ready" and waits for death."""
    args = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    outbox = Outbox(Path(args["outbox"]), 1000)
    link = MqttLink(MQTTConfig.model_validate(args["mqtt"]), TOPICS, outbox, lambda c: None)
    link.publish_status({"state": "online"})
    link.start()
    if args["connect"]:
        assert link.wait_connected(10), "the child could not connect"
    print("started", flush=True)
    sys.stdin.readline()
    for _ in range(args["detections"]):
        link.publish_detection(detection)
    link.publish_event({"type": "camera_lost"})
    if args["until"] == "delivered":
        assert link.flush(10), "the child could not deliver"
    elif args["until"] == "sent":
        wait_for(lambda: link.stats.sent == args["detections"] + 1, what="the child to hand over")
    print("ready", flush=True)
    sys.stdin.read()


CHILD_CODE = "from tests.agent.test_mqtt_link import child_main; child_main()"


class Child:
    """The agent process of :func:`child_main`."""

    def __init__(self, tmp_path: Path, port: int, detections: int, connect: bool, until: str) -> None:
        args = {
            "mqtt": mqtt_config(port).model_dump(mode="json"),
            "outbox": str(tmp_path / "child-outbox.db"),
            "detections": detections,
            "connect": connect,
            "until": until,
        }
        self.log = tmp_path / "child.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tests.agent.test_mqtt_link import child_main; child_main()",
                json.dumps(args),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        self._expect("started")

    def go(self) -> None:
        """Queue the messages, and wait for them to be where the test asked."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], 20)
        if not (readable and self.process.stdout.readline().startswith(word)):
            self.kill()
            raise AssertionError(f"the child agent did not say {word!r}:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no DISCONNECT, no flush, no goodbye
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


# ------------------------------------------------------------------------------ status and Last Will


def test_status_is_retained_and_the_will_says_offline_when_the_agent_dies(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber
) -> None:
    watcher = mqtt_subscriber(mosquitto, [TOPICS.status])
    child = Child(tmp_path, mosquitto.port, detections=0, connect=True, until="delivered")
    child.go()
    try:
        watcher.wait_for(lambda ms: "online" in states(ms), what="online")
        late = mqtt_subscriber(mosquitto, [TOPICS.status])  # retained: a late subscriber sees it too
        (online,) = late.wait_count(TOPICS.status, 1)
        assert online.retain and online.json()["state"] == "online"
        assert online.content_type == "application/json"
    finally:
        child.kill()
    watcher.wait_for(lambda ms: "offline" in states(ms), what="the Last Will")
    will = watcher.received(TOPICS.status)[-1].json()
    assert will["state"] == "offline" and will["ts"].endswith("Z")
    after = mqtt_subscriber(mosquitto, [TOPICS.status])
    (retained,) = after.wait_count(TOPICS.status, 1)
    assert retained.retain and retained.json()["state"] == "offline"


def test_clean_stop_delivers_the_queue_then_stopped_and_no_will(
    mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    watcher = mqtt_subscriber(mosquitto, [TOPICS.status, TOPICS.events])
    link = make_link(mqtt_config(mosquitto.port))
    link.start()
    link.publish_status({"state": "online"})
    watcher.wait_for(lambda ms: "online" in states(ms), what="online")
    for n in range(50):
        link.publish_event({"type": "tick", "n": n})
    link.stop({"state": "stopped"}, timeout=10)
    link.stop({"state": "stopped"})  # idempotent
    assert len(link.outbox) == 0
    assert not link.connected
    mosquitto.wait_for_log(f"Client {link.client_id} disconnected.")  # a clean DISCONNECT
    watcher.barrier()  # a will would have been sent before this marker
    events = [m.json()["n"] for m in watcher.received(TOPICS.events)]
    assert events == list(range(50))
    assert states(watcher.received()) == ["online", "stopped"]
    after = mqtt_subscriber(mosquitto, [TOPICS.status])
    (retained,) = after.wait_count(TOPICS.status, 1)
    assert retained.retain and retained.json()["state"] == "stopped"
    stats = link.stats
    assert (stats.acked, stats.queued, stats.dropped, stats.reconnects) == (50, 0, 0, 0)


# ------------------------------------------------------------------------------ commands


def test_commands_carry_response_topic_and_correlation_data(
    mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    replies = f"{TOPICS.cmd_result}/ops-42"
    # P/D/cmd/result/# also matches P/D/cmd/result itself.
    operator = mqtt_subscriber(mosquitto, [f"{TOPICS.cmd_result}/#", "ops/#", TOPICS.snapshot])
    # A retained command must not be replayed to the agent when it subscribes.
    operator.publish(TOPICS.cmd, b'{"id":"stale"}', retain=True)
    commands = Commands(fail_first=1)
    link = make_link(mqtt_config(mosquitto.port), on_command=commands)
    link.start()
    assert link.wait_connected(10)
    assert link.connected

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = replies
    props.CorrelationData = b"\x00corr-42"
    operator.publish(TOPICS.cmd, b'{"id":"c1"}', properties=props)  # the handler raises on this one
    operator.publish(f"{PREFIX}/group/lab/cmd", b'{"id":"c2"}')
    first, second = commands.wait(2)
    assert first == IncomingCommand(TOPICS.cmd, b'{"id":"c1"}', replies, b"\x00corr-42")
    assert second == IncomingCommand(f"{PREFIX}/group/lab/cmd", b'{"id":"c2"}', None, None)

    # Only under P/D/cmd/result/ (SPEC §4): any other Response Topic is ignored, even one the
    # caller vouches for.
    elsewhere = IncomingCommand(TOPICS.cmd, b"{}", "ops/replies/42", b"x")
    link.publish_result({"id": "c0", "device": DEVICE, "status": "succeeded"}, reply_to=elsewhere)
    link.publish_result({"id": "c1", "device": DEVICE, "status": "succeeded"}, reply_to=first)
    link.publish_result({"id": "c2", "device": DEVICE, "status": "rejected"}, reply_to=second)
    operator.wait_for(lambda ms: len(ms) >= 4, what="results and the reply")
    results = operator.received(TOPICS.cmd_result)
    assert [(m.json()["id"], m.json()["status"]) for m in results] == [
        ("c0", "succeeded"),
        ("c1", "succeeded"),
        ("c2", "rejected"),
    ]
    assert operator.received("ops/replies/42") == []  # it would have come before c1's reply
    assert all(m.json()["ts"].endswith("Z") for m in results)
    (reply,) = operator.received(replies)
    assert reply.json() == results[1].json()
    assert reply.correlation_data == b"\x00corr-42"
    assert [c.payload for c in commands.received] == [b'{"id":"c1"}', b'{"id":"c2"}']  # no stale one

    link.publish_snapshot(b"\xff\xd8jpeg bytes\xff\xd9")
    (snapshot,) = operator.wait_count(TOPICS.snapshot, 1)
    assert (snapshot.payload, snapshot.qos, snapshot.content_type) == (
        b"\xff\xd8jpeg bytes\xff\xd9",
        0,
        "image/jpeg",
    )
    assert link.flush(10)


def test_mqtt_311_commands_delivery_and_will(
    mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    watcher = mqtt_subscriber(mosquitto, [f"{PREFIX}/{DEVICE}/#"], protocol=311)
    gate = TcpGate(mosquitto.port)
    commands = Commands()
    link = make_link(mqtt_config(gate.port, protocol=311), on_command=commands)
    link.publish_status({"state": "online"})
    link.start()
    assert link.wait_connected(10)
    watcher.publish(TOPICS.cmd, b'{"id":"c3"}')
    (command,) = commands.wait(1)
    assert command == IncomingCommand(TOPICS.cmd, b'{"id":"c3"}', None, None)
    link.publish_result({"id": "c3", "status": "accepted"}, reply_to=command)
    link.ack(command)  # recorded: the broker may forget it
    assert link.publish_detection(detection) == 1
    watcher.wait_count(TOPICS.detections, 1)
    watcher.wait_count(TOPICS.cmd_result, 1)

    gate.close()  # the network dies under the agent: the broker publishes its will
    watcher.wait_for(lambda ms: "offline" in states(ms), what="the Last Will")
    gate.open()  # and on reconnect the agent says it is back
    watcher.wait_for(lambda ms: states(ms)[-1:] == ["online"] and len(states(ms)) >= 3, what="online again")
    assert link.wait_connected(10)
    assert link.stats.reconnects >= 1
    watcher.publish(TOPICS.cmd, b'{"id":"c4"}')
    assert commands.wait(2)[-1].payload == b'{"id":"c4"}'
    gate.close()


@pytest.mark.parametrize("protocol", [5, 311])
def test_a_command_is_delivered_again_until_the_agent_acknowledges_it(
    protocol: int, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    """A command reaches the broker's hands back if the agent dies before it recorded it (its
    handler acknowledges only then): after the reconnect it comes again; one acknowledged does not."""
    sender = mqtt_subscriber(mosquitto, [TOPICS.detections], protocol=protocol)
    gate = TcpGate(mosquitto.port)
    commands = Commands()
    link = make_link(mqtt_config(gate.port, protocol=protocol), on_command=commands)
    link.start()
    assert link.wait_connected(10)
    sender.publish(TOPICS.cmd, b'{"id":"recorded"}')
    (recorded,) = commands.wait(1)
    link.ack(recorded)
    sender.publish(TOPICS.cmd, b'{"id":"in-hand"}')
    commands.wait(2)
    # A message the link sends after the acknowledgement follows it on the wire: once it has
    # arrived, the broker has the PUBACK for "recorded" (and none for "in-hand").
    link.publish_detection(detection)
    sender.wait_count(TOPICS.detections, 1)
    gate.close()  # the agent "crashes" with "in-hand" not yet recorded
    gate.open()
    again = commands.wait(3)[-1]
    assert again.payload == b'{"id":"in-hand"}'
    assert again.redelivered and not recorded.redelivered  # the broker's DUP flag
    assert [c.payload for c in commands.received].count(b'{"id":"recorded"}') == 1
    gate.close()


# ------------------------------------------------------------------------------ outages and crashes


@pytest.mark.parametrize("qos", [0, 1])
def test_messages_queued_during_an_outage_arrive_in_order_after_it(
    qos: int, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    topic_filter = [f"{PREFIX}/{DEVICE}/#"]
    before = mqtt_subscriber(mosquitto, topic_filter)
    gate = TcpGate(mosquitto.port)  # so that the agent reconnects only once the test is ready
    commands = Commands()
    link = make_link(mqtt_config(gate.port, qos=qos), on_command=commands)
    link.publish_status({"state": "online"})
    link.start()
    assert link.wait_connected(10)
    for _ in range(3):
        link.publish_detection(detection)
    assert link.flush(10)
    assert seqs(before.wait_count(TOPICS.detections, 3)) == [1, 2, 3]

    gate.close()
    mosquitto.stop()  # the broker goes down too, and forgets every session
    wait_for(lambda: not link.connected, what="the agent to notice")
    for _ in range(20):
        link.publish_detection(detection)
    link.publish_event({"type": "camera_lost"})
    assert len(link.outbox) == 21
    assert not link.flush(0.2)

    mosquitto.start()
    after = mqtt_subscriber(mosquitto, topic_filter)
    gate.open()
    after.wait_count(TOPICS.events, 1)
    assert seqs(after.received(TOPICS.detections)) == list(range(4, 24))  # all of them, oldest first
    assert all(m.qos == qos for m in after.received(TOPICS.detections))
    assert link.flush(10)
    # The broker lost the session: the status is published again and the commands re-subscribed.
    after.wait_for(lambda ms: "online" in states(ms), what="the status re-published")
    assert link.wait_connected(10)
    after.publish(TOPICS.cmd, b'{"id":"after"}')
    assert commands.wait(1)[0].payload == b'{"id":"after"}'
    assert link.stats.reconnects >= 1
    gate.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_a_cut_in_mid_stream_loses_nothing(
    qos: int, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    watcher = mqtt_subscriber(mosquitto, [TOPICS.detections], protocol=5)
    gate = TcpGate(mosquitto.port)
    link = make_link(mqtt_config(gate.port, qos=qos))
    link.start()
    assert link.wait_connected(10)
    total = 1000
    for _ in range(total):
        link.publish_detection(detection)
    watcher.wait_count(TOPICS.detections, 50)
    gate.close()  # whatever is in flight now is neither lost nor confirmed
    wait_for(lambda: not link.connected, what="the agent to notice")
    gate.open()
    watcher.wait_for(lambda ms: len({m.json()["seq"] for m in ms}) == total, timeout=30, what="every seq")
    assert link.flush(10)
    received = seqs(watcher.received(TOPICS.detections))
    first_seen = list(dict.fromkeys(received))
    assert first_seen == list(range(1, total + 1))  # at least once, and oldest first
    gate.close()


def test_the_next_agent_delivers_what_a_crashed_one_left(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    mosquitto.stop()
    child = Child(tmp_path, mosquitto.port, detections=5, connect=False, until="queued")
    child.go()
    child.kill()  # with 6 messages on disk, never sent

    mosquitto.start()
    watcher = mqtt_subscriber(mosquitto, [TOPICS.detections, TOPICS.events])
    outbox = Outbox(tmp_path / "child-outbox.db", 1000)
    assert len(outbox) == 6
    link = make_link(mqtt_config(mosquitto.port), outbox=outbox)
    link.start()
    watcher.wait_count(TOPICS.events, 1)
    assert seqs(watcher.received(TOPICS.detections)) == [1, 2, 3, 4, 5]
    assert link.flush(10)
    assert link.publish_detection(detection) == 6  # seq goes on where the crashed agent left it
    assert seqs(watcher.wait_count(TOPICS.detections, 6)) == [1, 2, 3, 4, 5, 6]


def test_messages_in_flight_when_the_agent_dies_are_sent_by_the_next(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    watcher = mqtt_subscriber(mosquitto, [TOPICS.detections, TOPICS.events])
    gate = TcpGate(mosquitto.port)
    child = Child(tmp_path, gate.port, detections=5, connect=True, until="sent")
    gate.freeze()  # what the child publishes now never reaches the broker, and no PUBACK comes back
    child.go()  # returns once all 6 messages are handed to paho, in flight
    child.kill()
    gate.close()
    assert watcher.received() == []

    link = make_link(mqtt_config(mosquitto.port), outbox=Outbox(tmp_path / "child-outbox.db", 1000))
    link.start()
    watcher.wait_count(TOPICS.events, 1)
    assert seqs(watcher.received(TOPICS.detections)) == [1, 2, 3, 4, 5]
    assert link.flush(10)


def test_broker_down_at_start_and_a_bounded_queue(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    mosquitto.stop()
    link = make_link(mqtt_config(mosquitto.port), outbox=Outbox(tmp_path / "small.db", 5))
    link.start()  # does not raise; keeps trying
    for n in range(8):
        link.publish_event({"type": "tick", "n": n})
    stats = link.stats
    assert (stats.queued, stats.dropped, stats.connected) == (5, 3, False)

    mosquitto.start()
    watcher = mqtt_subscriber(mosquitto, [TOPICS.events])
    assert link.wait_connected(15)
    watcher.wait_count(TOPICS.events, 5)
    assert [m.json()["n"] for m in watcher.received(TOPICS.events)] == [3, 4, 5, 6, 7]  # the newest kept
    assert link.flush(10)
    assert link.stats.acked == 5


# ------------------------------------------------------------------------------ security


def test_mutual_tls(tmp_path: Path, mqtt_subscriber: MakeSubscriber, make_link: MakeLink) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with Mosquitto(tmp_path / "broker", tls=tls, require_certificate=True) as broker:
        assert broker.tls_port is not None
        watcher = mqtt_subscriber(broker, [TOPICS.status])
        tls_keys = {"ca": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)}
        link = make_link(mqtt_config(broker.tls_port, tls=tls_keys))
        link.publish_status({"state": "online"})
        link.start()
        assert link.wait_connected(10)
        watcher.wait_for(lambda ms: "online" in states(ms), what="online over TLS")

        # Without a client certificate the broker refuses the agent.
        no_cert = make_link(mqtt_config(broker.tls_port, tls={"ca": str(tls.ca)}, client_id="no-cert"))
        no_cert.start()
        broker.wait_for_log("peer did not return a certificate")
        assert not no_cert.connected
        no_cert.stop(None, timeout=1)
        link.stop({"state": "stopped"})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"tls": {"ca": "/nonexistent/ca.crt"}}, "mqtt.tls.ca"),
        ({"tls": {"ca": "JUNK"}}, "mqtt.tls.ca"),
        ({"tls": {"ca": "CA", "cert": "/nonexistent/client.crt"}}, "mqtt.tls.cert"),
        ({"tls": {"ca": "CA", "cert": "CERT", "key": "/nonexistent/client.key"}}, "mqtt.tls.key"),
        ({"tls": {"ca": "CA", "key": "KEY"}}, "mqtt.tls.key"),
        ({"username": "agent", "password_file": "/nonexistent/password"}, "mqtt.password_file"),
        ({"password_file": "PASSWORD"}, "mqtt.password_file"),
    ],
)
def test_unusable_credentials_are_config_errors_naming_the_key(
    tmp_path: Path, overrides: Dict[str, Any], key: str
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    (tmp_path / "junk").write_text("not a certificate\n")
    (tmp_path / "password").write_text("secret\n")
    files = {
        "CA": str(tls.ca),
        "CERT": str(tls.client_cert),
        "KEY": str(tls.client_key),
        "JUNK": str(tmp_path / "junk"),
        "PASSWORD": str(tmp_path / "password"),
    }

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return files.get(value, value)

    config = mqtt_config(1883, **resolve(overrides))
    outbox = Outbox(tmp_path / "outbox.db", 10)
    with pytest.raises(ConfigError) as raised:
        MqttLink(config, TOPICS, outbox, lambda c: None)
    assert key in str(raised.value)
    outbox.close()


def test_username_and_password_from_a_file(
    tmp_path: Path, mqtt_subscriber: MakeSubscriber, make_link: MakeLink
) -> None:
    users = {"agent": "s3cret pass", "watcher": "w"}
    with Mosquitto(tmp_path / "broker", users=users) as broker:
        watcher = mqtt_subscriber(broker, [TOPICS.status], username="watcher", password="w")
        password_file = tmp_path / "password"
        password_file.write_text("s3cret pass\n")  # the trailing newline is not part of it
        link = make_link(mqtt_config(broker.port, username="agent", password_file=str(password_file)))
        link.publish_status({"state": "online"})
        link.start()
        assert link.wait_connected(10)
        watcher.wait_for(lambda ms: "online" in states(ms), what="online with a password")

        wrong = tmp_path / "wrong"
        wrong.write_text("guess\n")
        refused = make_link(
            mqtt_config(broker.port, username="agent", password_file=str(wrong), client_id="intruder")
        )
        refused.start()
        broker.wait_for_log("not authorised")
        assert not refused.connected
        refused.stop(None, timeout=1)


def test_topics() -> None:
    topics = Topics("site/ew", "cam-1", ("lab", "north", "lab"))
    assert topics.status == "site/ew/cam-1/status"
    assert topics.detections == "site/ew/cam-1/detections"
    assert topics.events == "site/ew/cam-1/events"
    assert topics.cmd_result == "site/ew/cam-1/cmd/result"
    assert topics.snapshot == "site/ew/cam-1/snapshot"
    assert topics.command_topics() == [
        "site/ew/cam-1/cmd",
        "site/ew/group/lab/cmd",
        "site/ew/group/north/cmd",
    ]
    for bad, key in [
        (("ew/+", "d", ()), "mqtt.topic_prefix"),
        (("ew//x", "d", ()), "mqtt.topic_prefix"),
        (("ew", "a/b", ()), "device.id"),
        (("ew", "d", ("#",)), "device.groups"),
    ]:
        with pytest.raises(ConfigError, match=key):
            Topics(*bad)


def test_pahos_not_connected_error_after_a_clean_disconnect_is_debug_noise() -> None:
    """paho logs "Client is not connected" at ERROR after every disconnect: demoted to DEBUG,
    and so not written at all where DEBUG is off (the journal would fill with it)."""
    from edge_agent.mqtt.link import _DemoteShutdownNoise

    logger = logging.getLogger("edge_agent.mqtt.link.paho.test")
    noise = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Client is not connected", (), None)
    real = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed to receive on socket", (), None)
    demote = _DemoteShutdownNoise()
    logger.setLevel(logging.INFO)
    try:
        assert demote.filter(noise) is False and noise.levelno == logging.DEBUG
        assert demote.filter(real) is True and real.levelno == logging.ERROR
        logger.setLevel(logging.DEBUG)
        assert demote.filter(
            logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Client is not connected", (), None)
        )
    finally:
        logger.setLevel(logging.NOTSET)
