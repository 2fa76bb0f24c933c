# nvfp4-scalesweep. Quick start (fresh Debian 12, as root):  make demo   |   make test
BUILD_DIR ?= build
BUILD_TYPE ?= Release
# CI and dev builds compile CUDA for sm_90 only; `make release` builds every architecture.
CUDA_ARCHS ?= 90
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# libFuzzer build (clang, ASan+UBSan): its smoke run is part of `make test` (docs/testing.md).
FUZZ_DIR ?= build-fuzz

.PHONY: all deps configure build test demo bench bench-checkpoint format clean release \
	build-fuzz fuzz-smoke fuzz test-sanitizers test-asan test-tsan bench-python-client

all: build

deps:
	@scripts/deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)" $(CMAKE_FLAGS)

configure: $(BUILD_DIR)/build.ninja

build: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Every CTest test of $(BUILD_DIR), then, in the CI's sanitizer build, the fuzzers' smoke runs
# and the GPU tests that run on the host (labels device_code and simulated: docs/testing.md).
test: build build-fuzz
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)
	cd $(FUZZ_DIR) && ctest -L '^(fuzz|device_code|simulated)$$' --output-on-failure -j $(JOBS)

# Fuzzing (tests/fuzz, docs/testing.md): only the fuzzers and the libraries they need.
$(FUZZ_DIR)/build.ninja:
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DNVFP4_CUDA=OFF -DNVFP4_FUZZ=ON

build-fuzz: deps $(FUZZ_DIR)/build.ninja
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target nvfp4_fuzzers gpu_host_tests

fuzz-smoke: build-fuzz
	cd $(FUZZ_DIR) && ctest -L fuzz --output-on-failure -j $(JOBS)

# Long run: 10M executions per fuzzer (FUZZ_RUNS, FUZZ_JOBS: scripts/fuzz.sh).
fuzz: build-fuzz
	FUZZ_DIR=$(FUZZ_DIR) JOBS=$(JOBS) scripts/fuzz.sh

# ASan+UBSan unit/service tests (build-asan) and TSan scheduler tests (build-tsan).
test-sanitizers: deps
	JOBS=$(JOBS) scripts/sanitizers.sh asan tsan

test-asan: deps
	JOBS=$(JOBS) scripts/sanitizers.sh asan

test-tsan: deps
	JOBS=$(JOBS) scripts/sanitizers.sh tsan

demo: build
	@scripts/demo.sh $(BUILD_DIR)

bench: build
	$(BUILD_DIR)/bin/nvfp4q bench --threads 1,$(JOBS)

# Checkpoint throughput: a 2.3 GB (2.14 GiB) bf16 checkpoint embedded, through nvfp4d, and streamed.
bench-checkpoint: build
	@scripts/bench_checkpoint.sh $(BUILD_DIR)

# The Python client (client/python, installed into $(BUILD_DIR)/python) against nvfp4q.
bench-python-client: build
	.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
	  --upgrade --target $(BUILD_DIR)/python ./client/python
	PYTHONPATH=$(BUILD_DIR)/python .venv/bin/python scripts/bench_python_client.py \
	  --bin $(BUILD_DIR)/bin

release:
	$(MAKE) build BUILD_DIR=build-release CUDA_ARCHS="80;90;100;120"

format:
	git ls-files '*.h' '*.cc' '*.cu' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR) build-release
