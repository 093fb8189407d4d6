"""One row per scenario: what was tried, what was measured, and the wrong outcomes, each of
which must be 0."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Union

Figure = Union[int, float, str]


@dataclass
class Row:
    scenario: str
    trials: int
    figures: Dict[str, Figure] = field(default_factory=dict)  # what was measured
    wrong: Dict[str, int] = field(default_factory=dict)  # each a count of wrong outcomes
    seconds: float = 0.0

    @property
    def wrong_total(self) -> int:
        return sum(self.wrong.values())


def _cell(values: Dict[str, Figure]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def table(rows: List[Row]) -> str:
    lines = [
        "| scenario | trials | measured | wrong outcomes | total wrong | s |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.trials} | {_cell(r.figures)} | {_cell(dict(r.wrong))} | "
            f"{r.wrong_total} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def document(rows: List[Row], command: str, platform: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "# Reliability\n\n"
        "What `make reliability` measured: each scenario tries edgewatch as a hostile environment "
        "would, against a real Mosquitto and a real HTTP/S3 endpoint on loopback, and counts the "
        "outcomes that must never happen. Every count in *wrong outcomes* must be 0; `make test` "
        "runs the same scenarios in a quick form and fails on any.\n\n"
        f"Made by `{command}` on {when}, {platform}.\n\n" + table(rows) + "\n"
    )
