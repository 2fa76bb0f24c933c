#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (committed; rerun after changing this file):

  corpus/safetensors/  small valid safetensors images (every dtype family, 0-d and empty
                       tensors, __metadata__, a writer-style padded header) and one file per
                       rejection rule of ParseSafetensors (the ten reference checks + duplicates);
  corpus/request/      serialized nvfp4.v1 TensorHeader, QuantizeTensorRequest and
                       QuantizeCheckpointRequest messages, valid and invalid.

Only the standard library: the protobuf wire format is encoded by hand (proto3, packed repeated
scalars), so no protoc/python-protobuf is needed.
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------- safetensors
def st(header, data=b"", pad=False, raw=None):
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    if pad:  # SafetensorsWriter: spaces so the data starts 8-byte aligned
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def safetensors_seeds():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, -7)
    seeds = {
        # valid
        "ok_empty": st({}),
        "ok_f32_2x3": st({"w": t("F32", [2, 3], 0, 24)}, f32),
        "ok_mixed_metadata": st(
            {"__metadata__": {"format": "pt", "k": "v"},
             "a.weight": t("BF16", [2, 2], 0, 8),
             "b.bias": t("F16", [2], 8, 12),
             "c": t("I64", [], 12, 20)},
            bytes(range(20)), pad=True),
        "ok_subbyte": st({"p": t("F4", [2, 4], 0, 4), "q": t("F6_E2M3", [4], 4, 7),
                          "r": t("F6_E3M2", [8], 7, 13)}, bytes(13)),
        "ok_fp8_bool": st({"s": t("F8_E4M3", [2, 8], 0, 16), "e": t("F8_E8M0", [1], 16, 17),
                           "m": t("BOOL", [3], 17, 20), "x": t("F8_E5M2", [1], 20, 21)},
                          bytes(21)),
        "ok_zero_size": st({"z": t("F32", [0, 5], 0, 0), "y": t("U8", [1], 0, 1)}, b"\x07"),
        "ok_all_ints": st({"a": t("U16", [1], 0, 2), "b": t("I16", [1], 2, 4),
                           "c": t("I32", [1], 4, 8), "d": t("U32", [1], 8, 12),
                           "e": t("U64", [1], 12, 20), "f": t("F64", [1], 20, 28),
                           "g": t("C64", [1], 28, 36), "h": t("I8", [1], 36, 37)}, bytes(37)),
        # accepted (prefix products fit uint64), but 2^62 * 2 overflows int64 before the zero
        "ok_zero_dim_huge_product": st({"z": t("F32", [1 << 62, 2, 0], 0, 0)}),
        "ok_unicode_name": st({"caf\u00e9.\u6f22.weight": t("F32", [1], 0, 4)}, bytes(4)),
        # rejected: one per rule
        "bad_1_short": b"\x02\x00\x00",
        "bad_2_header_too_long": struct.pack("<Q", 100_000_001) + b"{}",
        "bad_3_header_past_end": struct.pack("<Q", 64) + b"{}",
        "bad_4_not_utf8": st(None, raw=b'{"\xff":1}'),
        "bad_4_nul": st(None, raw=b'{}\x00{"a":1}'),
        "bad_4_bom": st(None, raw=b"\xef\xbb\xbf{}"),
        "bad_5_not_json": st(None, raw=b"{nope"),
        "bad_5_array": st(None, raw=b"[]"),
        "bad_5_unknown_dtype": st({"w": t("F128", [1], 0, 16)}, bytes(16)),
        "bad_5_extra_key": st({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4],
                                     "x": 1}}, bytes(4)),
        "bad_5_negative_dim": st({"w": t("F32", [-1], 0, 4)}, bytes(4)),
        "bad_5_metadata_value": st({"__metadata__": {"k": 1}}),
        "bad_6_gap": st({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}, bytes(12)),
        "bad_6_overlap": st({"a": t("F32", [2], 0, 8), "b": t("F32", [1], 4, 8)}, bytes(8)),
        "bad_7_overflow": st({"w": t("F32", [4294967296, 4294967296], 0, 0)}),
        "bad_8_bits": st({"w": t("F4", [3], 0, 2)}, bytes(2)),
        "bad_9_size": st({"w": t("F32", [2], 0, 4)}, bytes(4)),
        "bad_10_trailing": st({"w": t("F32", [1], 0, 4)}, bytes(5)),
        "bad_duplicate_key": st(None, raw=b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                          b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                                data=bytes(4)),
    }
    return seeds


