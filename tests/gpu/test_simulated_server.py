"""nvfp4d with CUDA engines, out of process, on the simulated device (tests/gpu/simulated).

nvfp4d_simulated is nvfp4d's own code (nvfp4_server_core + nvfp4_server.cc built with its CUDA
engines) linked to the host stand-in for the CUDA runtime: the server's engine choice, its
scheduling over several GPU workers, the streamed host path (QuantizeInto with rows arriving
over gRPC), checkpoint jobs and the GPU metrics run as on a GPU machine, with the kernels run
on the host. Every result is compared with the embedded CPU engine (nvfp4q without --server):
the bytes must be identical. Not a GPU run: see docs/cuda.md, "What was verified".
"""
import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_daemon import Daemon  # noqa: E402
from nvfp4_files import assert_same_tree  # noqa: E402
from nvfp4_process import run  # noqa: E402

BIN = pathlib.Path(os.environ.get("NVFP4_BIN", "build/bin"))
NVFP4D_SIMULATED = pathlib.Path(os.environ.get("NVFP4D_SIMULATED", BIN / "nvfp4d_simulated"))
NVFP4Q = BIN / "nvfp4q"
RNG = np.random.default_rng(20261207)


class SimulatedDevices:
    """Sets the simulator's environment for the daemons started inside the block."""

    def __init__(self, **env):
        self.env = {k: str(v) for k, v in env.items()}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def daemons(tmp_path):
    started = []

    def start(*args, devices=1, memory_mib=2048, metrics=True, fail=""):
        with SimulatedDevices(NVFP4_SIM_DEVICES=devices, NVFP4_SIM_DEVICE_MEMORY_MIB=memory_mib,
                              NVFP4_SIM_FAIL=fail):
            d = Daemon(NVFP4D_SIMULATED, *args, metrics=metrics,
                       log=tmp_path / f"nvfp4d-{len(started)}.log")
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def engines_line(daemon):
    return re.search(r"engines\s+(.*)", daemon.output()).group(1)


def busy_seconds(daemon):
    """worker_busy_seconds_total per backend label."""
    out = {}
    for m in re.finditer(r'nvfp4_worker_busy_seconds_total\{backend="([^"]*)",worker="(\d+)"\} '
                         r'(\S+)', daemon.metrics()):
        out[(m.group(1), int(m.group(2)))] = float(m.group(3))
    return out


def quantize_tensor(args, out, server=None):
    cmd = [NVFP4Q, "quantize-tensor", *args, "--output", out]
    if server:
        cmd += ["--server", server.target]
    return run(*cmd, check=False)


# ------------------------------------------------------------------------------------------
# Engine choice


def test_device_flag_picks_the_gpu_engines_or_refuses(daemons):
    assert engines_line(daemons("--device", "cuda")).startswith("cuda:0")
    assert engines_line(daemons("--device", "auto", devices=2)).startswith("cuda:0")
    assert "cuda:1" in engines_line(daemons("--device", "auto", devices=2))
    assert engines_line(daemons("--device", "auto", devices=0)).startswith("cpu")
    assert engines_line(daemons("--device", "cpu", devices=1)).startswith("cpu")
    with SimulatedDevices(NVFP4_SIM_DEVICES=0):
        result = run(NVFP4D_SIMULATED, "--device", "cuda", "--listen", "127.0.0.1:0",
                     "--metrics-listen", "", check=False, timeout=30)
    assert result.returncode != 0
    assert "--device cuda: no CUDA device found" in result.stderr
    # The kernels' module cannot be loaded (the occupancy query that loads it fails, e.g. on a
    # full device): nvfp4d refuses to start and says why.
    with SimulatedDevices(NVFP4_SIM_DEVICES=1, NVFP4_SIM_FAIL="occupancy"):
        result = run(NVFP4D_SIMULATED, "--device", "cuda", "--listen", "127.0.0.1:0",
                     "--metrics-listen", "", check=False, timeout=30)
    assert result.returncode != 0
    assert "cudaOccupancyMaxActiveBlocksPerMultiprocessor (quantize kernels)" in result.stderr
    assert "cudaErrorMemoryAllocation" in result.stderr


