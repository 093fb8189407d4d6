"""SIGKILL at random moments of a deploy (SPEC §5, §6.4, §6.5): the agent is killed while a
signed deploy of another version is under way, at a delay drawn from a seeded generator over
the span a deploy takes, then restarted on the same store.

Wrong outcomes, each counted per trial:
- *no ending*: the command never got ``succeeded`` or ``failed`` (within 60 s of the restart),
  even one killed on its way in (the agent acknowledges a command to the broker only once it has
  recorded it, so the broker delivers it again); *two endings*: it got more than one;
- *inconsistent*: the ending disagrees with what the restarted device serves (``succeeded`` but
  the old version serves, ``failed`` but the new one does), or the store's current version is
  not the one serving, or it does not verify;
- *over keep_versions*: the store holds more installed versions than ``keep_versions`` (2 here,
  with three versions in play, so every install must make room)."""

from __future__ import annotations

import contextlib
import functools
import json
import random
import sys
import time
from pathlib import Path
from typing import Dict, List

from edge_agent.bundle import load_bundle
from edge_agent.errors import BundleError
from tests.agent_world import V1, V2, World, make_world, wait_for
from tests.bundle_variants import variant

from .report import Row

NAME = "SIGKILL during deploys"
V3 = "1.2.0"
KEEP = 2


def _serving(world: World) -> str:
    """The version the restarted agent serves, as it answers a status command (detections queued
    before the kill still arrive after the restart, so the next frames would not tell)."""
    reply = world.final(world.command("status"))
    return str(reply["data"]["model"]["version"])


def _endings(world: World, command_id: str) -> List[dict]:
    """``succeeded``/``failed`` only: a command the broker delivers again after the kill (QoS 1,
    not yet acknowledged) is a second payload with a used id, answered ``rejected`` as a replay."""
    return [r for r in world.results(command_id) if r["status"] in ("succeeded", "failed")]


def _store_state(world: World) -> tuple:
    """(installed versions, current version or None, whether the current one verifies)."""
    models = world.root / "store" / "models" / "shapes"
    installed = sorted(p.name for p in models.iterdir()) if models.exists() else []
    pointer = world.root / "store" / "current.json"
    current = json.loads(pointer.read_text())["version"] if pointer.exists() else None
    verified = False
    if current is not None:
        try:
            load_bundle(models / current, verify=True)
            verified = True
        except BundleError:
            pass
    return installed, current, verified


def run(root: Path, full: bool) -> Row:
    trials = 20 if full else 3
    rng = random.Random(8)
    wrong = {"no ending": 0, "two endings": 0, "inconsistent": 0, "over keep_versions": 0}
    stages: Dict[str, int] = {}
    redelivered = 0
    with make_world(root, store={"keep_versions": KEEP}) as world:
        key = world.root / "op.key"
        uris = {
            V1: (world.bundles[V1] / "manifest.json").as_uri(),
            V2: (world.bundles[V2] / "manifest.json").as_uri(),
            V3: (
                variant(world.bundles[V2], root / "v3", version=V3, sign_key=key) / "manifest.json"
            ).as_uri(),
        }
        world.agent.start()
        world.serving(V1)
        # How long a whole deploy takes here, to spread the kills over it.
        started = time.monotonic()
        first = world.command("deploy", manifest=uris[V2])
        assert world.final(first)["status"] == "succeeded"
        span = time.monotonic() - started
        serving = V2
        for _ in range(trials):
            target = rng.choice([v for v in (V1, V2, V3) if v != serving])
            command_id = world.command("deploy", manifest=uris[target], allow_downgrade=True)
            delay = rng.uniform(0.0, span * 1.2)
            time.sleep(delay)
            assert world.agent.proc is not None
            world.agent.proc.kill()
            world.agent.proc.wait(10)
            seen = [r.get("stage") or r["status"] for r in world.results(command_id)]
            last = seen[-1] if seen else "before accepted"
            stages[last] = stages.get(last, 0) + 1
            world.agent.start()
            with contextlib.suppress(AssertionError):
                wait_for(functools.partial(_endings, world, command_id), 60, "an ending")
            time.sleep(0.2)  # a second ending would follow the first at once
            ends = _endings(world, command_id)
            redelivered += any(r["status"] == "rejected" for r in world.results(command_id))
            serving = _serving(world)  # after the ending: a redelivered command may run only now
            if not ends:  # accepted or not: a command the device received is acknowledged only
                wrong["no ending"] += 1  # once recorded, so even one killed on arrival comes again
            if len(ends) > 1:
                wrong["two endings"] += 1
                print(f"deploy_kill: two endings: {last=} {world.results(command_id)}", file=sys.stderr)
            installed, current, verified = _store_state(world)
            if len(installed) > KEEP:
                wrong["over keep_versions"] += 1
            status = ends[0]["status"] if ends else None
            if (
                (status == "succeeded" and serving != target)
                or (status == "failed" and serving == target)
                or current != serving
                or not verified
            ):
                wrong["inconsistent"] += 1
                print(
                    f"deploy_kill: inconsistent: {target=} {last=} {status=} {serving=} {current=} "
                    f"{verified=} {installed=} {ends=}",
                    file=sys.stderr,
                )
        world.agent.stop()
    killed_in = ", ".join(f"{k} {v}" for k, v in sorted(stages.items()))
    figures: Dict[str, object] = {
        "deploy span s": round(span, 2),
        "killed in": killed_in,
        "redelivered and rejected as used": redelivered,
    }
    return Row(NAME, trials, figures, wrong)  # type: ignore[arg-type]


__all__: List[str] = ["NAME", "run"]
