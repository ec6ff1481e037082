# FocalServe developer entry points. Every target installs what is missing first.
#   make run     build and start focalserve on 127.0.0.1:50051 (ARGS="--flag=value ..." adds flags)
#   make test    install, configure, build, run every test (what CI runs)
#   make bench   CPU benchmark and PyTorch on the same shapes, side by side
#   make golden  regenerate tests/golden/data from PyTorch
BUILD_DIR ?= build
BUILD_TYPE ?= Release
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
PYTHON := /usr/bin/python3

ARGS ?=

.PHONY: all deps configure build run test bench golden clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

configure: $(BUILD_DIR)/build.ninja

build: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target focalserve
	$(BUILD_DIR)/server/focalserve $(ARGS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)
	FOCALSERVE_BINARY=$(BUILD_DIR)/server/focalserve bash scripts/python-tests.sh

bench: build
	$(PYTHON) tests/bench/torch_compare.py --cpu-bench $(BUILD_DIR)/tests/bench/cpu_bench --markdown

golden: deps
	$(PYTHON) tests/golden/generate.py

clean:
	rm -rf $(BUILD_DIR)
