"""The reliability suite (issue 8): edgewatch tried as a hostile environment would try it, each
scenario against a real Mosquitto and a real HTTP/S3 endpoint on loopback, counting what went
wrong. ``make test`` runs every scenario in its quick form (tests/e2e/test_reliability.py) and
fails on any wrong outcome; ``make reliability`` runs the full form and prints the table that
docs/reliability.md holds.

A scenario is a module in this package with ``NAME`` and ``run(root, full) -> Row``."""
