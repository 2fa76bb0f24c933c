"""nvfp4q end to end: its safetensors output read by the `safetensors` package, AbsMax with
F = 448 against an independent numpy implementation of ModelOpt's export math
(nvfp4-formats.md sections 1.2 and 7), the fake-quant output against a numpy decoder, and the
stable JSON fields and exit codes."""
import json
import os
import pathlib
import signal
import subprocess
import time

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from nvfp4_reference import decode, modelopt_export

# safetensors' numpy loader looks the fp8 dtype up on numpy itself.
np.float8_e4m3fn = ml_dtypes.float8_e4m3fn

RNG = np.random.default_rng(7)


def run(nvfp4q, *args, check=True):
    result = subprocess.run([nvfp4q, *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("shape,dist,dtype", [
    ((64, 256), "normal", "f32"),
    ((33, 1024), "t3", "f32"),
    ((128, 64), "normal", "f16"),
    ((16, 4096), "outlier", "bf16"),
])
def test_absmax_448_is_bit_exact_with_modelopt(nvfp4q, tmp_path, shape, dist, dtype):
    n, k = shape
    if dist == "normal":
        w = RNG.normal(0, 0.02, shape)
    elif dist == "t3":
        w = RNG.standard_t(3, shape) * 0.01
    else:
        w = RNG.normal(0, 1, shape)
        w[:, ::97] *= 30
    w = w.astype(np.float32)
    if dtype == "f16":
        w = w.astype(np.float16)
        src = tmp_path / "w.npy"
        np.save(src, w)
        extra = []
    elif dtype == "bf16":
        w = w.astype(ml_dtypes.bfloat16)
        src = tmp_path / "w.bf16"
        w.tofile(src)
        extra = ["--dtype", "bf16", "--shape", f"{n},{k}"]
    else:
        src = tmp_path / "w.npy"
        np.save(src, w)
        extra = []
    out = tmp_path / "w.safetensors"
    deq = tmp_path / "deq.npy"
    result = run(nvfp4q, "quantize-tensor", "--input", src, "--output", out, "--method", "absmax",
                 "--scale-max", 448, "--dequantized", deq, "--json", *extra)
    report = json.loads(result.stdout)
    tensors = load_file(str(out))
    assert set(tensors) == {"weight", "weight_scale", "weight_scale_2"}
    assert tensors["weight"].dtype == np.uint8 and tensors["weight"].shape == (n, k // 2)
    assert tensors["weight_scale"].shape == (n, k // 16)
    assert tensors["weight_scale_2"].shape == () and tensors["weight_scale_2"].dtype == np.float32

    packed, scales, s2 = modelopt_export(w.astype(np.float32))
    assert np.array_equal(tensors["weight"], packed)
    assert np.array_equal(tensors["weight_scale"].view(np.uint8), scales)
    assert tensors["weight_scale_2"].view(np.uint32) == np.float32(s2).view(np.uint32)

    ours = np.load(deq)
    ref = decode(packed, scales, s2, k)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    err = (w.astype(np.float64) - ref) ** 2
    assert report["mse"] == pytest.approx(err.mean(), rel=1e-6)
    assert report["gain"] == 1.0 and report["method"] == "absmax"


def test_scalesweep_output_decodes_and_beats_absmax(nvfp4q, tmp_path):
    w = RNG.normal(0, 1, (48, 200)).astype(np.float32)  # K % 16 != 0: zero-padded to 208
    src = tmp_path / "w.npy"
    np.save(src, w)
    imp = tmp_path / "imp.npy"
    np.save(imp, np.exp(RNG.normal(0, 1, 200)).astype(np.float32))
    for objective in ("mse", "wmse"):
        out = tmp_path / f"{objective}.safetensors"
        deq = tmp_path / f"{objective}.npy"
        args = ["quantize-tensor", "--input", src, "--output", out, "--objective", objective,
                "--importance", imp, "--dequantized", deq, "--json", "--threads", 2]
        report = json.loads(run(nvfp4q, *args).stdout)
        for field in ("method", "objective", "scale_max", "global_scale", "mse", "nmse",
                      "sqnr_db", "absmax_mse", "gain", "candidates_per_block", "seconds",
                      "elements_per_second", "wmse"):
            assert field in report, field
        assert report["scale_max"] == 256 and report["method"] == "scalesweep"
        assert report["gain"] == pytest.approx(report["mse"] / report["absmax_mse"])
        t = load_file(str(out))
        assert t["weight"].shape == (48, 104) and t["weight_scale"].shape == (48, 13)
        ref = decode(t["weight"], t["weight_scale"].view(np.uint8), t["weight_scale_2"], 200)
        assert np.array_equal(np.load(deq).view(np.uint32), ref.view(np.uint32))
        assert report["mse"] == pytest.approx(((w.astype(np.float64) - ref) ** 2).mean(), rel=1e-6)
        assert t["weight"][:, 100:].max() == 0  # the padding quantises to zero
        if objective == "mse":
            assert report["gain"] < 0.85


def test_bf16_fake_quant_output_is_the_rne_of_the_f32_one(nvfp4q, tmp_path):
    w = RNG.normal(0, 3, (20, 96)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    run(nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output", tmp_path / "a.st",
        "--dequantized", tmp_path / "f32.npy")
    run(nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output", tmp_path / "b.st",
        "--dequantized", tmp_path / "d.bf16", "--dequantized-dtype", "bf16")
    bf16 = np.fromfile(tmp_path / "d.bf16", dtype=np.uint16).reshape(20, 96)
    ref = np.load(tmp_path / "f32.npy").astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(bf16, ref)


def test_errors_have_distinct_exit_codes(nvfp4q, tmp_path):
    bad = np.ones((4, 32), np.float32)
    bad[2, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "nan.npy", "--output",
            tmp_path / "o.safetensors", check=False)
    assert r.returncode == 3 and "row 2, column 5" in r.stderr and "NaN" in r.stderr
    r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "missing.npy", "--output",
            tmp_path / "o.safetensors", check=False)
    assert r.returncode == 4 and "missing.npy" in r.stderr
    r = run(nvfp4q, "quantize-tensor", "--input", "x", "--output", "y", "--method", "nope",
            check=False)
    assert r.returncode == 2
    np.save(tmp_path / "ok.npy", np.ones((4, 32), np.float32))
    r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "ok.npy", "--output",
            tmp_path / "o.safetensors", "--importance", tmp_path / "nan.npy", check=False)
    assert r.returncode == 3 and "importance" in r.stderr
    assert not (tmp_path / "o.safetensors").exists()
    # Every error of this machine's file system is an I/O error (4), whatever its errno says
    # (ENOTDIR would be FAILED_PRECONDITION, EACCES PERMISSION_DENIED, a server's refusal: 6).
    r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "ok.npy", "--output",
            tmp_path / "ok.npy" / "o.safetensors", check=False)
    assert r.returncode == 4 and "ok.npy/o.safetensors" in r.stderr, (r.returncode, r.stderr)
    r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "ok.npy" / "x.npy", "--output",
            tmp_path / "o.safetensors", check=False)
    assert r.returncode == 4, (r.returncode, r.stderr)


def test_ctrl_c_cancels_a_local_quantization_with_exit_7(nvfp4q, tmp_path):
    # Exhaustive on 32M elements: about 1.8 CPU-seconds on 2 cores, after a load of about 0.15.
    # The signal goes once the process has used 0.4 CPU-seconds: while the engine runs.
    np.save(tmp_path / "big.npy", RNG.standard_normal((4096, 8192), dtype=np.float32))
    proc = subprocess.Popen([nvfp4q, "quantize-tensor", "--input", tmp_path / "big.npy",
                             "--output", tmp_path / "o.safetensors", "--method", "exhaustive",
                             "--threads", "2"], stderr=subprocess.PIPE, text=True)
    stat = pathlib.Path(f"/proc/{proc.pid}/stat")
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds():
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline and cpu_seconds() < 0.4:
        time.sleep(0.005)
    assert proc.poll() is None, "nvfp4q finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 7, (proc.returncode, stderr)
    assert "interrupted" in stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_usage_errors_exit_2_before_any_work(nvfp4q, tmp_path):
    np.save(tmp_path / "w.npy", np.ones((4, 32), np.float32))
    (tmp_path / "w.raw").write_bytes(b"\0" * 256)
    w, raw = str(tmp_path / "w.npy"), str(tmp_path / "w.raw")
    out = str(tmp_path / "o.safetensors")
    for args, message in [
        (["quantize-tensor", "--input", raw, "--output", out, "--dtype", "bf16"],
         "needs both --dtype and --shape"),
        (["quantize-tensor", "--input", raw, "--output", out, "--dtype", "f8", "--shape", "4,32"],
         "--dtype must be"),
        (["quantize-tensor", "--input", raw, "--output", out, "--dtype", "bf16", "--shape",
          "4x32"], "--shape must be N,K"),
        (["quantize-tensor", "--input", w, "--output", out, "--threads", "-1"],
         "--threads: must be a number >= 0, got '-1'"),
        (["quantize", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q"), "--shard-size",
          "5XB"], "is not a size"),
        (["quantize", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q"),
          "--stream-tensors"], "--stream-tensors needs --server"),
        (["compare", w, "--methods", "absmax,bogus"], "unknown method 'bogus'"),
        (["bench", "--methods", "foo"], "unknown method 'foo'"),
        (["bench", "--rows", "0"], "must be positive"),
        (["quantize-tensor", "--input", w, "--output", out, "--amax", "5", "--global-scale",
          "0.003"], "--amax excludes --global-scale"),
        (["quantize-tensor", "--input", w, "--output", out, "--dequantized-dtype", "bf16"],
         "--dequantized-dtype requires --dequantized"),
        (["quantize-tensor", "--input", w, "--output", out, "--objective", "wmse"],
         "--objective wmse needs --importance"),
        (["quantize-tensor", "--input", w, "--output", out, "--amax", "-1"],
         "--amax: must be a number >= 0, got '-1'"),
        (["quantize-tensor", "--input", w, "--output", out, "--global-scale", "inf"],
         "--global-scale: must be a number > 0, got 'inf'"),
        (["quantize-tensor", "--input", w, "--output", out, "--token-file", w],
         "--token-file requires --server"),
        (["quantize", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q"), "--shard-size",
          "1000"], "--shard-size must be at least 1MiB"),
        (["quantize", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q"), "--objective",
          "wmse"], "--objective wmse needs --importance"),
    ]:
        r = run(nvfp4q, *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.returncode, r.stderr)
        assert r.stdout == "", (args, r.stdout)  # nothing ran, nothing printed
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "q").exists()


