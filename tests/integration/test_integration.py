"""Reliability suite: nvfp4d processes on loopback, as an operator runs them.

- a real Prometheus server (Debian package) scrapes nvfp4d; its HTTP API returns our series;
  `promtool check metrics` accepts our /metrics;
- failover: three replicas, one SIGKILLed mid-job, for a streamed checkpoint job (tensors
  retried on the other replicas) and for a server-side job (resubmitted, resumed from the
  finished shards): the job completes, byte-identical to a single-engine run, no partial files;
- load/soak: 64 concurrent streams against one server for a bounded time: no unexpected error,
  RESOURCE_EXHAUSTED only for a full queue, RSS stable; p50/p99 latency and throughput printed
  (and written to $NVFP4_INTEGRATION_REPORT when set).

NVFP4_SOAK_SECONDS (default 15) sets the soak length; the long mode uses 600.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_daemon import Daemon  # noqa: E402  (shared with tests/python)
from nvfp4_files import assert_same_tree  # noqa: E402
from nvfp4_process import run  # noqa: E402

BIN = pathlib.Path(os.environ.get("NVFP4_BIN", "build/bin"))
TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemons():
    started = []

    def start(*args, metrics=False):
        d = Daemon(BIN / "nvfp4d", *args, metrics=metrics)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def metric_value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 6-layer Llama-shaped bf16 checkpoint (58 M parameters) and its embedded quantization."""
    root = tmp_path_factory.mktemp("ckpt")
    run(BIN / "nvfp4_demo_checkpoint", "--out", root / "model", "--layers", 6, "--hidden", 1024,
        "--intermediate", 2816, "--heads", 16, "--kv-heads", 4, "--vocab", 4096,
        "--shard-gb", 0.05)
    run(BIN / "nvfp4q", "quantize", "--quiet", "--model", root / "model", "--out",
        root / "reference", "--shard-size", "8MB")
    return root


# ------------------------------------------------------------------------------------------
# Prometheus


def test_a_real_prometheus_scrapes_nvfp4d(daemons, tmp_path):
    prometheus = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    assert prometheus and promtool, "Debian package prometheus (scripts/deps.sh) is missing"
    d = daemons("--max-queue", 8, metrics=True)
    load = run(BIN / "nvfp4_load", "--server", d.target, "--streams", 2, "--seconds", 1,
               "--rows", 64, "--cols", 256)
    ok_jobs = json.loads(load.stdout)["ok"]
    assert ok_jobs > 0
    text = d.metrics()
    # Our exposition passes Prometheus' own linter.
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert metric_value(text, 'nvfp4_jobs_total{code="OK",kind="tensor"}') == ok_jobs

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: nvfp4d\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{d.metrics_port}']}}]\n")
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query(expr):
            url = (f"http://127.0.0.1:{port}/api/v1/query?" +
                   urllib.parse.urlencode({"query": expr}))
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                return None
            assert body["status"] == "success", body
            return body["data"]["result"]

        deadline = time.time() + 60
        result = None
        while time.time() < deadline:
            result = query('nvfp4_jobs_total{job="nvfp4d",code="OK",kind="tensor"}')
            if result:
                break
            time.sleep(0.5)
        assert result, "Prometheus never returned nvfp4_jobs_total"
        assert float(result[0]["value"][1]) == ok_jobs
        assert float(query('up{job="nvfp4d"}')[0]["value"][1]) == 1
        assert float(query("nvfp4_queue_capacity")[0]["value"][1]) == 8
        assert float(query("sum(nvfp4_job_duration_seconds_count)")[0]["value"][1]) >= ok_jobs
        assert float(query("nvfp4_elements_quantized_total")[0]["value"][1]) == ok_jobs * 64 * 256
        assert query("nvfp4_tensor_nmse_count")[0]["value"][1] == str(ok_jobs)
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------------------------------
# Failover


def wait_for(condition, seconds=60, what="condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {seconds} s")


def jobs_of(daemon):
    r = run(BIN / "nvfp4q", "jobs", "--server", daemon.target, "--json", check=False)
    if r.returncode != 0:
        return []
    return json.loads(r.stdout).get("jobs", [])


