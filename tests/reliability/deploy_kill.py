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
  with three versions in play, so every install must make room), as the kill left it or after
  the restart."""

from __future__ import annotations

import contextlib
import functools
import random
import sys
import time
from pathlib import Path
from typing import Dict, List

from tests.agent_world import V1, V2, make_world
from tests.bundle_variants import variant
from tests.waiting import wait_for

from .report import Row

NAME = "SIGKILL during deploys"
V3 = "1.2.0"
KEEP = 2


def run(root: Path, full: bool) -> Row:
    trials = 20 if full else 3
    rng = random.Random(8)
    wrong = {"no ending": 0, "two endings": 0, "inconsistent": 0, "over keep_versions": 0}
    stages: Dict[str, int] = {}
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
            time.sleep(delay)  # a deliberate sleep: the kill lands at a random point of the deploy
            assert world.agent.proc is not None
            world.agent.proc.kill()
            world.agent.proc.wait(10)
            if len(world.store_state().installed) > KEEP:  # as the kill left it, before recovery
                wrong["over keep_versions"] += 1
            seen = [r.get("stage") or r["status"] for r in world.results(command_id)]
            last = seen[-1] if seen else "before accepted"
            stages[last] = stages.get(last, 0) + 1
            world.agent.start()
            with contextlib.suppress(AssertionError):
                wait_for(functools.partial(world.endings, command_id), 60, "an ending")
            world.settle()  # a second ending would be in by now
            ends = world.endings(command_id)
            serving = world.serving_version()  # after the ending: a redelivered command may run only now
            if not ends:  # accepted or not: a command the device received is acknowledged only
                wrong["no ending"] += 1  # once recorded, so even one killed on arrival comes again
            if len(ends) > 1:
                wrong["two endings"] += 1
                print(f"deploy_kill: two endings: {last=} {world.results(command_id)}", file=sys.stderr)
            state = world.store_state()
            installed, current, verified = state.installed, state.current, state.verified
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
    }
    return Row(NAME, trials, figures, wrong)  # type: ignore[arg-type]


__all__: List[str] = ["NAME", "run"]