def test_a_given_scale_that_saturates_the_tensor_is_warned_about(nvfp4q, tmp_path):
    x = np.linspace(-4, 4, 16 * 64, dtype=np.float32).reshape(16, 64)
    np.save(tmp_path / "x.npy", x)
    base = ["quantize-tensor", "--input", tmp_path / "x.npy", "--output", tmp_path / "o.st"]
    # F = 256: the largest representable value is amax * 448 / 256.
    r = run(nvfp4q, *base, "--amax", "2")
    assert "warning: the tensor's max |x| 4 is above" in r.stderr and "saturate" in r.stderr
    assert "warning" not in run(nvfp4q, *base, "--amax", "2.5").stderr  # 4.375 >= 4
    assert "warning" not in run(nvfp4q, *base).stderr
    g = 4.0 / (6 * 448) * 0.9
    assert "saturate" in run(nvfp4q, *base, "--global-scale", str(g)).stderr
    # The tensor's own amax never warns, whatever the rounding of g = amax / (6 F).
    rng = np.random.default_rng(5)
    for i in range(12):
        y = (rng.standard_normal((4, 32)) * rng.uniform(0.01, 100)).astype(np.float32)
        np.save(tmp_path / "y.npy", y)
        amax = repr(float(np.abs(y).max()))
        for f in ("448", "256"):
            r = run(nvfp4q, "quantize-tensor", "--input", tmp_path / "y.npy", "--output",
                    tmp_path / "o.st", "--amax", amax, "--scale-max", f)
            assert "warning" not in r.stderr, (i, f, amax, r.stderr)


