"""scripts/cuda_bench_markdown.py turns a real nvfp4_cuda_bench JSON (here from the benchmark on
the simulated device, whose JSON has the GPU run's fields) into the docs' tables: one row per
method with its figures, every target with its verdict, the host path, and the PyTorch
baselines when torch_baseline.py --record added them."""
import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "cuda_bench_markdown.py"


def simulated_bench_json(tmp_path):
    out = tmp_path / "bench.json"
    bench = os.environ["NVFP4_CUDA_BENCH_SIMULATED"]
    result = subprocess.run([bench, "--rows", "64", "--cols", "1024", "--warmup", "0",
                             "--iters", "1", "--json-file", out],
                            env={**os.environ, "NVFP4_SIM_DEVICES": "1"}, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return out


def markdown(path, *args):
    result = subprocess.run([sys.executable, SCRIPT, path, *args], capture_output=True, text=True)
    return result


def rows_of(text, first_cell):
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_every_figure_of_the_benchmark_is_in_the_tables(tmp_path):
    path = simulated_bench_json(tmp_path)
    bench = json.loads(path.read_text())
    result = markdown(path, "--gpu", "NVIDIA H100 80GB HBM3")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("NVIDIA H100 80GB HBM3: 64 × 1024 bf16 in device memory")
    assert len(bench["methods"]) == 7
    for r in bench["methods"]:
        (row,) = [line for line in rows_of(text, r["method"]) if line.count("|") == 10]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == ("one" if r["one_pass"] else "two")
        assert cells[2] == f"{r['device_ms'] * 1e3:.1f}"
        assert cells[3] == f"{r['device_ms_as_called'] * 1e3:.1f}"
        assert cells[6] == f"{r['vs_absmax']:.2f}"
        assert cells[8] == f"{r['gain']:.4f}"
    for t in bench["targets"]:
        sense = "≤" if t["at_most"] else "≥"
        assert f"- {t['name']}: {t['value']:.3f} (goal {sense} {t['goal']:.2f}): " in text
    assert sum(1 for t in bench["targets"] if t["at_most"]) == 3  # the three time ratios
    for r in bench["host_path"]:
        assert any(line.count("|") == 5 for line in rows_of(text, r["method"]))
    assert "PyTorch baselines: not measured in this run" in text


def test_recorded_torch_baselines_and_their_ratios_are_listed(tmp_path):
    path = simulated_bench_json(tmp_path)
    bench = json.loads(path.read_text())
    bench["torch_baselines"] = {
        "torch": "2.11.0", "scale_max": 256,
        "runs": [{"method": "absmax eager", "ms": 3.0, "mean_ms": 3.1, "gelem_per_s": 22.4,
                  "first_call_s": 0.5, "mse_vs_absmax": 1.0},
                 {"method": "sweep compiled", "ms": 37.0, "mean_ms": 37.5, "gelem_per_s": 1.81,
                  "first_call_s": 21.0, "mse_vs_absmax": 0.7816}],
        "ratios": [{"ours": "absmax", "torch": "absmax eager", "ratio": 30.25}]}
    path.write_text(json.dumps(bench))
    text = markdown(path).stdout
    assert "| sweep compiled | 37.000 | 37.500 | 1.81 | 21.0 | 0.7816 |" in text
    assert "- ours (absmax) / PyTorch absmax eager: **30.2×**" in text
    assert "not measured" not in text


def test_other_json_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"methods": []}')
    result = markdown(path)
    assert result.returncode == 1 and "not the benchmark's JSON" in result.stderr