# ------------------------------------------------------------------------------------------
# Tensors (QuantizeTensor: the streamed host path)


def tensor_cases(tmp_path):
    """(name, nvfp4q arguments) covering dtypes, padding, methods, objectives, importance
    layouts, a given amax or g, and the fake-quant output."""
    w = RNG.standard_t(3, (96, 320)).astype(np.float32)
    np.save(tmp_path / "w_f32.npy", w)
    np.save(tmp_path / "w_f16.npy", RNG.normal(0, 0.02, (33, 40)).astype(np.float16))
    RNG.normal(0, 1, (17, 48)).astype(ml_dtypes.bfloat16).tofile(tmp_path / "w_bf16.raw")
    np.save(tmp_path / "imp_col.npy", RNG.lognormal(0, 1, 320).astype(np.float32))
    np.save(tmp_path / "imp_elem.npy", RNG.lognormal(0, 1.5, (96, 320)).astype(np.float32))
    f32, f16 = ["--input", tmp_path / "w_f32.npy"], ["--input", tmp_path / "w_f16.npy"]
    bf16 = ["--input", tmp_path / "w_bf16.raw", "--dtype", "bf16", "--shape", "17,48"]
    return [
        ("sweep_f32", f32),
        ("absmax448_f32", [*f32, "--method", "absmax", "--scale-max", 448]),
        ("four_over_six_f16", [*f16, "--method", "four-over-six"]),
        ("exhaustive_bf16", [*bf16, "--method", "exhaustive"]),
        ("sweep_bf16_dequant", [*bf16, "--dequantized", tmp_path / "DQ.npy"]),
        ("wmse_column", [*f32, "--objective", "wmse", "--importance", tmp_path / "imp_col.npy"]),
        ("wmse_element", [*f32, "--objective", "wmse", "--importance",
                          tmp_path / "imp_elem.npy"]),
        ("sweep_amax_f16", [*f16, "--amax", 0.25]),
        ("absmax_global_scale", [*f32, "--method", "absmax", "--global-scale", 0.003]),
    ]


def test_tensors_on_the_gpu_engine_are_the_cpu_bytes(daemons, tmp_path):
    daemon = daemons("--device", "cuda")
    for name, args in tensor_cases(tmp_path):
        outputs = {}
        for where, server in (("cpu", None), ("gpu", daemon)):
            args_here = [str(a).replace("DQ", f"{name}_{where}") for a in args]
            result = quantize_tensor(args_here, tmp_path / f"{name}_{where}.safetensors", server)
            assert result.returncode == 0, f"{name} {where}: {result.stderr}"
            outputs[where] = (tmp_path / f"{name}_{where}.safetensors").read_bytes()
        assert outputs["gpu"] == outputs["cpu"], name
        if "dequant" in name:
            assert (tmp_path / f"{name}_gpu.npy").read_bytes() == \
                (tmp_path / f"{name}_cpu.npy").read_bytes()
    used = busy_seconds(daemon)
    assert [k for k in used if k[0].startswith("cuda:0")], used
    assert 'nvfp4_gpu_memory_used_bytes{gpu="0"}' in daemon.metrics()
    jobs = json.loads(run(NVFP4Q, "jobs", "--server", daemon.target, "--json").stdout)["jobs"]
    assert len(jobs) == len(tensor_cases(tmp_path))
    assert {j["state"] for j in jobs} == {"JOB_STATE_SUCCEEDED"}


