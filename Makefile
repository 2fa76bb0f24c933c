# nvfp4-scalesweep. Quick start (fresh Debian 12, as root):  make demo   |   make test
BUILD_DIR ?= build
BUILD_TYPE ?= Release
# CI and dev builds compile CUDA for sm_90 only; `make release` builds every architecture.
CUDA_ARCHS ?= 90
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test demo bench bench-checkpoint format clean release

all: build

deps:
	@scripts/deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)" $(CMAKE_FLAGS)

configure: $(BUILD_DIR)/build.ninja

build: deps configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

demo: build
	@scripts/demo.sh $(BUILD_DIR)

bench: build
	$(BUILD_DIR)/bin/nvfp4q bench --threads 1,$(JOBS)

# Checkpoint throughput: a 2.3 GB (2.14 GiB) bf16 checkpoint embedded, through nvfp4d, and streamed.
bench-checkpoint: build
	@scripts/bench_checkpoint.sh $(BUILD_DIR)

release:
	$(MAKE) build BUILD_DIR=build-release CUDA_ARCHS="80;90;100;120"

format:
	git ls-files '*.h' '*.cc' '*.cu' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR) build-release
