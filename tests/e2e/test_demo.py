"""`edge-agent demo` as a user runs it: embedded broker, synthetic camera, the bundled model,
and the live swap to the second bundled version, all printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _have_amqtt() -> bool:
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow  # each runs the demo for its 9 s
@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_prints_detections_and_swaps_live(tmp_path: Path, broker: str, request: pytest.FixtureRequest):
    argv = [str(BIN / "edge-agent"), "demo", "--seconds", "9", "--swap-after", "3", "--http", "127.0.0.1:0"]
    if broker == "embedded":
        if not _have_amqtt():
            pytest.skip("the embedded broker needs amqtt (Python 3.10+)")
    else:  # a broker of the user's own (MQTT 5): what a Pi on Python 3.9 runs the demo with
        mosquitto = request.getfixturevalue("mosquitto")
        argv += ["--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}"]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "shapes 1.0.0 on tflite" in out and "shapes 1.1.0 on tflite" in out
    assert "deploy succeeded" in out
    assert "live view: http://127.0.0.1:" in out
    summary = json.loads(out.split("summary: ", 1)[1].splitlines()[0])
    assert summary["seq_gaps"] == []
    assert [s[2] for s in summary["switches"]] == ["1.1.0"]  # one switch, from 1.0.0 to 1.1.0
    assert summary["per_version"]["1.0.0"] > 10 and summary["per_version"]["1.1.0"] > 10
    assert list(workdir.iterdir()) == []  # the demo writes nothing where it is started
