# CPU image of nvfp4d and nvfp4q (Debian 12). The multi-stage CUDA image (CUDA devel to build,
# CUDA runtime to run, HEALTHCHECK through grpc.health.v1) comes with the operations milestone.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends make sudo ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN NVFP4_DEPS_NO_VENV=1 scripts/deps.sh && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNVFP4_CUDA=OFF \
    && cmake --build build --target nvfp4d nvfp4q

FROM debian:12-slim
# Exactly the shared libraries nvfp4d and nvfp4q link (ldd of the build).
RUN apt-get update && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libgrpc++1.51 libgrpc29 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprotobuf32 libre2-9 libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 nvfp4
COPY --from=build /src/build/bin/nvfp4d /src/build/bin/nvfp4q /usr/local/bin/
USER nvfp4
EXPOSE 50051 9400
ENTRYPOINT ["/usr/local/bin/nvfp4d", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9400"]