def test_checkpoint_outputs_never_land_on_or_in_an_input(nvfp4q, tmp_path, monkeypatch):
    # Refused before anything is read: the "weights" need not even be valid.
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    files = {model / "config.json": b"{}", model / "model.safetensors": b"weights",
             tmp_path / "cal.json": b"{}", tmp_path / "imp.safetensors": b"importance"}
    for path, data in files.items():
        path.write_bytes(data)
    base = ["quantize", "--model", "model"]
    for args, message in [
        (["--out", "model"], "--out (model) must not be --model or lie inside it"),
        (["--out", "./model/"], "must not be --model or lie inside it"),
        (["--out", "model/q"], "must not be --model or lie inside it"),
        (["--out", "q", "--report", "model/config.json"], "must not name a file inside --model"),
        (["--out", "q", "--report", tmp_path / "model" / "model.safetensors"],
         "must not name a file inside --model"),
        (["--out", "q", "--report", "model/new.json"], "must not name a file inside --model"),
        (["--out", "q", "--calibration", "cal.json", "--report", "cal.json"],
         "--report and --calibration name the same file"),
        (["--out", "q", "--importance", "imp.safetensors", "--report", "./imp.safetensors"],
         "--report and --importance name the same file"),
    ]:
        r = run(nvfp4q, *base, *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.returncode, r.stderr)
    for path, data in files.items():
        assert path.read_bytes() == data, path
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "q").exists()


