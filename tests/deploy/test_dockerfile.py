"""The Dockerfile, checked without a Docker engine (none on the build machines): its final image
installs exactly the Debian packages whose shared libraries nvfp4d and nvfp4q link (ldd of this
build, mapped with dpkg -S), runs as a non-root user, checks itself through the health service,
and builds CUDA and CPU variants from one file."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("NVFP4_BIN", REPO / "build" / "bin"))


def stages():
    """[(name, text)] of the Dockerfile's stages, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    parts = re.split(r"^FROM ", text, flags=re.M)[1:]
    result = []
    for part in parts:
        head = part.splitlines()[0]
        m = re.search(r"\bAS\s+(\S+)", head)
        result.append((m.group(1) if m else None, "FROM " + part))
    return result


def stage(name):
    return next(text for n, text in stages() if n == name)


def linked_packages():
    libs = set()
    for binary in ("nvfp4d", "nvfp4q"):
        out = subprocess.run(["ldd", str(BIN / binary)], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            m = re.search(r"=> (/\S+)", line)
            if m and "cuda" not in m.group(1):
                libs.add(os.path.realpath(m.group(1)))
    packages = set()
    for lib in sorted(libs):
        # Merged /usr: dpkg may know a library under /lib rather than /usr/lib.
        for candidate in (lib, lib.replace("/usr/lib/", "/lib/", 1)):
            owner = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if owner.returncode == 0:
                packages.add(owner.stdout.split(":")[0])
                break
        else:
            pytest.fail(f"no Debian package owns {lib}")
    # Part of every Debian base image (essential / required): not installed explicitly.
    return packages - {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def test_the_runtime_stage_installs_exactly_the_linked_libraries():
    if not (BIN / "nvfp4d").exists():
        pytest.fail(f"{BIN}/nvfp4d is not built")
    text = stage("runtime-base")
    installed = set(re.search(r"apt-get install -y --no-install-recommends\s+(.*?)\s*&&", text)
                    .group(1).split())
    assert installed - {"zlib1g"} == linked_packages()


def test_the_final_image_is_small_unprivileged_and_self_checking():
    final_name, final = stages()[-1]
    assert final_name is None and final.startswith("FROM runtime-cuda-${CUDA}")
    # Only the two binaries come from the build stage.
    copies = re.findall(r"^COPY (.*)$", final, flags=re.M)
    assert copies == ["--from=build /src/build/bin/nvfp4d /src/build/bin/nvfp4q /usr/local/bin/"]
    user = re.search(r"^USER (\S+)", final, flags=re.M).group(1)
    assert not user.startswith("0") and user.split(":")[0] != "root"
    assert "useradd --system --uid " + user.split(":")[0] in stage("runtime-base")
    health = re.search(r"^HEALTHCHECK .*CMD (\[.*\])", final, flags=re.M).group(1)
    assert '"health"' in health and '"127.0.0.1:50051"' in health
    assert "EXPOSE 50051 9400" in final


def test_cuda_and_cpu_variants_come_from_build_arguments():
    names = [n for n, _ in stages()]
    for n in ("build-cuda-0", "build-cuda-1", "runtime-cuda-0", "runtime-cuda-1", "build",
              "runtime-base"):
        assert n in names
    assert "FROM build-cuda-${CUDA} AS build" in stage("build")
    cuda_build = stage("build-cuda-1")
    assert "cuda-nvcc-${CUDA_VERSION}" in cuda_build
    assert "cuda-cudart-dev-${CUDA_VERSION}" in cuda_build
    runtime = stage("runtime-cuda-1")
    assert "cuda-cudart-${CUDA_VERSION}" in runtime and "nvcc" not in runtime
    build = stage("build")
    assert "-DNVFP4_CUDA=ON" in build and "-DNVFP4_CUDA=OFF" in build
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}" in build
    header = (REPO / "Dockerfile").read_text().split("FROM ", 1)[0]
    assert re.search(r"^ARG CUDA=1$", header, flags=re.M)


def test_the_build_context_leaves_out_local_builds():
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("build/", "build-*/", ".venv/", ".git/"):
        assert pattern in ignored