def test_failover_of_a_streamed_checkpoint_job(daemons, checkpoint, tmp_path):
    replicas = [daemons() for _ in range(3)]
    victim = replicas[1]
    servers = ",".join(d.target for d in replicas)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(BIN / "nvfp4q"), "quantize", "--quiet", "--model", str(checkpoint / "model"),
         "--out", str(out), "--shard-size", "8MB", "--server", servers, "--stream-tensors",
         "--concurrency", "3", "--report", str(tmp_path / "report.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the victim once it has served some of the job's tensors.
    wait_for(lambda: sum(j.get("state") == "JOB_STATE_SUCCEEDED" for j in jobs_of(victim)) >= 2,
             what="the victim serving tensors")
    victim.kill()
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    report = json.loads((tmp_path / "report.json").read_text())
    print("streamed failover:", report["notes"])
    assert_same_tree(out, checkpoint / "reference")
    assert not any(p.name.endswith(".nvfp4-partial") for p in tmp_path.iterdir())
    assert not list(out.rglob("*.tmp.*"))
    # The survivors did the rest of the job.
    assert all(jobs_of(d) for d in (replicas[0], replicas[2]))


def test_failover_of_a_server_side_checkpoint_job(daemons, checkpoint, tmp_path):
    root = tmp_path / "shared"
    shutil.copytree(checkpoint / "model", root / "model")
    replicas = [daemons("--allowed-root", root) for _ in range(3)]
    servers = ",".join(d.target for d in replicas)
    staging = root / ".out.nvfp4-partial"
    # Exhaustive search (same bytes as the sweep, ~7x the work) keeps the job running long
    # enough to be caught mid-way on a fast machine.
    run(BIN / "nvfp4q", "quantize", "--quiet", "--model", root / "model", "--out",
        tmp_path / "reference", "--shard-size", "8MB", "--method", "exhaustive")
    proc = subprocess.Popen(
        [str(BIN / "nvfp4q"), "quantize", "--model", str(root / "model"), "--out",
         str(root / "out"), "--shard-size", "8MB", "--method", "exhaustive", "--server", servers,
         "--report", str(tmp_path / "report.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_replica():
        for d in replicas:
            if any(j.get("kind") == "JOB_KIND_CHECKPOINT" and j.get("state") == "JOB_STATE_RUNNING"
                   for j in jobs_of(d)):
                return d
        return None

    wait_for(lambda: running_replica() is not None, what="a replica running the job")
    owner = running_replica()

    def finished_shards():
        journal = staging / ".nvfp4-journal.json"
        try:
            return len(json.loads(journal.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: finished_shards() >= 2, what="two finished shards")
    owner.kill()
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    assert "retrying" in stderr, stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["shards_resumed"] >= 2, report["totals"]
    assert_same_tree(root / "out", tmp_path / "reference")
    assert not staging.exists()


# ------------------------------------------------------------------------------------------
# Load / soak


def load_with_rss(daemon, args, seconds, window):
    """Runs nvfp4_load for `seconds`; returns its JSON and the median server RSS over the last
    `window` seconds (sampled every 0.2 s: under load the RSS swings with the jobs in flight)."""
    proc = subprocess.Popen([str(a) for a in (*args, "--seconds", seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, samples = time.time(), []
    while proc.poll() is None:
        if time.time() - start >= seconds - window:
            samples.append(daemon.rss_bytes())
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    samples.sort()
    return json.loads(stdout), samples[len(samples) // 2]


def test_64_streams_soak(daemons, tmp_path):
    seconds = float(os.environ.get("NVFP4_SOAK_SECONDS", "15"))
    # A job history smaller than the warm-up's job count: the registry is full (steady) before
    # the RSS baseline is taken.
    d = daemons("--max-queue", 16, "--job-history", 100, "--buffer-idle-release", 2, metrics=True)
    load = [BIN / "nvfp4_load", "--server", d.target, "--streams", 64, "--rows", 256, "--cols",
            1024]
    # RSS: under load it swings with the jobs in flight (the median of the last seconds is
    # reported); the leak check compares the idle RSS after warm-up and after the soak, once
    # nvfp4d's housekeeping has freed the idle job buffers and trimmed the heap (it runs every
    # 2 s once the server is idle).
    def settle():
        time.sleep(4.5)  # the last buffers' idle age (2 s) plus a tick: the gauge is fresh
        deadline = time.time() + 20
        while metric_value(d.metrics(), "nvfp4_buffer_pool_idle_bytes") != 0:
            assert time.time() < deadline, "idle job buffers were not released"
            time.sleep(0.5)
        time.sleep(2.5)  # one more housekeeping tick: the heap trim

    warm, rss_warm_load = load_with_rss(d, load, 10, 5)
    settle()
    rss_warm = d.rss_bytes()
    soak, rss_soak_load = load_with_rss(d, load, max(seconds, 6), 5)
    settle()
    rss_end = d.rss_bytes()
    summary = {"seconds": soak["seconds"], "streams": 64, "ok": soak["ok"],
               "jobs_per_second": soak["jobs_per_second"],
               "elements_per_second": soak["elements_per_second"],
               "latency_seconds": soak["latency_seconds"], "codes": soak["codes"],
               "rss_under_load_warmup_bytes": rss_warm_load,
               "rss_under_load_end_bytes": rss_soak_load,
               "rss_idle_after_warmup_bytes": rss_warm, "rss_idle_end_bytes": rss_end}
    print("soak:", json.dumps(summary))
    if os.environ.get("NVFP4_INTEGRATION_REPORT"):
        pathlib.Path(os.environ["NVFP4_INTEGRATION_REPORT"]).write_text(json.dumps(summary))
    for run_ in (warm, soak):
        unexpected = {c: v for c, v in run_["codes"].items()
                      if c not in ("OK", "RESOURCE_EXHAUSTED")}
        assert not unexpected, unexpected
        if "RESOURCE_EXHAUSTED" in run_["codes"]:
            assert "queue is full" in run_["codes"]["RESOURCE_EXHAUSTED"]["sample"]
    assert soak["ok"] > 0
    # Every refusal the clients saw is a queue-full rejection the server counted.
    refused = sum(r["codes"].get("RESOURCE_EXHAUSTED", {}).get("count", 0) for r in (warm, soak))
    text = d.metrics()
    assert metric_value(text, 'nvfp4_admission_rejections_total{reason="queue_full"}') == refused
    assert metric_value(text, 'nvfp4_admission_rejections_total{reason="memory"}') in (0, None)
    assert abs(rss_end - rss_warm) <= 0.10 * rss_warm, (rss_warm, rss_end)
