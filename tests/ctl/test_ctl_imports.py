"""edge-ctl is the operator's tool: importing it, and running its subcommands, loads nothing of
the device (numpy, OpenCV, the decoders, backends and sources, the agent's MQTT link and SQLite
outbox, the store) and nothing of cloud_trainer. Each check runs edge-ctl in a fresh interpreter
and looks at ``sys.modules`` when it ends, so that imports inside functions count too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List, Sequence

import pytest

from tests.mosquitto import Mosquitto
from tests.s3server import S3

ROOT = Path(__file__).resolve().parents[2]

# Modules (and their submodules) that only the device or the trainer has any use for.
NOT_FOR_THE_OPERATOR = (
    "numpy",
    "cv2",
    "edge_agent.decoders",
    "edge_agent.bundle.loader",
    "edge_agent.backends",
    "edge_agent.sources",
    "edge_agent.preprocess",
    "edge_agent.detector",
    "edge_agent.mqtt.link",
    "edge_agent.mqtt.outbox",
    "edge_agent.store",
    "edge_agent.service",
    "edge_agent.demo",
    "cloud_trainer",
)

# Runs edge-ctl's main() with argv[2:], then writes the names in sys.modules to the file argv[1].
RUN_CTL = """
import json, sys
from edge_agent.ctl import main
try:
    status = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(status)
"""


def carried(modules: Iterable[str], allowed: Sequence[str] = ()) -> List[str]:
    """The modules of ``NOT_FOR_THE_OPERATOR`` (less ``allowed``) among ``modules``."""
    unwanted = [m for m in NOT_FOR_THE_OPERATOR if m not in allowed]
    return sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in unwanted))


def modules_after_ctl(tmp_path: Path, *argv: str, status: int = 0) -> List[str]:
    """Run ``edge-ctl ARGV`` in a fresh interpreter; the modules it had loaded when it ended."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CTL, str(out), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    modules: List[str] = json.loads(out.read_text())
    return modules


def test_importing_edge_ctl_loads_nothing_of_the_device() -> None:
    code = (
        "import json, sys, edge_agent.ctl.cli, edge_agent.ctl;"
        "assert 'numpy' not in sys.modules and 'cv2' not in sys.modules;"
        "print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert carried(json.loads(proc.stdout)) == []


def test_the_broker_commands_load_nothing_of_the_device(tmp_path: Path, mosquitto: Mosquitto) -> None:
    broker = ["--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--prefix", "imports"]
    assert carried(modules_after_ctl(tmp_path, "keygen", str(tmp_path / "operator"))) == []
    key = str(tmp_path / "operator.key")
    manifest = "s3://models/shapes/1.4.0/manifest.json"
    deploy = ["deploy", "--device", "pi-01", manifest, "--sha256", "0" * 64, "--key", key]
    assert carried(modules_after_ctl(tmp_path, *broker, *deploy)) == []
    assert carried(modules_after_ctl(tmp_path, *broker, "set", "--group", "g", "score_threshold=0.5")) == []
    # --wait follows the results until the timeout (no device answers here: exit 2)
    wait = ["status", "--device", "pi-01", "--key", key, "--wait", "--timeout", "0.5"]
    assert carried(modules_after_ctl(tmp_path, *broker, *wait, status=2)) == []
    assert carried(modules_after_ctl(tmp_path, *broker, "watch", "--count", "0")) == []


def test_the_s3_paths_of_deploy_load_nothing_of_the_device(
    tmp_path: Path, mosquitto: Mosquitto, s3: S3
) -> None:
    pytest.importorskip("tqdm")  # publish's progress bar
    from cloud_trainer.publish import publish
    from tests.trainer.test_publish import make_bundle

    published = publish(make_bundle(tmp_path / "b"), s3.uri("models"), client=s3.client, channel="stable")
    broker = ["--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--prefix", "imports"]
    deploy = ["deploy", "--device", "pi-01", "--endpoint-url", s3.endpoint_url]

    channel = s3.uri("models/shapes/channels/stable.json")
    modules = modules_after_ctl(tmp_path, *broker, *deploy, channel)
    assert "boto3" in modules and carried(modules) == []

    # --presign checks the manifest as the device would, decoder params included: the device's
    # own parser, with the decoders' numpy. Nothing else of the device comes with it.
    modules = modules_after_ctl(tmp_path, *broker, *deploy, published.manifest, "--presign")
    assert carried(modules, allowed=("numpy", "edge_agent.decoders", "edge_agent.bundle.loader")) == []


def test_nothing_in_edge_agent_imports_cloud_trainer() -> None:
    """The device installs and runs without the trainer (only the demo's bundles were made by it)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "edge_agent").rglob("*.py"))
        if any(
            line.lstrip().startswith(("import cloud_trainer", "from cloud_trainer"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []
