#!/usr/bin/env bash
# Rehearses tests/gpu/device_check.sh, as the device tool would run it, in a bare root filesystem
# unlike the development machine: Debian 13 (glibc 2.41, g++ 14, Python 3.13) with no Abseil,
# GoogleTest, CMake or Ninja from Debian. CMake and Ninja come from PyPI into a venv whose python3
# alone is on the PATH (the lent image has both as Python packages), Abseil and GoogleTest from
# the carried build-gpu-debs/, CUDA from this machine's toolkit mounted read-only. No GPU here:
# it checks that the script finds its tools, builds for sm_90 and runs the host-side tests
# (the GPU tests skip), so the lease's minutes are not spent on a configure error.
#
# Usage (root; needs debootstrap and network access to Debian and PyPI):
#   scripts/rehearse_device_check.sh [--no-dpkg-deb] [ROOT]
#     --no-dpkg-deb  hide dpkg-deb, so the carried packages are unpacked with ar + tar
#     ROOT           the root filesystem, kept between runs (default /tmp/nvfp4-device-rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
hide_dpkg_deb=0
if [[ ${1:-} == --no-dpkg-deb ]]; then
  hide_dpkg_deb=1
  shift
fi
root=${1:-/tmp/nvfp4-device-rehearsal}
((EUID == 0)) || { echo "rehearse_device_check: needs root (debootstrap, chroot, mount)" >&2; exit 1; }
compgen -G "$repo/build-gpu-debs/*.deb" >/dev/null ||
  { echo "rehearse_device_check: run tests/gpu/device_check.sh --fetch-debs first" >&2; exit 1; }
cuda=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")

if [[ ! -x $root/opt/py/bin/cmake ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  debootstrap --variant=minbase --include=g++,python3,python3-venv,binutils,xz-utils,procps \
    trixie "$root" http://deb.debian.org/debian
  wheels=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" cmake ninja
  mkdir -p "$root/tmp/wheels"
  cp "$wheels"/*.whl "$root/tmp/wheels/"
  rm -rf "$wheels"
  chroot "$root" sh -c 'python3 -m venv /opt/py && /opt/py/bin/pip install -q --no-index /tmp/wheels/*.whl'
  # The only Python on the PATH: device_check.sh must find cmake and ninja beside it.
  mkdir -p "$root/opt/python-only"
  printf '#!/bin/sh\nexec /opt/py/bin/python3 "$@"\n' >"$root/opt/python-only/python3"
  chmod +x "$root/opt/python-only/python3"
fi

mounted=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || true; done
  [[ -e $root/usr/bin/dpkg-deb.hidden ]] && mv "$root/usr/bin/dpkg-deb.hidden" "$root/usr/bin/dpkg-deb"
  return 0
}
trap cleanup EXIT
mount_into() {  # source, target inside root, mount options...
  local target=$root$2
  mkdir -p "$target"
  mount "${@:3}" "$1" "$target"
  mounted+=("$target")
}
mount_into proc /proc -t proc
mount_into /dev /dev --bind
mount_into "$cuda" /usr/local/cuda --bind -o ro

# The working tree as the device tool copies it: tracked and unignored files, plus the carry.
rm -rf "$root/work/repo" "$root/tmp/out"
mkdir -p "$root/work/repo" "$root/tmp/out"
(git ls-files -co --exclude-standard && ls build-gpu-debs/*.deb) | tar -cf - -T - | tar -xf - -C "$root/work/repo"
((hide_dpkg_deb)) && mv "$root/usr/bin/dpkg-deb" "$root/usr/bin/dpkg-deb.hidden"

rc=0
chroot "$root" env -i HOME=/root OUT=/tmp/out \
  PATH=/opt/python-only:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash -c 'cd /work/repo && tests/gpu/device_check.sh' || rc=$?
echo "rehearse_device_check: device_check.sh exited $rc; its files are in $root/tmp/out"
exit "$rc"
