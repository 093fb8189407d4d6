"""Forged, expired, replayed and mistargeted commands (SPEC §5) against a running agent that
requires signatures, with separate operator and release keys (SPEC §3 store.trusted_keys).

Every command here is one the device must refuse: a ``pause`` (which, if obeyed, would stop the
detections) or a ``deploy`` of v2. Wrong outcomes:
- *obeyed*: the device answered ``accepted`` or ``succeeded``, or changed what it serves;
- *unanswered*: no ``rejected`` (each payload carries a readable id);
- *answered twice*: more than one result for one payload;
- *detections stopped*: frames stopped flowing (a forged pause that worked)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from edge_agent.bundle.signing import generate_keypair, load_private_key, write_keypair
from edge_agent.commands.envelope import new_command, sign_envelope
from edge_agent.messages import utc_now_iso
from tests.agent_world import DEVICE, V1, V2, World, make_world
from tests.waiting import wait_for

from .report import Row

NAME = "forged, expired, replayed, mistargeted commands"

Forge = Callable[[World, Path], Dict[str, Any]]


def _key(root: Path, name: str) -> Path:
    path = root / f"{name}.key"
    if not path.exists():
        private, _ = generate_keypair()
        path.write_bytes(private)
    return path


def _signed(doc: Dict[str, Any], key: Path) -> Dict[str, Any]:
    return sign_envelope(doc, load_private_key(key))


def _pause(**fields: Any) -> Dict[str, Any]:
    doc = new_command("pause", DEVICE, {})
    doc.update(fields)
    return doc


def unsigned(world: World, root: Path) -> Dict[str, Any]:
    return _pause()


def stranger(world: World, root: Path) -> Dict[str, Any]:
    return _signed(_pause(), _key(root, "stranger"))


def release_key(world: World, root: Path) -> Dict[str, Any]:
    """Signed by the key that signs models: it must not command the device."""
    return _signed(_pause(), root / "release.key")


def tampered(world: World, root: Path) -> Dict[str, Any]:
    doc = _signed(
        new_command("deploy", DEVICE, {"manifest": "file:///x/manifest.json"}), world.root / "op.key"
    )
    doc["args"] = {"manifest": (world.bundles[V2] / "manifest.json").as_uri()}
    return doc


def garbage_signature(world: World, root: Path) -> Dict[str, Any]:
    return {**_pause(), "sig": "A" * 86 + "=="}


def expired(world: World, root: Path) -> Dict[str, Any]:
    doc = _pause()
    doc["expires"] = utc_now_iso(time.time() - 5)
    return _signed(doc, world.root / "op.key")


def too_old(world: World, root: Path) -> Dict[str, Any]:
    return _signed(_pause(ts=utc_now_iso(time.time() - 3600)), world.root / "op.key")


def from_the_future(world: World, root: Path) -> Dict[str, Any]:
    return _signed(_pause(ts=utc_now_iso(time.time() + 3600)), world.root / "op.key")


def other_device(world: World, root: Path) -> Dict[str, Any]:
    return _signed(_pause(target="pi-other"), world.root / "op.key")


def other_group(world: World, root: Path) -> Dict[str, Any]:
    return _signed(_pause(target="kitchen"), world.root / "op.key")


FORGERIES: List[Tuple[str, Forge]] = [
    ("unsigned", unsigned),
    ("signed by a stranger", stranger),
    ("signed by the release key", release_key),
    ("signed, then its args changed", tampered),
    ("garbage signature", garbage_signature),
    ("expired", expired),
    ("ts an hour old", too_old),
    ("ts an hour ahead", from_the_future),
    ("another device", other_device),
    ("a group it is not in", other_group),
]


def _replay(world: World, seen: Dict[str, Any]) -> Dict[str, Any]:
    """A command the device already obeyed, sent again byte for byte."""
    return copy.deepcopy(seen)


def run(root: Path, full: bool) -> Row:
    rounds = 4 if full else 1
    wrong = {"obeyed": 0, "unanswered": 0, "answered twice": 0, "detections stopped": 0}
    sent = 0
    _, release_pub = write_keypair(root / "release")  # signs models, never commands
    with make_world(root / "world", store={"trusted_keys": [str(release_pub)]}) as world:
        world.agent.start()
        world.serving(V1)
        # One real command, obeyed, to replay later.
        genuine = _signed(new_command("status", DEVICE, {}), world.root / "op.key")
        world.publish_command(json.dumps(genuine).encode())
        world.final(genuine["id"])
        payloads: List[Tuple[str, Dict[str, Any]]] = []
        for _ in range(rounds):
            payloads += [(name, forge(world, root)) for name, forge in FORGERIES]
            payloads.append(("replayed", _replay(world, genuine)))
        for name, doc in payloads:
            before = len(world.results(doc["id"]))
            world.publish_command(json.dumps(doc).encode())
            sent += 1
            try:
                wait_for(lambda d=doc, b=before: len(world.results(d["id"])) > b, 15, f"an answer to {name}")
            except AssertionError:
                wrong["unanswered"] += 1
                continue
            answers = world.results(doc["id"])[before:]
            if any(a["status"] != "rejected" for a in answers):
                wrong["obeyed"] += 1
        if full:  # ids are remembered across restarts
            world.agent.stop()
            world.agent.start()
            world.serving(V1)
            before = len(world.results(genuine["id"]))
            world.publish_command(json.dumps(genuine).encode())
            sent += 1
            try:
                wait_for(lambda: len(world.results(genuine["id"])) > before, 15, "an answer to a replay")
                if any(a["status"] != "rejected" for a in world.results(genuine["id"])[before:]):
                    wrong["obeyed"] += 1
            except AssertionError:
                wrong["unanswered"] += 1
        world.settle()  # any second answer is in by now
        for _, doc in payloads:
            if doc["id"] != genuine["id"] and len(world.results(doc["id"])) > 1:
                wrong["answered twice"] += 1
        try:
            frames = world.fresh_frames(10, timeout=15)
            if {f["model"]["version"] for f in frames} != {V1}:
                wrong["obeyed"] += 1
        except AssertionError:
            wrong["detections stopped"] += 1
        world.agent.stop()
    return Row(NAME, sent, {"kinds": len(FORGERIES) + 1, "payloads": sent}, wrong)
