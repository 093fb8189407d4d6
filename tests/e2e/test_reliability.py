"""The reliability suite's quick form (tests/reliability): every scenario, every wrong-outcome
count 0. ``make reliability`` runs the full form and writes docs/reliability.md."""

from __future__ import annotations

import pytest

from tests.reliability.__main__ import SCENARIOS, run_one


@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_has_no_wrong_outcome(name: str) -> None:
    row = run_one(name, full=False)
    assert row.trials > 0, row
    assert row.wrong_total == 0, f"{row.scenario}: {row.wrong} ({row.figures})"
