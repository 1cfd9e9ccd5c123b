# Two entry points, each setting up what is missing on first use:
#   make quickstart   train on shipped data and run OpenMM MD
#   make test         run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hybridpot-installed

.PHONY: quickstart test test-all setup clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/hybridpot quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) build *.egg-info