def test_bad_inputs_fail_on_the_gpu_engine_as_on_the_cpu(daemons, tmp_path):
    daemon = daemons("--device", "cuda")
    w = RNG.normal(0, 1, (40, 64)).astype(np.float32)
    w[37, 21] = np.nan
    np.save(tmp_path / "nan.npy", w)
    imp = np.ones(64, np.float32)
    imp[9] = -1.0
    np.save(tmp_path / "w.npy", np.nan_to_num(w))
    np.save(tmp_path / "bad_imp.npy", imp)
    cases = {
        "nan": ["--input", tmp_path / "nan.npy"],
        "nan_given_amax": ["--input", tmp_path / "nan.npy", "--amax", 3.0],
        "negative_importance": ["--input", tmp_path / "w.npy", "--objective", "wmse",
                                "--importance", tmp_path / "bad_imp.npy"],
    }
    for name, args in cases.items():
        local = quantize_tensor(args, tmp_path / f"{name}_cpu.safetensors")
        remote = quantize_tensor(args, tmp_path / f"{name}_gpu.safetensors", daemon)
        assert local.returncode != 0 and remote.returncode != 0, name
        # The engine's message (which element, its value) is the CPU's, word for word.
        engine_message = local.stderr.strip().splitlines()[-1].split(": ", 1)[-1]
        assert engine_message in remote.stderr, f"{name}:\n{local.stderr}\n{remote.stderr}"
        assert not (tmp_path / f"{name}_gpu.safetensors").exists()
    # The engine is still healthy afterwards.
    assert quantize_tensor(["--input", tmp_path / "w.npy"], tmp_path / "after.safetensors",
                           daemon).returncode == 0


def test_two_gpus_share_concurrent_jobs(daemons, tmp_path):
    daemon = daemons("--device", "cuda", devices=2)
    count = 8
    for i in range(count):
        np.save(tmp_path / f"t{i}.npy", RNG.normal(0, 1 + i, (256, 1024)).astype(np.float32))

    def one(i, server):
        where = "gpu" if server else "cpu"
        return quantize_tensor(["--input", tmp_path / f"t{i}.npy"],
                               tmp_path / f"t{i}_{where}.safetensors", server)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda i: one(i, daemon), range(count)))
    for i, result in enumerate(results):
        assert result.returncode == 0, result.stderr
        assert one(i, None).returncode == 0
        assert (tmp_path / f"t{i}_gpu.safetensors").read_bytes() == \
            (tmp_path / f"t{i}_cpu.safetensors").read_bytes(), i
    used = busy_seconds(daemon)
    gpus = {label.split()[0] for (label, _), seconds in used.items() if seconds > 0}
    assert gpus == {"cuda:0", "cuda:1"}, used
    text = daemon.metrics()
    assert 'nvfp4_gpu_memory_used_bytes{gpu="1"}' in text


def test_a_small_device_uploads_the_input_twice_and_gets_the_same_bytes(daemons, tmp_path):
    # 200 MiB of device memory: the input never stays resident between the amax pass and the
    # quantize pass (the backend keeps 256 MiB to spare), so every chunk is uploaded twice.
    daemon = daemons("--device", "cuda", memory_mib=200)
    np.save(tmp_path / "big.npy", RNG.normal(0, 1, (2048, 2048)).astype(np.float32))
    args = ["--input", tmp_path / "big.npy", "--method", "absmax"]
    assert quantize_tensor(args, tmp_path / "cpu.safetensors").returncode == 0
    result = quantize_tensor(args, tmp_path / "gpu.safetensors", daemon)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gpu.safetensors").read_bytes() == (tmp_path / "cpu.safetensors").read_bytes()


