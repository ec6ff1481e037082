# FocalServe developer entry points. Every target installs what is missing first.
#   make run     build and start focalserve on 127.0.0.1:50051 (ARGS="--flag=value ..." adds flags)
#   make test    install, configure, build, run every test: the normal build's, the deploy
#                tests, the sanitizer build's and the fuzzers for FUZZ_SECONDS each (what CI runs)
#   make test-fast      the normal build's tests only
#   make test-deploy    the container image built with Podman and run: health, bit-identical
#                       answers, drain, three replicas behind one DNS name, the manifests
#   make test-sanitize  ASan + UBSan build (clang, build-sanitize/): unit, server, integration,
#                       client and Python tests against it
#   make fuzz    the libFuzzer targets, FUZZ_SECONDS (60) each, from tests/fuzz/corpus
#   make bench   CPU benchmark and PyTorch on the same shapes, side by side
#   make golden  regenerate tests/golden/data from PyTorch
BUILD_DIR ?= build
BUILD_TYPE ?= Release
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc)
PYTHON := /usr/bin/python3

ARGS ?=

# ccache hits across clones of the repository (CI builds a fresh clone each time): paths under
# the checkout are hashed relative to it, and the directory itself is left out of the hash of
# debug builds (the sanitizer build has -g).
export CCACHE_BASEDIR ?= $(CURDIR)
export CCACHE_NOHASHDIR ?= 1

SAN_DIR ?= build-sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fsanitize=fuzzer-no-link
# Leaks: gRPC and prometheus-cpp keep process-lifetime singletons; the server exits with _Exit.
SAN_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
FUZZ_SECONDS ?= 60
FUZZERS := compute_request_fuzzer evaluate_stream_fuzzer model_infer_fuzzer

.PHONY: all deps configure build run test test-fast test-deploy test-sanitize fuzz bench golden clean

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

test: test-fast test-deploy test-sanitize fuzz

test-fast: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)
	FOCALSERVE_BINARY=$(BUILD_DIR)/server/focalserve bash scripts/python-tests.sh

# After test-fast: the image's build reuses the host build's ccache entries.
test-deploy: build
	FOCALSERVE_BINARY=$(BUILD_DIR)/server/focalserve FOCALCTL_BINARY=$(BUILD_DIR)/client/cpp/focalctl bash tests/deploy/run.sh

$(SAN_DIR)/build.ninja:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(SAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_FLAGS="$(SAN_FLAGS)" -DCMAKE_C_FLAGS="$(SAN_FLAGS)" \
	  -DFOCAL_ENABLE_CUDA=OFF -DFOCAL_BUILD_BENCHMARKS=OFF -DFOCAL_BUILD_EMULATION=OFF -DFOCAL_BUILD_FUZZERS=ON

# The emulated CUDA kernels switch stacks between fibers, which ASan cannot follow: they are
# not built here and run in the normal build only.
test-sanitize: deps $(SAN_DIR)/build.ninja
	cmake --build $(SAN_DIR) -j $(JOBS)
	cd $(SAN_DIR) && $(SAN_ENV) ctest --output-on-failure -j $(JOBS)
	$(SAN_ENV) FOCALSERVE_BINARY=$(SAN_DIR)/server/focalserve bash scripts/python-tests.sh

# The fuzzers run side by side, one a core: FUZZ_SECONDS in all, not per fuzzer.
fuzz: deps $(SAN_DIR)/build.ninja
	cmake --build $(SAN_DIR) -j $(JOBS) --target $(FUZZERS)
	@pids=""; for f in $(FUZZERS); do \
	  mkdir -p $(SAN_DIR)/fuzz/$$f/corpus $(SAN_DIR)/fuzz/$$f/crashes; \
	  echo "fuzz: $$f for $(FUZZ_SECONDS) s"; \
	  $(SAN_ENV) $(SAN_DIR)/tests/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(SAN_DIR)/fuzz/$$f/crashes/ \
	    $(SAN_DIR)/fuzz/$$f/corpus tests/fuzz/corpus/$$f 2> $(SAN_DIR)/fuzz/$$f/log.txt & pids="$$pids $$!"; \
	done; \
	failed=0; set -- $(FUZZERS); for pid in $$pids; do \
	  f=$$1; shift; \
	  if wait $$pid; then \
	    echo "fuzz: $$f: $$(grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' $(SAN_DIR)/fuzz/$$f/log.txt | tr '\n' ' ')"; \
	  else \
	    tail -60 $(SAN_DIR)/fuzz/$$f/log.txt; echo "fuzz: $$f found a crash (above; input in $(SAN_DIR)/fuzz/$$f/crashes)"; failed=1; \
	  fi; \
	done; exit $$failed

bench: build
	$(PYTHON) tests/bench/torch_compare.py --cpu-bench $(BUILD_DIR)/tests/bench/cpu_bench --markdown

golden: deps
	$(PYTHON) tests/golden/generate.py

clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR)
