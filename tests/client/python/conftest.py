"""Fixtures of the Python client tests: the nvfp4client package built and installed the way a
user installs it (pip, from client/python, into a fresh directory), nvfp4d as a child process,
and the CLI that writes the reference bytes."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_daemon import Daemon  # noqa: E402


@pytest.fixture(scope="session")
def bin_dir():
    path = os.environ.get("NVFP4_BIN")
    if not path:
        pytest.skip("NVFP4_BIN (the build's bin directory) is not set: run through ctest")
    return pathlib.Path(path)


@pytest.fixture(scope="session")
def nvfp4client(tmp_path_factory):
    """`pip install ./client/python` into a fresh directory, then imported from there: the
    package's build step (message classes generated from proto/) runs every time."""
    # Built from a copy laid out like the repository (client/python next to proto/), so the
    # build writes nothing into the checkout.
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(REPO / "client" / "python", tree / "client" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "proto"))
    shutil.copytree(REPO / "proto", tree / "proto")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-build-isolation", "--no-deps", "--target", str(target),
                    str(tree / "client" / "python")], check=True)
    sys.path.insert(0, str(target))
    import nvfp4client as module

    assert pathlib.Path(module.__file__).is_relative_to(target)
    return module


@pytest.fixture
def nvfp4d(bin_dir, tmp_path):
    daemons = []

    def start(*args):
        daemon = Daemon(bin_dir / "nvfp4d", *args, metrics=False,
                        log=tmp_path / f"nvfp4d-{len(daemons)}.log")
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def server(nvfp4d):
    return nvfp4d("--threads", "2")
