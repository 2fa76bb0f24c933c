# nvfp4d and nvfp4q container images, on Debian 12 (the distribution CI builds and tests on).
#
#   docker build -t nvfp4-scalesweep/nvfp4d:0.1.0 .                      # CUDA (sm_80/90/100/120)
#   docker build --build-arg CUDA=0 -t nvfp4-scalesweep/nvfp4d:0.1.0-cpu .   # CPU only
#   docker run --gpus all -p 50051:50051 -p 9400:9400 -v /models:/models:ro -v /out:/outputs \
#       nvfp4-scalesweep/nvfp4d:0.1.0 --allowed-root /models --allowed-root /outputs
#
# NVIDIA publishes CUDA container images for Ubuntu and RHEL only, so the "CUDA devel" build stage
# and the "CUDA runtime" final stage take CUDA from NVIDIA's Debian 12 repository: nvcc and the
# runtime headers to build, libcudart alone to run (the driver comes from the NVIDIA container
# toolkit at run time). The final image holds the two binaries, the shared libraries they link
# and nothing else; it runs as an unprivileged user and checks itself through grpc.health.v1.
ARG CUDA=1
ARG CUDA_VERSION=12-8
ARG CUDA_ARCHS="80;90;100;120"

# ---------------------------------------------------------------------------------------------
FROM debian:12 AS build-base
RUN apt-get update && apt-get install -y --no-install-recommends \
      make sudo ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*

FROM build-base AS build-cuda-0

FROM build-base AS build-cuda-1
ARG CUDA_VERSION
RUN wget -q https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
    && dpkg -i cuda-keyring_1.1-1_all.deb && rm cuda-keyring_1.1-1_all.deb \
    && apt-get update && apt-get install -y --no-install-recommends \
      cuda-nvcc-${CUDA_VERSION} cuda-cudart-dev-${CUDA_VERSION} \
    && rm -rf /var/lib/apt/lists/*

FROM build-cuda-${CUDA} AS build
ARG CUDA
ARG CUDA_VERSION
ARG CUDA_ARCHS
WORKDIR /src
COPY . .
RUN NVFP4_DEPS_NO_VENV=1 scripts/deps.sh \
    && if [ "$CUDA" = 1 ]; then \
         cuda_flags="-DNVFP4_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda-$(echo "$CUDA_VERSION" | tr - .)/bin/nvcc -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}"; \
       else \
         cuda_flags="-DNVFP4_CUDA=OFF"; \
       fi \
    && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release $cuda_flags \
    && cmake --build build --target nvfp4d nvfp4q \
    && strip build/bin/nvfp4d build/bin/nvfp4q

# ---------------------------------------------------------------------------------------------
FROM debian:12-slim AS runtime-base
# Exactly the shared libraries nvfp4d and nvfp4q link (ldd of the build).
RUN apt-get update && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libgrpc++1.51 libgrpc29 libxxhash0 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprotobuf32 libre2-9 libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin nvfp4

FROM runtime-base AS runtime-cuda-0

FROM runtime-base AS runtime-cuda-1
ARG CUDA_VERSION
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/
RUN dpkg -i /tmp/cuda-keyring_1.1-1_all.deb && rm /tmp/cuda-keyring_1.1-1_all.deb \
    && apt-get update && apt-get install -y --no-install-recommends cuda-cudart-${CUDA_VERSION} \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-cuda-${CUDA}
COPY --from=build /src/build/bin/nvfp4d /src/build/bin/nvfp4q /usr/local/bin/
USER 10001:10001
EXPOSE 50051 9400
# Readiness of the Quantizer service (NOT_SERVING while draining); the CLI exits 0 on SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/nvfp4q", "health", "--server", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["/usr/local/bin/nvfp4d", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9400"]
