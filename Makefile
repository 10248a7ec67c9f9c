# Every target sets up its own virtual environment (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest
FIRMWARE_DIR ?= ../shared/firmware
# Two emulations at once on a 2-core host starve each other and fire guest watchdogs
# (QEMU's guest clock follows the host's): one worker per two cores.
WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 2) // 2))")
# A cell whose QEMU crashed itself (QEMU 8.0's MTTCG assertion) or whose guest watchdog
# fired because the host starved QEMU is run once more; every retry is listed in the
# summary and in the JUnit properties. RETRIES=0 turns it off.
RETRIES ?= 1
export HARNESS_FIRMWARE_DIR := $(abspath $(FIRMWARE_DIR))
RUN := $(PYTEST) -q -n $(WORKERS) --retries $(RETRIES)

.PHONY: venv test test-4mb test-16mb test-matrix test-reliability lint bench-boot bench-ota bench-suite bench-memory clean \
	docker-build docker-test-4mb docker-test-16mb

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## the whole test suite and the scenario library (emulation skips with a reason without QEMU)
test: venv
	$(RUN) -m "not slow"

## the scenario library (and 16MB tests) on 16MB images, as users make them (-f 16M --resize vfs=0)
test-16mb: venv
	$(RUN) -m 16mb

test-4mb: venv
	$(RUN) -m 4mb

## the long loops: 120 kills, 40 repeats of the starting report, host load (about 30 min)
test-reliability: venv
	$(PYTEST) -q -s -m slow tests/test_reliability.py

## every scenario x every size x every firmware in FIRMWARE_DIR (cells that cannot apply skip)
test-matrix: venv
	$(RUN) scenarios $(foreach f,$(wildcard $(HARNESS_FIRMWARE_DIR)/*.bin),--firmware $(f))

## Docker: Espressif's pinned QEMU release inside; build args come from harness/downloads.py
DOCKER_IMAGE ?= esp32-ota-harness
DOCKER_RUN = docker run --rm --user $$(id -u):$$(id -g) \
	-v $(HARNESS_FIRMWARE_DIR):/firmware:ro -v $(CURDIR)/artifacts:/artifacts $(DOCKER_IMAGE)

docker-build: venv
	docker build -f docker/Dockerfile -t $(DOCKER_IMAGE) $$($(BIN)/python -c \
	  "from harness.downloads import docker_build_args as a; print(' '.join(f'--build-arg {k}={v}' for k, v in a().items()))") .

docker-test-16mb docker-test-4mb: docker-test-%:
	mkdir -p artifacts
	$(DOCKER_RUN) run /scenarios --flash-size $* --retries $(RETRIES) \
	  --artifacts /artifacts --junit /artifacts/junit-$*.xml

lint: venv
	$(BIN)/ruff check harness tests bench conftest.py
	$(BIN)/ruff format --check harness tests bench conftest.py
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	if [ -x $(BIN)/hadolint ]; then $(BIN)/hadolint docker/Dockerfile; fi

bench-boot: venv
	$(BIN)/python bench/boot.py --firmware-dir $(FIRMWARE_DIR)

bench-ota: venv
	$(BIN)/python bench/ota.py --firmware-dir $(FIRMWARE_DIR)

bench-suite: venv
	$(BIN)/python bench/suite.py

bench-memory: venv
	$(BIN)/python bench/memory.py --firmware-dir $(FIRMWARE_DIR)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info artifacts