# ------------------------------------------------------------------------------------- protobuf
def varint(n):
    n &= (1 << 64) - 1  # negative int64 -> ten bytes, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n):
    return key(field, 0) + varint(n)


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return key(field, 2) + varint(len(b)) + b


def f_float(field, x):
    return key(field, 5) + struct.pack("<f", x)


def f_packed(field, values):
    return f_bytes(field, b"".join(varint(v) for v in values))


def header(name="w", dtype=1, shape=(4, 16), method=0, objective=0, scale_max=0, amax=None,
           g=None, importance=0, output=0, deq=0):
    m = b""
    if name:
        m += f_bytes(1, name)
    if dtype:
        m += f_varint(2, dtype)
    if shape is not None:
        m += f_packed(3, shape)
    for field, value in ((4, method), (5, objective), (6, scale_max)):
        if value:
            m += f_varint(field, value)
    if amax is not None:
        m += f_float(7, amax)
    if g is not None:
        m += f_float(8, g)
    for field, value in ((9, importance), (10, output), (11, deq)):
        if value:
            m += f_varint(field, value)
    return m


def checkpoint(model="/models/in", out="/models/out", fmt=0, method=0, objective=0, scale_max=0,
               include=(), exclude=(), importance="", calibration="", shard=0, name=""):
    m = f_bytes(1, model) if model else b""
    m += f_bytes(2, out) if out else b""
    for field, value in ((3, fmt), (4, method), (5, objective), (6, scale_max)):
        if value:
            m += f_varint(field, value)
    for glob in include:
        m += f_bytes(7, glob)
    for glob in exclude:
        m += f_bytes(8, glob)
    if importance:
        m += f_bytes(9, importance)
    if calibration:
        m += f_bytes(10, calibration)
    if shard:
        m += f_varint(11, shard)
    if name:
        m += f_bytes(12, name)
    return m


def request_seeds():
    headers = {
        "hdr_f32": header(),
        "hdr_bf16_absmax_448": header(dtype=2, shape=(3, 17), method=1, scale_max=448),
        "hdr_f16_wmse_per_column": header(dtype=3, objective=2, importance=1, method=3),
        "hdr_wmse_per_element_both_bf16": header(objective=2, importance=2, output=3, deq=2,
                                                 method=2),
        "hdr_dequantized_amax_g": header(output=2, amax=3.5, g=0.125, method=4),
        "hdr_max_elements": header(shape=(1 << 20, 1 << 20)),
        "hdr_one_row": header(shape=(1, (1 << 40))),
        # invalid
        "hdr_bad_shape_1d": header(shape=(16,)),
        "hdr_bad_shape_negative": header(shape=(-1, 16)),
        "hdr_bad_shape_too_big": header(shape=((1 << 20) + 1, 1 << 20)),
        "hdr_bad_dtype": header(dtype=0),
        "hdr_bad_scale_max": header(scale_max=300),
        "hdr_bad_amax_nan": header(amax=float("nan")),
        "hdr_bad_g_tiny": header(g=1e-38),
        "hdr_bad_wmse_no_importance": header(objective=2),
        "hdr_bad_enum": header(method=99, output=7),
        "hdr_bad_name_long": header(name="n" * 300),
    }
    seeds = {}
    for name, h in headers.items():
        seeds[name] = h  # a bare TensorHeader (QuantizeTensorUnary's header)
        seeds["req_" + name] = f_bytes(1, h)  # QuantizeTensorRequest{header}
    seeds["req_data_chunk"] = f_bytes(3, struct.pack("<4f", 1, 2, 3, 4))
    seeds["req_importance_chunk"] = f_bytes(2, struct.pack("<2f", 1, 0.5))
    seeds["req_data_chunk_200"] = f_bytes(3, bytes(range(200)))  # two-byte length varint
    seeds["req_data_chunk_then_unknown"] = f_bytes(3, b"abcd") + f_varint(15, 1)
    seeds.update({
        "ckpt_default": checkpoint(),
        "ckpt_full": checkpoint(fmt=2, method=1, objective=2, scale_max=448,
                                include=["*.mlp.*"], exclude=["lm_head", "*.k_proj"],
                                importance="/m/imp.safetensors", calibration="/m/amax.json",
                                shard=1 << 30, name="job"),
        "ckpt_bad_no_out": checkpoint(out=""),
        "ckpt_bad_format": checkpoint(fmt=9),
        "ckpt_bad_scale_max": checkpoint(scale_max=447),
    })
    return seeds


def write(directory, seeds):
    path = os.path.join(HERE, "corpus", directory)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("safetensors", safetensors_seeds())
    write("request", request_seeds())
