# edge-shitu — one entry point for set-up, tests, benchmarks and native builds.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
VENV_DEVICE ?= .venv-device
PY          := $(VENV)/bin/python
PY_DEVICE   := $(VENV_DEVICE)/bin/python
HOST_PY     ?= python3
ASSETS      ?= $(abspath ../shared/assets)
export EDGE_SHITU_ASSETS ?= $(ASSETS)

NATIVE_SRC  := runtimes/native/eshamming.c runtimes/native/esindex.c
NATIVE_HDR  := runtimes/native/eshamming.h runtimes/native/esindex.h
# Freestanding: the kernel calls no libc (and gcc must not invent memset/memcpy calls), so the
# same source links for Android without the NDK.
CFLAGS_NATIVE ?= -O3 -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -ffreestanding \
                 -fno-tree-loop-distribute-patterns
BUILD       := build

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environments
$(VENV)/.done: pyproject.toml scripts/find_python310.sh
	@py310=$$(scripts/find_python310.sh) || exit 1; \
	  "$$py310" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25" "setuptools<81" wheel
	$(PY) -m pip install -q -e ".[convert,tflite,dev]"
	# onnx2tf pins versions that conflict with paddleslim; tf-keras would pull full tensorflow.
	$(PY) -m pip install -q --no-deps onnx2tf==1.29.24 tf-keras==2.19.0
	@touch $@

$(VENV_DEVICE)/.done: pyproject.toml
	$(HOST_PY) -m venv $(VENV_DEVICE)
	$(PY_DEVICE) -m pip install -q --upgrade pip
	$(PY_DEVICE) -m pip install -q -e ".[tflite,dev]" "numpy>=2"
	@touch $@

.PHONY: setup setup-device
setup: $(VENV)/.done $(VENV_DEVICE)/.done native ## .venv (Python 3.10, everything) + .venv-device (runtime only, numpy 2) + native kernel

setup-device: $(VENV_DEVICE)/.done ## only the light device-runtime environment

# ---------------------------------------------------------------- native kernel
.PHONY: native cross-aarch64 cross-armhf android-libs cross
native: runtimes/lib/libeshamming.so ## build the C Hamming kernel for this machine

runtimes/lib/libeshamming.so: $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_NATIVE) -shared -o $@.tmp $(NATIVE_SRC) && mv $@.tmp $@

# ---------------------------------------------------------------- checks
.PHONY: test test-fast lint demo bench clean
lint: ## ruff
	$(PY) -m ruff check .

test: setup ## the whole test suite (numpy 1.26 venv and numpy 2 device venv)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs
	$(PY_DEVICE) -m pytest -q -rs -m "not integration" tests/test_index_format.py tests/test_search.py tests/test_hashing.py tests/test_updates.py

demo: setup ## the main job on its built-in default
	$(PY) -m edge_shitu.cli demo

bench: setup ## all benchmarks (tables on stdout, JSON in benchmarks/results/)
	$(PY_DEVICE) benchmarks/bench_index.py

clean:
	rm -rf $(BUILD) runtimes/lib
