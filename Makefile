# Every target sets up what it needs: a fresh clone only needs `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit lint bench soak install system-deps clean runbook image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@scripts/system-deps.sh

run: $(STAMP) system-deps
	$(BIN)/kuberde up

test: $(STAMP)
	@scripts/system-deps.sh --tests
	$(BIN)/python -m pytest -q

# The fast tier: no system packages needed.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The runbook's commands, verbatim, with the real kubectl against the emulated cluster; prints
# a table: section, command, holds / why not.
runbook: $(STAMP)
	@scripts/system-deps.sh --tests
	$(BIN)/python -m pytest -q tests/runbook

# The one image of every component, under the tags the manifests use.
image:
	docker build -f deploy/Dockerfile -t soloking/kuberde-operator:v2.1 -t kuberde/kuberde:0.1.0 .

bench: $(STAMP) system-deps
	$(BIN)/python -m bench $(ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
