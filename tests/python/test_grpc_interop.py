"""nvfp4d out of process, driven by independent clients: a Python grpcio client with stubs
generated from proto/ at test time, the standard grpc.health.v1 and reflection clients, an HTTP
scrape of /metrics, SIGTERM during a job, and a >= 1 GiB stream with bounded server memory."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import ml_dtypes
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from safetensors.numpy import load_file

np.float8_e4m3fn = ml_dtypes.float8_e4m3fn
REPO = pathlib.Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(11)


def quantize_stream(pb, channel, w, method, chunk=1 << 16, name="python"):
    quantizer_pb2, quantizer_pb2_grpc = pb
    stub = quantizer_pb2_grpc.QuantizerStub(channel)
    header = quantizer_pb2.TensorHeader(
        name=name, dtype=quantizer_pb2.DTYPE_F32, shape=list(w.shape), method=method)
    data = w.astype("<f4").tobytes()

    def requests():
        yield quantizer_pb2.QuantizeTensorRequest(header=header)
        for i in range(0, len(data), chunk):
            yield quantizer_pb2.QuantizeTensorRequest(data=data[i:i + chunk])

    parts = {"packed": b"", "scales": b""}
    result = metrics = accepted = None
    for response in stub.QuantizeTensor(requests(), timeout=60):
        kind = response.WhichOneof("payload")
        if kind == "accepted":
            accepted = response.accepted
        elif kind == "result":
            result = response.result
        elif kind in parts:
            parts[kind] += getattr(response, kind)
        elif kind == "metrics":
            metrics = response.metrics
    return accepted, result, parts, metrics


def test_python_client_gets_the_embedded_bytes(pb, nvfp4d, nvfp4q, tmp_path):
    quantizer_pb2, _ = pb
    daemon = nvfp4d()
    w = RNG.normal(0, 0.02, (96, 320)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    subprocess.run([nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
                    tmp_path / "local.safetensors"], check=True, capture_output=True)
    local = load_file(str(tmp_path / "local.safetensors"))
    with grpc.insecure_channel(daemon.target) as channel:
        accepted, result, parts, metrics = quantize_stream(
            pb, channel, w, quantizer_pb2.METHOD_SCALESWEEP)
    assert accepted.job_id
    assert (result.rows, result.cols, result.padded_cols) == (96, 320, 320)
    assert parts["packed"] == local["weight"].tobytes()
    assert parts["scales"] == local["weight_scale"].view(np.uint8).tobytes()
    assert np.float32(result.global_scale) == local["weight_scale_2"]
    assert 0 < metrics.gain < 0.85 and metrics.backend.startswith("cpu")

    # The same bytes through nvfp4q's remote mode.
    subprocess.run([nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
                    tmp_path / "remote.safetensors", "--server", daemon.target], check=True,
                   capture_output=True)
    assert (tmp_path / "remote.safetensors").read_bytes() == \
        (tmp_path / "local.safetensors").read_bytes()

    jobs = json.loads(subprocess.run([nvfp4q, "jobs", "--server", daemon.target, "--json"],
                                     check=True, capture_output=True, text=True).stdout)
    assert [j["state"] for j in jobs["jobs"]] == ["JOB_STATE_SUCCEEDED"] * 2


def test_nvfp4d_usage_errors_exit_2_with_a_plain_message(nvfp4q):
    nvfp4d = pathlib.Path(nvfp4q).parent / "nvfp4d"
    for args, message in [(["--max-queue", "0"], "--max-queue: must be a number > 0, got '0'"),
                          (["--memory-mib", "-5"], "--memory-mib: must be a number > 0"),
                          (["--tls-cert", "server.pem"], "--tls-cert requires --tls-key"),
                          (["--tls-key", "server.key"], "--tls-key requires --tls-cert"),
                          (["--bogus"], "--bogus")]:
        r = subprocess.run([nvfp4d, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and message in r.stderr, (args, r.returncode, r.stderr)
    r = subprocess.run([nvfp4d, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("nvfp4d ")


def test_wmse_jobs_report_the_weighted_gain_everywhere(nvfp4d, nvfp4q, tmp_path):
    # The scales of a WMSE job minimise WMSE: its gain (in reports, job lists and the Prometheus
    # histogram) is WMSE over AbsMax's WMSE, while its plain MSE may exceed AbsMax's.
    daemon = nvfp4d()
    np.save(tmp_path / "w.npy", RNG.normal(0, 1, (128, 512)).astype(np.float32))
    np.save(tmp_path / "imp.npy", RNG.lognormal(0, 2.0, 512).astype(np.float32))
    args = ["quantize-tensor", "--input", tmp_path / "w.npy", "--objective", "wmse",
            "--importance", tmp_path / "imp.npy", "--json"]
    local = json.loads(subprocess.run([nvfp4q, *args, "--output", tmp_path / "l.safetensors"],
                                      check=True, capture_output=True, text=True).stdout)
    remote = json.loads(subprocess.run([nvfp4q, *args, "--output", tmp_path / "r.safetensors",
                                        "--server", daemon.target],
                                       check=True, capture_output=True, text=True).stdout)
    for key in ("wmse", "absmax_wmse", "wmse_gain", "mse", "absmax_mse", "gain"):
        assert remote[key] == local[key], key
    assert local["wmse_gain"] == pytest.approx(local["wmse"] / local["absmax_wmse"])
    assert local["wmse_gain"] < 0.8
    text = subprocess.run([nvfp4q, *args[:-1], "--output", tmp_path / "t.safetensors"],
                          check=True, capture_output=True, text=True).stdout
    assert "vs AbsMax: WMSE" in text
    jobs = subprocess.run([nvfp4q, "jobs", "--server", daemon.target], check=True,
                          capture_output=True, text=True).stdout
    assert f"{100 * (local['wmse_gain'] - 1):+.1f}%" in jobs, jobs
    scrape = urllib.request.urlopen(
        f"http://127.0.0.1:{daemon.metrics_port}/metrics").read().decode()
    total = float(re.search(r"^nvfp4_tensor_gain_vs_absmax_ratio_sum (\S+)$", scrape, re.M)[1])
    assert total == pytest.approx(local["wmse_gain"], rel=1e-9)


def test_health_and_reflection(nvfp4d):
    daemon = nvfp4d()
    with grpc.insecure_channel(daemon.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "nvfp4.v1.Quantizer", "liveness"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert "nvfp4.v1.Quantizer" in names and "grpc.health.v1.Health" in names


def test_metrics_scrape_counts_jobs(pb, nvfp4d):
    quantizer_pb2, _ = pb
    daemon = nvfp4d()
    w = RNG.normal(0, 1, (32, 64)).astype(np.float32)
    with grpc.insecure_channel(daemon.target) as channel:
        for _ in range(3):
            quantize_stream(pb, channel, w, quantizer_pb2.METHOD_ABSMAX)
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics").read().decode()
    assert 'nvfp4_jobs_total{code="OK",kind="tensor"} 3' in text
    assert "nvfp4_elements_quantized_total 6144" in text
    for family in ("nvfp4_queue_depth", "nvfp4_queue_capacity", "nvfp4_jobs_in_flight",
                   "nvfp4_queue_wait_seconds_bucket", "nvfp4_job_duration_seconds_bucket",
                   "nvfp4_tensor_nmse_bucket", "nvfp4_tensor_gain_vs_absmax_ratio_bucket",
                   "nvfp4_input_bytes_total", "nvfp4_output_bytes_total",
                   "nvfp4_worker_busy_seconds_total", "nvfp4_memory_reserved_bytes",
                   "nvfp4_build_info"):
        assert family in text, family
    assert "nvfp4_tensor_nmse_count 3" in text


def test_sigterm_during_a_job_drains_and_exits_zero(pb, nvfp4d):
    quantizer_pb2, quantizer_pb2_grpc = pb
    daemon = nvfp4d()
    w = RNG.normal(0, 1, (2048, 2048)).astype(np.float32)
    outcome = {}

    def run():
        with grpc.insecure_channel(daemon.target) as channel:
            try:
                outcome["result"] = quantize_stream(pb, channel, w,
                                                    quantizer_pb2.METHOD_EXHAUSTIVE, 1 << 20)
            except grpc.RpcError as e:
                outcome["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    with grpc.insecure_channel(daemon.target) as channel:
        stub = quantizer_pb2_grpc.QuantizerStub(channel)
        deadline = time.time() + 30
        while time.time() < deadline:
            jobs = stub.ListJobs(quantizer_pb2.ListJobsRequest(), timeout=5).jobs
            if jobs and jobs[0].state == quantizer_pb2.JOB_STATE_RUNNING:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the job never started")
    daemon.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert daemon.proc.wait(timeout=60) == 0
    assert "error" not in outcome, outcome.get("error")
    _, result, parts, metrics = outcome["result"]
    assert len(parts["packed"]) == 2048 * 1024 and metrics.candidates_per_block == 126
    assert "draining" in daemon.output()


def wait_for_running_job(nvfp4q, daemon, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        jobs = json.loads(subprocess.run([nvfp4q, "jobs", "--server", daemon.target, "--json"],
                                         check=True, capture_output=True, text=True).stdout)
        if any(j["state"] == "JOB_STATE_RUNNING" for j in jobs.get("jobs", [])):
            return
        time.sleep(0.05)
    pytest.fail("the job never started")


def start_long_remote_job(nvfp4q, daemon, tmp_path, **popen):
    """nvfp4q quantize-tensor of a 4M-element tensor with the exhaustive method (seconds on one
    server thread) through `daemon`, returned once the server runs it; output o.safetensors."""
    np.save(tmp_path / "w.npy", RNG.normal(0, 1, (2048, 2048)).astype(np.float32))
    client = subprocess.Popen([nvfp4q, "quantize-tensor", "--input", str(tmp_path / "w.npy"),
                               "--output", str(tmp_path / "o.safetensors"), "--method",
                               "exhaustive", "--server", daemon.target],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    wait_for_running_job(nvfp4q, daemon)
    return client


@pytest.mark.parametrize("mode", ["quantize-tensor", "stream-tensors"])
def test_ctrl_c_cancels_the_remote_job_and_exits_7(nvfp4d, nvfp4q, tmp_path, mode):
    # The client's gRPC threads exist before the command starts its call: Ctrl-C must still
    # reach the cancelling watcher, not kill the process (exit 130, no message, job left).
    daemon = nvfp4d("--threads", "1")
    if mode == "quantize-tensor":
        np.save(tmp_path / "w.npy", RNG.normal(0, 1, (2048, 2048)).astype(np.float32))
        cmd = [nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
               tmp_path / "out.safetensors", "--method", "exhaustive"]
        output = tmp_path / "out.safetensors"
    else:
        subprocess.run([pathlib.Path(nvfp4q).parent / "nvfp4_demo_checkpoint", "--out",
                        tmp_path / "model", "--layers", "1", "--hidden", "1024", "--intermediate",
                        "2048", "--vocab", "256"], check=True, capture_output=True)
        cmd = [nvfp4q, "quantize", "--model", tmp_path / "model", "--out", tmp_path / "out",
               "--method", "exhaustive", "--stream-tensors", "--quiet"]
        output = tmp_path / "out"
    client = subprocess.Popen([str(c) for c in cmd] + ["--server", daemon.target],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_running_job(nvfp4q, daemon)
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 7, err
    assert "interrupted, cancelling the job" in err
    assert not output.exists() or not any(output.iterdir())
    jobs = json.loads(subprocess.run([nvfp4q, "jobs", "--server", daemon.target, "--json"],
                                     check=True, capture_output=True, text=True).stdout)["jobs"]
    deadline = time.time() + 30
    while any(j["state"] == "JOB_STATE_RUNNING" for j in jobs) and time.time() < deadline:
        time.sleep(0.1)
        jobs = json.loads(subprocess.run([nvfp4q, "jobs", "--server", daemon.target, "--json"],
                                         check=True, capture_output=True,
                                         text=True).stdout)["jobs"]
    assert "JOB_STATE_CANCELLED" in {j["state"] for j in jobs}, jobs


def test_one_gib_stream_with_bounded_server_memory(nvfp4d, nvfp4q, tmp_path):
    rows, cols = 16384, 32768  # 512 Mi bf16 elements = 1 GiB
    tile = RNG.normal(0, 1, (256, cols)).astype(ml_dtypes.bfloat16)
    path = tmp_path / "big.bf16"
    with open(path, "wb") as f:
        for i in range(rows // 256):
            f.write((tile * (1 + i % 7)).astype(ml_dtypes.bfloat16).tobytes())
    assert path.stat().st_size == 1 << 30
    daemon = nvfp4d("--max-job-mib", "2048")
    start = time.time()
    report = json.loads(subprocess.run(
        [nvfp4q, "quantize-tensor", "--input", path, "--dtype", "bf16", "--shape",
         f"{rows},{cols}", "--output", tmp_path / "big.safetensors", "--method", "absmax",
         "--server", daemon.target, "--json"], check=True, capture_output=True, text=True).stdout)
    seconds = time.time() - start
    status = pathlib.Path(f"/proc/{daemon.proc.pid}/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    print(f"\n1 GiB bf16 through nvfp4d: {seconds:.1f} s, server peak RSS {peak / 2**30:.2f} GiB")
    assert report["rows"] == rows and report["gain"] == 1.0
    # nvfp4q sends amax, so the server reads the upload in place and holds at most the
    # --stream-window-mib window of it (64 MiB) plus the outputs (0.28 GiB) and the runtime;
    # holding the whole 1 GiB input once would exceed this.
    assert peak < 0.75 * 2**30, peak


def test_tls_and_token_from_the_cli_and_python(pb, nvfp4d, nvfp4q, tmp_path):
    quantizer_pb2, quantizer_pb2_grpc = pb
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    (tmp_path / "token").write_text("t0ken\n")
    daemon = nvfp4d("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key",
                    str(tmp_path / "key.pem"), "--auth-token-file", str(tmp_path / "token"))
    creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "cert.pem").read_bytes())
    with grpc.secure_channel(daemon.target, creds) as channel:
        stub = quantizer_pb2_grpc.QuantizerStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.GetServerInfo(quantizer_pb2.GetServerInfoRequest(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = stub.GetServerInfo(quantizer_pb2.GetServerInfoRequest(), timeout=10,
                                  metadata=[("authorization", "Bearer t0ken")])
        assert info.auth_required
    with grpc.insecure_channel(daemon.target) as plain:  # no TLS: the handshake fails
        with pytest.raises(grpc.RpcError) as refused:
            quantizer_pb2_grpc.QuantizerStub(plain).GetServerInfo(
                quantizer_pb2.GetServerInfoRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    np.save(tmp_path / "w.npy", RNG.normal(0, 1, (16, 64)).astype(np.float32))
    common = ["--server", daemon.target, "--tls-ca", str(tmp_path / "cert.pem")]
    r = subprocess.run([nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
                        tmp_path / "o.safetensors", *common], capture_output=True, text=True)
    assert r.returncode == 6 and "bearer token" in r.stderr
    r = subprocess.run([nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
                        tmp_path / "o.safetensors", *common, "--token-file", tmp_path / "token",
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["job_id"]


def test_nvfp4d_logs_failed_jobs_by_default_and_every_call_on_request(pb, nvfp4d):
    good = RNG.normal(0, 1, (16, 64)).astype(np.float32)
    bad = good.copy()
    bad[3, 7] = np.nan  # nvfp4q would refuse it before sending; a raw stub does not

    def send(daemon, name, w):
        with grpc.insecure_channel(daemon.target) as channel:
            try:
                quantize_stream(pb, channel, w, pb[0].METHOD_SCALESWEEP, name=name)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()

    def job_lines(daemon):
        return [line for line in daemon.output().splitlines() if " job " in line]

    default = nvfp4d()
    assert send(default, "bad", bad) == grpc.StatusCode.INVALID_ARGUMENT
    assert send(default, "good", good) == grpc.StatusCode.OK
    lines = job_lines(default)
    assert len(lines) == 1, default.output()
    assert re.fullmatch(r"nvfp4d: tensor job t-\d+-[0-9a-f]{8} 'bad' INVALID_ARGUMENT after "
                        r"\d+\.\d{3} s: .*row 3, column 7.*", lines[0]), lines[0]
    everything = nvfp4d("--log-jobs", "all")
    assert send(everything, "good", good) == grpc.StatusCode.OK
    assert re.fullmatch(r"nvfp4d: tensor job t-\d+-[0-9a-f]{8} 'good' OK after \d+\.\d{3} s",
                        job_lines(everything)[0]), everything.output()
    quiet = nvfp4d("--log-jobs", "none")
    assert send(quiet, "bad", bad) == grpc.StatusCode.INVALID_ARGUMENT
    assert job_lines(quiet) == [], quiet.output()


def test_default_engine_threads_follow_the_cpus_the_process_may_use(nvfp4q):
    # A pod's CPU quota or a cpuset, not the node's core count (here: an affinity of one CPU).
    nvfp4d = pathlib.Path(nvfp4q).parent / "nvfp4d"
    one_cpu = {min(os.sched_getaffinity(0))}
    proc = subprocess.Popen([nvfp4d, "--listen", "127.0.0.1:0", "--metrics-listen", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, one_cpu))
    try:
        banner = ""
        for line in proc.stdout:
            banner += line
            if "nvfp4d: serving" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    engines = re.search(r"engines +(.*)", banner).group(1)
    assert engines.endswith("(1 thread)"), banner


def test_bad_tls_material_is_named_not_blamed_on_the_address(nvfp4q, tmp_path):
    nvfp4d = pathlib.Path(nvfp4q).parent / "nvfp4d"
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", tmp_path / f"{name}.key", "-out", tmp_path / f"{name}.pem",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    for cert, key in [("a.pem", "b.key"), ("garbage.pem", "a.key")]:
        r = subprocess.run([nvfp4d, "--listen", "127.0.0.1:0", "--metrics-listen", "",
                            "--tls-cert", tmp_path / cert, "--tls-key", tmp_path / key],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (cert, key, r.stderr)
        assert "is not valid PEM, or the key does not match the certificate" in r.stderr, r.stderr
        assert "address is in use" not in r.stderr


def test_a_client_started_with_sigint_ignored_keeps_ignoring_it(nvfp4d, nvfp4q, tmp_path):
    # A background job of a non-interactive shell: Ctrl-C on the shell must not reach it.
    daemon = nvfp4d("--threads", "1")
    client = start_long_remote_job(
        nvfp4q, daemon, tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    assert (tmp_path / "o.safetensors").exists()


def test_nvfp4q_cancel_stops_a_running_job(nvfp4d, nvfp4q, tmp_path):
    daemon = nvfp4d("--threads", "1")
    client = start_long_remote_job(nvfp4q, daemon, tmp_path)
    jobs = json.loads(subprocess.run([nvfp4q, "jobs", "--server", daemon.target, "--json"],
                                     check=True, capture_output=True, text=True).stdout)["jobs"]
    (running,) = [j for j in jobs if j["state"] == "JOB_STATE_RUNNING"]
    out = subprocess.run([nvfp4q, "cancel", "--server", daemon.target, running["id"]],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == f"{running['id']}: cancel requested (was running)", out
    _, err = client.communicate(timeout=60)
    assert client.returncode == 7, err
    assert not (tmp_path / "o.safetensors").exists()
