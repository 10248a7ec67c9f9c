# Every target sets up its own virtual environment (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest
# A folder of firmware files looked in before the user cache and micropython.org
# (empty: the cache, then downloads). This project's CI passes its own (.ci/run).
FIRMWARE_DIR ?=
ifneq ($(strip $(FIRMWARE_DIR)),)
export HARNESS_FIRMWARE_DIR := $(abspath $(FIRMWARE_DIR))
endif
# One worker per core. Builds measured to stall when the host is shared (ESP-IDF before
# v5.0.4: v1.20.0, v1.21.0 SPIRAM) take the host to themselves (harness/hostlock.py).
WORKERS ?= $(shell $(PYTHON) -c "import os; print(os.cpu_count() or 1)")
# Retries: a scenario cell, or a test that boots QEMU, is run again when the emulator failed
# it (QEMU crashed itself, a watchdog fired because the host starved QEMU, QEMU shows the
# guest stuck); which errors, and how often for builds that stall, is the run policy's
# (harness/emulator/policy.py). Every retry is listed in the summary and in JUnit.
# RETRIES=0 turns every retry off.
RETRIES ?= 1
RUN = $(PYTEST) -q -n $(WORKERS) --retries $(RETRIES)
# The main job gets what it needs first, or stops with one line saying what is missing.
PROVISION := $(BIN)/harness provision scenarios

.PHONY: venv test test-4mb test-16mb test-matrix test-upgrades test-reliability test-docker \
	test-powerloss test-network test-qemu-install lint test-nightly test-ci-workflow \
	docs bench-boot \
	bench-ota \
	bench-suite bench-memory bench-reset bench-powercut bench-stalls bench-network clean docker-build docker-test-4mb docker-test-16mb

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## the project's tests and the scenario library (emulation skips with a reason without QEMU);
## the 15 slowest are listed at the end, for keeping it within its 15 minutes on 2 cores
test: venv
	$(RUN) --timeout 600 --durations 15 -m "not slow and not docker and not build" \
	  --ignore=scenarios/power-loss \
	  --ignore=scenarios/network

## the main job: the scenario library on 16MB images (-f 16M --resize vfs=0 where there is a vfs line)
test-16mb: venv
	$(PROVISION) --flash-size 16MB
	$(RUN) scenarios --flash-size 16MB --ignore=scenarios/power-loss --ignore=scenarios/network

test-4mb: venv
	$(PROVISION) --flash-size 4MB
	$(RUN) scenarios --flash-size 4MB --ignore=scenarios/power-loss --ignore=scenarios/network

## every scenario x every size x every firmware file in FIRMWARE_DIR (else every pinned release);
## cells that cannot apply skip with the reason. Builds before ESP-IDF 5.0.4 (v1.20.0, v1.21.0)
## deadlock in QEMU 8.0 now and then, even on a quiet host (docs/known-behaviour.md): the run
## policy gives them more attempts wherever retries are on.
test-matrix: venv
	fw="$$(if [ -n "$(HARNESS_FIRMWARE_DIR)" ]; then \
	    for f in $(HARNESS_FIRMWARE_DIR)/*.bin; do echo "--firmware $$f"; done; \
	  else $(BIN)/harness firmware list --pinned --ids | sed 's/^/--firmware /'; fi)"; \
	$(PROVISION) $$fw && $(RUN) scenarios $$fw

## the upgrade grid: every pinned release with a file at hand (FIRMWARE_DIR, the cache) as the
## release a board was flashed with, every later one as its update, at 4MB and 16MB
## (scenarios/upgrade/upgrade.yaml, one cell per pair); report.html draws it from x to.
## A "no" square is a finding (docs/upgrades.md), and fails the job like any cell.
UPGRADES = $(BIN)/harness firmware list --pinned --at-hand --ids | sed 's/.*/--firmware & --update &/'
test-upgrades: venv
	fw="$$($(UPGRADES))"; \
	$(BIN)/harness provision scenarios/upgrade/upgrade.yaml $$fw && \
	$(RUN) scenarios/upgrade/upgrade.yaml $$fw

## power cuts swept over updates and file writes (scenarios/power-loss), both sizes
test-powerloss: venv
	$(BIN)/harness provision scenarios/power-loss
	$(RUN) scenarios/power-loss tests/test_powercut_exact.py tests/test_verdict.py

## updates over Wi-Fi from the host's HTTP server (scenarios/network): the Wi-Fi QEMU
## (docs/network.md); without it, every cell skips with the reason
test-network: venv
	$(BIN)/harness provision scenarios/network
	$(RUN) scenarios/network

## `harness qemu install --wifi` for real: the Wi-Fi QEMU built from its source archive (made
## from QEMU_WIFI_GIT and KEYCODEMAPDB_GIT, git directories of github:esp32-open-mac/qemu and
## github:qemu/keycodemapdb, served on loopback) into a fresh tools folder, then a network
## cell on it; minutes of compiling, so nothing else should run meanwhile
test-qemu-install: venv
	$(PYTEST) -q -s -m build tests/test_qemu_install.py

