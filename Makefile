# Two entry points for a fresh machine (Linux x86_64, Python 3.11 + pip): `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision pinned to the builds served from local disk here; a range resolves elsewhere.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the side-by-side speed benchmark of the study's models on this machine.
run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/satunet models
	HF_HUB_OFFLINE=1 $(BIN)/satunet benchmark --size 256 --batch-size 2 --rounds 3 --out runs/benchmark

## The default test suite (slow tests deselected in pyproject.toml).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m 'slow or not slow'

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info
