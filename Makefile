# edgewatch: `make test` and `make demo` do all of their own set-up on a fresh Debian or
# Raspberry Pi OS machine (apt packages when missing, then a virtualenv in .venv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# The model files the tests run, shipped (remade by `python -m tests.models.build`, see its README).
TEST_MODELS := tests/fixtures/models

# libsystemd-dev and pkg-config build systemd-python (the `pi` and `dev` extras)
APT_PACKAGES := mosquitto shellcheck openssl libsystemd-dev pkg-config

.PHONY: test lint typecheck pytest venv apt demo clean test-py39 check-ov2022 bench reliability

test: venv lint typecheck pytest

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml | apt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(PY) -m pytest -q

# The whole loop on this machine: embedded broker, synthetic camera, live swap (SPEC §8).
demo: venv
	$(VENV)/bin/edge-agent demo

# The benchmark suite (issue 11): the service against the raw inference loop and the naive
# one-thread loop, latency, memory, start-up, a deploy's gap, a simulated off-CPU accelerator, the
# trainer. Prints the tables and writes them, with the machine's description, to
# docs/benchmarks.md. About 10 minutes on 2 cores; nothing in it is asserted.
bench: venv
	$(PY) -m benchmarks --out docs/benchmarks.md --json docs/benchmarks.json

# Hostile input, crashes and outages, each against a real Mosquitto and S3/HTTP on loopback: the
# full form of tests/reliability (make test runs the quick one). Prints the table, writes
# docs/reliability.md, fails on any wrong outcome. About 10 minutes on 2 cores; the full-disk
# case mounts a tmpfs, so run it as root (elsewhere that case says it was skipped).
reliability: venv
	$(PY) -m tests.reliability --out docs/reliability.md

# The device runtime on Python 3.9 with tflite-runtime (no TensorFlow), on the shipped test models.
test-py39:
	scripts/test-py39.sh

# Exported IR (a trained model's and an imported darknet Tiny YOLOv2's) loads and matches in
# OpenVINO 2022.3 LTS (the last release with the NCS2 plugin).
check-ov2022: venv
	scripts/check-ov2022.sh

clean:
	rm -rf $(VENV) .cache .venv-py39 .venv-ov2022 *.egg-info
