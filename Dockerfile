# Minimal build image (CPU engine and nvfp4q). The multi-stage CUDA image with nvfp4d comes with
# the operations milestone.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends make sudo ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/deps.sh && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNVFP4_CUDA=OFF \
    && cmake --build build

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libabsl20220623 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 nvfp4
COPY --from=build /src/build/bin/nvfp4q /usr/local/bin/nvfp4q
USER nvfp4
ENTRYPOINT ["/usr/local/bin/nvfp4q"]
