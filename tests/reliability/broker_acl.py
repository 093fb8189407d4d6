"""The shipped broker configuration under attack (deploy/mosquitto: mutual TLS, the certificate's
CN as username and client id, the per-device ACL), on a real Mosquitto started from those very
files: one device publishing as another or reading another's commands, a dashboard publishing,
a client with no trusted certificate, and a device's certificate taking over another device's
session by client id (which used to fire the victim's ``offline`` Will and steal its commands).

The attacks are the tests in tests/agent/test_deploy_files.py that prove each rule; this scenario runs
them and counts a failed one as a breach, so the table and ``make test`` speak of one set of
checks. Wrong outcomes: *breaches* (an attack that worked), *not run* (a check skipped here)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .report import Row

NAME = "shipped broker config: ACL and client-id takeover"
CHECKS = [
    "test_device_publishes_only_under_its_own_id",
    "test_operator_commands_reach_the_device",
    "test_a_device_does_not_read_another_devices_commands",
    "test_dashboard_only_reads",
    "test_device_replies_only_under_its_own_reply_prefix",
    "test_a_device_cannot_take_over_another_devices_session",
    "test_a_devices_session_is_its_certificates",
    "test_one_certificate_is_one_connection",
    "test_no_trusted_certificate_no_connection",
]


def run(root: Path, full: bool) -> Row:
    report = root / "acl.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "tests/agent/test_deploy_files.py",
            "-k",
            " or ".join(CHECKS),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    cases = list(ET.parse(report).getroot().iter("testcase"))
    names = [case.get("name", "") for case in cases]
    ran = breached = skipped = 0
    for case in cases:
        if case.find("skipped") is not None:
            skipped += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            breached += 1
            ran += 1
        else:
            ran += 1
    # A check renamed away, skipped here, or pytest failing outside the checks is no proof.
    missing = len(CHECKS) - len({c.split("[")[0] for c in names})
    wrong = {"breaches": breached, "not run": skipped + missing, "pytest failed": int(done.returncode != 0)}
    return Row(NAME, ran, {"attacks refused": ran - breached}, wrong)
