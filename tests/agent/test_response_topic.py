"""Who decides where a device publishes (SPEC §4; issue 8, point 4), against a real Mosquitto:
a command's MQTT 5 Response Topic is honoured only when its signature verified and the topic
lies under P/D/cmd/result/. Results always go to P/D/cmd/result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.command_rig import DEVICE, PREFIX, TOPICS, CommandRig
from tests.mosquitto import Mosquitto, Received, Subscriber

REPLIES = f"{TOPICS.cmd_result}/ops-7"
# Where an attacker would like the device to speak: its own status and detections, the commands
# of another device, and a topic of no one.
FORBIDDEN = [TOPICS.status, TOPICS.detections, f"{PREFIX}/pi-other/cmd", "elsewhere/anything"]
MakeRig = Callable[..., CommandRig]


@pytest.fixture
def make_rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[MakeRig]:
    made: List[CommandRig] = []

    def make(require_signature: bool = True) -> CommandRig:
        rig = CommandRig(
            tmp_path / f"device-{len(made)}", require_signature, (mosquitto.host, mosquitto.port)
        )
        made.append(rig)
        assert rig.link.wait_connected(10)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def spy(mosquitto: Mosquitto, mqtt_subscriber: Any) -> Subscriber:
    """Sees everything, and is the operator who sends the commands."""
    sub: Subscriber = mqtt_subscriber(mosquitto, ["#"])
    return sub


def send(spy: Subscriber, payload: bytes, response_topic: Optional[str], correlation: bytes = b"c-1") -> None:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
    spy.publish(TOPICS.cmd, payload, properties=props)


def results(spy: Subscriber, topic: str = TOPICS.cmd_result) -> List[Any]:
    return [m.json() for m in spy.received(topic)]


def settle(spy: Subscriber, rig: CommandRig) -> None:
    """Wait until the device has sent everything the commands before made it send: one connection
    delivers in order, so once the answer to a last, verified command arrives on its Response
    Topic, whatever came before it has arrived too."""
    payload = rig.command("status")
    command_id = json.loads(payload)["id"]
    send(spy, payload, f"{TOPICS.cmd_result}/settle", b"settle")
    spy.wait_for(
        lambda ms: any(m.topic == f"{TOPICS.cmd_result}/settle" and m.json()["id"] == command_id for m in ms),
        what="the answer to the last command",
    )


def published_by_device(spy: Subscriber) -> List[Received]:
    return [m for m in spy.received() if m.topic != TOPICS.cmd]


def test_a_rejected_command_cannot_choose_where_the_device_publishes(
    make_rig: MakeRig, spy: Subscriber
) -> None:
    rig = make_rig()
    hostile = {
        "unsigned": rig.command("pause", signer=None),
        "stranger": rig.command("pause", signer=1),
        "garbage": b'{"id": "garbage-1", "type": 42}',
    }
    for topic in [*FORBIDDEN, REPLIES]:  # not even under cmd/result/: nothing verified them
        for payload in hostile.values():
            send(spy, payload, topic)
    settle(spy, rig)
    rejected = [r for r in results(spy) if r["status"] == "rejected"]
    assert len(rejected) == len(hostile) * (len(FORBIDDEN) + 1)  # each answered, on P/D/cmd/result
    assert {m.topic for m in published_by_device(spy)} == {TOPICS.cmd_result, f"{TOPICS.cmd_result}/settle"}


def test_a_verified_command_is_answered_on_its_response_topic_under_cmd_result_only(
    make_rig: MakeRig, spy: Subscriber
) -> None:
    rig = make_rig()
    accepted = rig.command("status")
    send(spy, accepted, REPLIES, b"\x00corr-42")
    refused = rig.command("set", args={"score_threshold": 2})  # verified, then rejected: answered too
    send(spy, refused, REPLIES, b"corr-43")
    for topic in [*FORBIDDEN, TOPICS.cmd_result + "x/1", f"{TOPICS.cmd_result}/#"]:
        send(spy, rig.command("status"), topic)
    settle(spy, rig)

    (reply,) = [m for m in spy.received(REPLIES) if m.json()["id"] == json.loads(accepted)["id"]]
    assert reply.correlation_data == b"\x00corr-42"
    assert reply.json()["status"] == "succeeded" and reply.json()["device"] == DEVICE
    (refusal,) = [m for m in spy.received(REPLIES) if m.json()["id"] == json.loads(refused)["id"]]
    assert (refusal.json()["status"], refusal.correlation_data) == ("rejected", b"corr-43")
    # Every result is on P/D/cmd/result as well; a Response Topic outside it was ignored.
    assert len(results(spy)) == 2 + len(FORBIDDEN) + 2 + 1
    assert {m.topic for m in published_by_device(spy)} == {
        TOPICS.cmd_result,
        REPLIES,
        f"{TOPICS.cmd_result}/settle",
    }


def test_an_unsigned_command_a_device_accepts_is_not_verified(make_rig: MakeRig, spy: Subscriber) -> None:
    """Without commands.require_signature an unsigned command is obeyed, but nothing verified who
    sent it: its results go to P/D/cmd/result only."""
    rig = make_rig(require_signature=False)
    unsigned = rig.command("status", signer=None)
    send(spy, unsigned, REPLIES)
    send(spy, rig.command("status", signer=None), TOPICS.status)
    settle(spy, rig)
    assert [r["status"] for r in results(spy)] == ["succeeded"] * 3
    assert spy.received(REPLIES) == [] and spy.received(TOPICS.status) == []
