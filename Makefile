# Every target sets up its own virtual environment (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest
FIRMWARE_DIR ?= ../shared/firmware

.PHONY: venv test test-4mb test-16mb lint bench-boot bench-ota clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## the whole test suite (emulation tests skip with a reason when QEMU is missing)
test: venv
	$(PYTEST) -q

## the 16MB emulation job: the images users make with -f 16M --resize vfs=0
test-16mb: venv
	$(PYTEST) -q -m 16mb

test-4mb: venv
	$(PYTEST) -q -m 4mb

lint: venv
	$(BIN)/ruff check harness tests bench conftest.py
	$(BIN)/ruff format --check harness tests bench conftest.py

bench-boot: venv
	$(BIN)/python bench/boot.py --firmware-dir $(FIRMWARE_DIR)

bench-ota: venv
	$(BIN)/python bench/ota.py --firmware-dir $(FIRMWARE_DIR)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
