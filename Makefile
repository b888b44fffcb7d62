# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+, no network at run time).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all bench clean

$(BIN)/rmt: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pinned CPU torch first: an unpinned torch pulls a CUDA build of several GB
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/rmt

setup: $(BIN)/rmt

demo: setup
	$(BIN)/rmt demo

test: setup
	$(BIN)/pytest -q -m "not pretrained"

test-all: setup
	$(BIN)/pytest -q

bench: setup
	# the peer implementation, without letting it touch the pinned torch
	$(BIN)/pip install -q --no-deps recurrent-memory-transformer-pytorch einops hyper-connections torch-einops-utils
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
