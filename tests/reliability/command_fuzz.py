"""Generated hostile command payloads (hypothesis; SPEC §5), in two parts:

1. through the agent's own command path (tests/fuzz_commands.py: the real MQTT link callback,
   checker and handler, with the deploy slot busy), 10,000 payloads in the full form, checking
   every rule on each: an answer for every readable id and only for it, exactly one final, strict
   UTF-8 JSON results, nothing published outside ``P/D/cmd/result`` (a Response Topic only for a
   verified signature, under ``P/D/cmd/result/``), no traceback or error logged;
2. over a real Mosquitto into a running ``edge-agent run`` (2,000 payloads in the full form):
   every readable id answered, no traceback in its log, its RSS before and after, and frames still
   flowing at the end (after a genuine ``resume``: a fuzzed, correctly signed ``pause`` is obeyed,
   as it should be).

Wrong outcomes: the fuzz path's own (unanswered ids, wrong answers, unencodable results, stray
topics, errors, tracebacks) and, live, *unanswered ids*, *tracebacks*, *agent died*, *frames
stopped*."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Set

from hypothesis import HealthCheck, Phase, given, settings

from edge_agent.bundle.signing import generate_keypair, load_private_key
from tests.agent_world import DEVICE, V1, World, make_world
from tests.command_rig import expected_id
from tests.fuzz_commands import payloads, run_fuzz
from tests.waiting import wait_for

from .report import Row

NAME = "generated command payloads (hypothesis)"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _frames(world: World) -> int:
    return int(world.final(world.command("status"))["data"]["frames"])


def _live(root: Path, examples: int, figures: Dict[str, object], wrong: Dict[str, int]) -> None:
    with make_world(root) as world:
        stranger, _ = generate_keypair()
        (root / "stranger.key").write_bytes(stranger)
        keys = [load_private_key(world.root / "op.key"), load_private_key(root / "stranger.key")]
        world.agent.start()
        world.serving(V1)
        assert world.agent.proc is not None
        pid = world.agent.proc.pid
        rss_before = _rss_mb(pid)
        ids: List[str] = []

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate,),
        )
        @given(payload=payloads(keys, targets=(DEVICE, "lab")))
        def send(payload: bytes) -> None:
            world.publish_command(payload)
            readable = expected_id(payload)
            if readable is not None:
                ids.append(readable)

        send()
        unique: Set[str] = set(ids)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(world.results(i) for i in unique), 120, "answers to every readable id")
        wrong["live: unanswered ids"] = sum(1 for i in unique if not world.results(i))
        if not world.agent.alive():
            wrong["live: agent died"] = 1
            return
        rss_after = _rss_mb(pid)
        world.final(world.command("resume"))
        before = _frames(world)
        try:
            wait_for(lambda: _frames(world) > before + 5, 30, "frames after the fuzz")
        except AssertionError:
            wrong["live: frames stopped"] = 1
        world.agent.stop()
        log = world.agent.log.read_text(errors="replace")
        wrong["live: tracebacks"] = log.count("Traceback (most recent call last)")
        figures.update(
            {
                "live payloads": examples,
                "live readable ids": len(unique),
                "RSS MB before": round(rss_before, 1),
                "after": round(rss_after, 1),
            }
        )


def run(root: Path, full: bool) -> Row:
    counts = run_fuzz(10_000 if full else 300, root / "rig", derandomize=not full)
    figures: Dict[str, object] = {
        "payloads": counts.payloads,
        "readable ids": counts.readable_ids,
        "rejected": counts.rejected,
        "accepted": counts.accepted,
        "drop-log lines": counts.drop_log_lines,
    }
    wrong = {
        "unanswered ids": counts.unanswered_ids,
        "wrong answers": counts.wrong_answers,
        "unencodable": counts.unencodable_results,
        "stray topics": counts.stray_topics,
        "errors logged": counts.errors,
        "tracebacks": counts.tracebacks,
    }
    for failure in counts.failures:
        print(f"command_fuzz: {failure}")
    live = 2000 if full else 100
    _live(root / "live", live, figures, wrong)
    return Row(NAME, counts.payloads + live, figures, wrong)  # type: ignore[arg-type]