def test_a_lost_gpu_context_fails_jobs_and_asks_to_replace_the_process(daemons, tmp_path):
    # The simulated quantize kernel faults (an illegal address), which loses the context: the job
    # fails saying so, later jobs fail UNAVAILABLE (clients retry elsewhere), and health turns to
    # NOT_SERVING, liveness too, so that an orchestrator replaces the process.
    daemon = daemons("--device", "cuda", fail="kernel_fault")
    np.save(tmp_path / "w.npy", RNG.normal(0, 1, (64, 256)).astype(np.float32))
    first = quantize_tensor(["--input", tmp_path / "w.npy"], tmp_path / "1.safetensors", daemon)
    assert first.returncode == 4, first.stderr  # UNAVAILABLE
    assert "the CUDA context is lost" in first.stderr, first.stderr
    second = quantize_tensor(["--input", tmp_path / "w.npy"], tmp_path / "2.safetensors", daemon)
    assert second.returncode == 4, second.stderr  # UNAVAILABLE
    assert "lost its CUDA context" in second.stderr, second.stderr
    assert not (tmp_path / "1.safetensors").exists() and not (tmp_path / "2.safetensors").exists()
    deadline = time.time() + 20
    while time.time() < deadline:
        health = run(NVFP4Q, "health", "--server", daemon.target, "--service", "liveness",
                     check=False)
        if health.stdout.strip() == "NOT_SERVING":
            break
        time.sleep(0.2)
    assert health.stdout.strip() == "NOT_SERVING" and health.returncode == 4, health
    ready = run(NVFP4Q, "health", "--server", daemon.target, check=False)
    assert ready.stdout.strip() == "NOT_SERVING", ready
    assert re.search(r'nvfp4_worker_healthy\{backend="cuda:0[^"]*",worker="0"\} 0', daemon.metrics())
    assert "cannot take work" in daemon.output()


def test_healthy_gpu_engines_report_healthy(daemons):
    daemon = daemons("--device", "cuda", devices=2)
    text = daemon.metrics()
    assert len(re.findall(r'nvfp4_worker_healthy\{backend="cuda:\d[^"]*",worker="\d"\} 1', text)) == 2
    assert run(NVFP4Q, "health", "--server", daemon.target, "--service", "liveness").stdout.strip() \
        == "SERVING"


# ------------------------------------------------------------------------------------------
# Checkpoints (server-side jobs and --stream-tensors)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    run(BIN / "nvfp4_demo_checkpoint", "--out", d / "src", "--layers", 2, "--hidden", 256,
        "--intermediate", 512, "--vocab", 1024, "--dtype", "bf16", "--shard-gb", 0.0008,
        "--calibration", d / "calib.json", "--importance", d / "imp.safetensors", "--seed", 5)
    return d


@pytest.mark.parametrize("name,args", [
    ("sweep_w4a4", ["--calibration", "CALIB"]),
    ("wmse", ["--objective", "wmse", "--importance", "IMP"]),
    ("absmax448_ct", ["--method", "absmax", "--scale-max", 448, "--format",
                      "compressed-tensors"]),
])
def test_checkpoint_jobs_on_the_gpu_engine_write_the_cpu_bytes(daemons, llama, tmp_path, name,
                                                               args):
    root = (tmp_path / "root").resolve()
    shutil.copytree(llama, root)
    args = [root / "calib.json" if a == "CALIB" else root / "imp.safetensors" if a == "IMP"
            else a for a in args]
    common = ["--shard-size", "1MiB", "--quiet", *args]
    run(NVFP4Q, "quantize", "--model", root / "src", "--out", tmp_path / "embedded", *common)
    daemon = daemons("--device", "cuda", "--allowed-root", root)
    run(NVFP4Q, "quantize", "--server", daemon.target, "--model", root / "src", "--out",
        root / "server-side", *common)
    assert_same_tree(root / "server-side", tmp_path / "embedded")
    run(NVFP4Q, "quantize", "--server", daemon.target, "--stream-tensors", "--model",
        root / "src", "--out", tmp_path / "streamed", *common)
    assert_same_tree(tmp_path / "streamed", tmp_path / "embedded")
    assert [k for k, s in busy_seconds(daemon).items() if s > 0 and k[0].startswith("cuda")]