## the long runs: 120 kills, 40 repeats of the starting report, host load, the report with
## mpremote moving every byte, the user's library on today's release (about 50 min)
test-reliability: venv
	$(PYTEST) -q -s -m "slow and not docker" tests

## Docker: Espressif's pinned QEMU release inside; build args come from harness/sources/downloads.py.
## Docker, or podman where there is no docker (DOCKER=podman to choose it).
DOCKER ?= $(shell docker info >/dev/null 2>&1 && echo docker || \
	(command -v podman >/dev/null 2>&1 && echo podman) || echo docker)
DOCKER_IMAGE ?= esp32-ota-harness
# more build options, e.g. a base image from a registry mirror: --build-arg BASE=...
DOCKER_BUILD_ARGS ?=
DOCKER_FIRMWARE = $(if $(HARNESS_FIRMWARE_DIR),-v $(HARNESS_FIRMWARE_DIR):/firmware:ro,)
DOCKER_RUN = $(DOCKER) run --rm --user $$(id -u):$$(id -g) $(DOCKER_FIRMWARE) \
	-v $(CURDIR)/artifacts:/artifacts $(DOCKER_IMAGE)

docker-build: venv
	$(DOCKER) build -f docker/Dockerfile -t $(DOCKER_IMAGE) $$($(BIN)/python -c \
	  "from harness.sources.downloads import docker_build_args as a; print(' '.join(f'--build-arg {k}={v}' for k, v in a().items()))") \
	  $(DOCKER_BUILD_ARGS) .

docker-test-16mb docker-test-4mb: docker-test-%:
	mkdir -p artifacts
	$(DOCKER_RUN) run /scenarios --flash-size $* --retries $(RETRIES) \
	  --artifacts /artifacts --junit /artifacts/junit-$*.xml

## the real docker/Dockerfile built with docker or podman and the 16MB library run inside it;
## offline, stand-ins for the base image, the QEMU release and the Wi-Fi QEMU's source (made
## from QEMU_WIFI_GIT and KEYCODEMAPDB_GIT, as for test-qemu-install; named in the output)
test-docker: venv
	DOCKER=$(DOCKER) $(PYTEST) -q -s -m docker tests/test_docker.py

## .github/workflows/nightly.yml itself, run here with act (image, matrix, report), then checked:
## every job ran the library in a container, its artifacts, report.html in Chromium, the
## summaries. NIGHTLY_RELEASES (default v1.25.0; "all": the manifest's nightly list),
## NIGHTLY_SIZES, NIGHTLY_SCENARIOS, NIGHTLY_EXTRA (e.g. tests/nightly/fails-on-purpose.yaml)
NIGHTLY_RELEASES ?= v1.25.0
NIGHTLY_SIZES ?= 4MB 16MB
NIGHTLY_SCENARIOS ?= /scenarios /scenarios/power-loss
NIGHTLY_EXTRA ?=
test-nightly: venv
	$(BIN)/python tools/run_workflow.py nightly --releases "$(NIGHTLY_RELEASES)" \
	  --sizes "$(NIGHTLY_SIZES)" --scenarios "$(NIGHTLY_SCENARIOS)" --extra "$(NIGHTLY_EXTRA)"

## .github/workflows/ci.yml's lint and tests jobs, run here with act (CI_JOBS to choose)
CI_JOBS ?= lint tests
test-ci-workflow: venv
	$(BIN)/python tools/run_workflow.py ci $(addprefix --job ,$(CI_JOBS))

lint: venv
	$(BIN)/ruff check harness tests bench tools conftest.py images
	$(BIN)/ruff format --check harness tests bench tools conftest.py images
	$(BIN)/mypy harness
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint docker/Dockerfile; fi

## the step reference in docs/scenarios.md, made from the step formats (a test checks it)
docs: venv
	$(BIN)/python -c "from pathlib import Path; from harness.scenario.reference import with_reference as w; p = Path('docs/scenarios.md'); p.write_text(w(p.read_text()))"

bench-boot: venv
	$(BIN)/python bench/boot.py

bench-ota: venv
	$(BIN)/python bench/ota.py

bench-suite: venv
	$(BIN)/python bench/suite.py

bench-memory: venv
	$(BIN)/python bench/memory.py

bench-reset: venv
	$(BIN)/python bench/reset.py

bench-powercut: venv
	$(BIN)/python bench/powercut.py --sweep 20

## the device's download speed over the Wi-Fi QEMU, a network cell against a staged one
bench-network: venv
	$(BIN)/python bench/network.py

## the old builds booted 30 times each through make test's waits: every stall named?
bench-stalls: venv
	$(BIN)/python bench/stalls.py --repeat 30

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info artifacts