def test_outputs_never_overwrite_an_input_or_each_other(nvfp4q, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "w.npy", np.ones((4, 32), np.float32))
    np.save(tmp_path / "imp.npy", np.ones(32, np.float32))
    before = (tmp_path / "w.npy").read_bytes()
    for args, message in [
        (["--output", "w.npy"], "--output and --input"),
        (["--output", tmp_path / "w.npy"], "--output and --input"),
        (["--output", "o.safetensors", "--dequantized", "./w.npy"], "--dequantized and --input"),
        (["--output", "o.safetensors", "--dequantized", "o.safetensors"],
         "--dequantized and --output"),
        (["--output", "imp.npy", "--objective", "wmse", "--importance", "imp.npy"],
         "--output and --importance"),
    ]:
        r = run(nvfp4q, "quantize-tensor", "--input", "w.npy", *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert (tmp_path / "w.npy").read_bytes() == before
    assert not (tmp_path / "o.safetensors").exists()
    # Rewriting its own earlier outputs is fine.
    for _ in range(2):
        run(nvfp4q, "quantize-tensor", "--input", "w.npy", "--output", "o.safetensors",
            "--dequantized", "dq.npy")


def test_bench_json(nvfp4q):
    r = run(nvfp4q, "bench", "--rows", 64, "--cols", 512, "--threads", "1,2", "--methods",
            "absmax,scalesweep", "--objectives", "mse,wmse", "--repeat", 1, "--json")
    report = json.loads(r.stdout)
    assert report["memcpy_elements_per_second"] > 0
    combos = {(x["method"], x["objective"], x["threads"]) for x in report["results"]}
    assert combos == {("absmax", "mse", 1), ("absmax", "mse", 2), ("scalesweep", "mse", 1),
                      ("scalesweep", "mse", 2), ("scalesweep", "wmse", 1),
                      ("scalesweep", "wmse", 2)}
    for x in report["results"]:
        assert x["memcpy_ratio"] == pytest.approx(
            x["elements_per_second"] / report["memcpy_elements_per_second"])


def test_compare_json_has_the_quantize_tensor_fields_of_each_method(nvfp4q, tmp_path):
    np.save(tmp_path / "w.npy", RNG.standard_normal((64, 256), dtype=np.float32))
    single = json.loads(run(nvfp4q, "quantize-tensor", "--input", tmp_path / "w.npy", "--output",
                            tmp_path / "w.safetensors", "--json").stdout)
    r = run(nvfp4q, "compare", tmp_path / "w.npy", "--methods", "absmax,scalesweep", "--json")
    results = json.loads(r.stdout)["results"]
    assert [x["method"] for x in results] == ["absmax", "scalesweep"]
    for x in results:
        assert set(x) == (set(single) - {"input", "output"}) | {"tensor"}, set(x) ^ set(single)
    # The same engine and math: the scalesweep row is the quantize-tensor run's.
    assert results[1]["mse"] == single["mse"] and results[1]["gain"] == single["gain"]
    assert results[0]["gain"] == 1.0
