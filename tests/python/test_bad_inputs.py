"""The bad-input table of docs/operations.md, case by case, over the wire against nvfp4d.

Every row of the table (its first column is the case id) must be a case here and every case a
row there (test_the_table_and_the_cases_agree): the documentation cannot drift from what the
server does. Each case sends one hostile or broken request and checks the gRPC status code and a
piece of the message.
"""
import json
import pathlib
import re
import shutil
import struct
import time

import grpc
import numpy as np
import pytest

from conftest import REPO, Daemon

F32 = None  # set from the generated module


def st_bytes(header, data=b""):
    """A safetensors file: 8-byte little-endian header length, header text, data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


class Env:
    """Generated stubs, a plain server, a token server and a confined server."""

    def __init__(self, pb, nvfp4d_path, tmp):
        self.pb, self.grpc_mod = pb
        self.tmp = tmp
        self.root = tmp / "root"
        self.root.mkdir()
        token = tmp / "token"
        token.write_text("s3cret\n")
        self.plain = Daemon(nvfp4d_path, "--max-message-mib", "1", metrics=False)
        self.token = Daemon(nvfp4d_path, "--auth-token-file", str(token), metrics=False)
        self.confined = Daemon(nvfp4d_path, "--allowed-root", str(self.root), metrics=False)
        self.channels = [grpc.insecure_channel(d.target) for d in (self.plain, self.token,
                                                                   self.confined)]

    def stub(self, which="plain"):
        channel = self.channels[["plain", "token", "confined"].index(which)]
        return self.grpc_mod.QuantizerStub(channel)

    def close(self):
        for c in self.channels:
            c.close()
        for d in (self.plain, self.token, self.confined):
            d.stop()

    # -- helpers --------------------------------------------------------------------------
    def header(self, **kw):
        h = dict(name="bad", dtype=self.pb.DTYPE_F32, shape=[4, 16])
        h.update(kw)
        return self.pb.TensorHeader(**h)

    def stream(self, messages, which="plain", timeout=30):
        stub = self.stub(which)
        for _ in stub.QuantizeTensor(iter(messages), timeout=timeout):
            pass

    def req(self, **kw):
        return self.pb.QuantizeTensorRequest(**kw)

    def unary(self, header, data=b"", importance=b"", which="plain", timeout=30):
        self.stub(which).QuantizeTensorUnary(
            self.pb.QuantizeTensorUnaryRequest(header=header, data=data, importance=importance),
            timeout=timeout)

    def good_data(self, rows=4, cols=16):
        return np.linspace(-1, 1, rows * cols, dtype="<f4").tobytes()

    def model(self, name, shard_bytes=None):
        """A one-tensor checkpoint under the confined root; shard_bytes replaces its file."""
        d = self.root / name
        d.mkdir()
        w = np.linspace(-1, 1, 32 * 32, dtype="<f4").tobytes()
        st = st_bytes({"m.q_proj.weight": {"dtype": "F32", "shape": [32, 32],
                                           "data_offsets": [0, len(w)]}}, w)
        (d / "model.safetensors").write_bytes(shard_bytes if shard_bytes is not None else st)
        (d / "config.json").write_text("{}")
        return d

    def checkpoint(self, model_dir, out_dir, which="confined", **kw):
        req = self.pb.QuantizeCheckpointRequest(model_dir=str(model_dir), out_dir=str(out_dir),
                                                **kw)
        for _ in self.stub(which).QuantizeCheckpoint(req, timeout=60):
            pass


# Case id -> (expected code, message fragment, action(env)). Ids are the table's first column.
def _cases():
    C = {}

    def case(cid, code, fragment):
        def register(fn):
            C[cid] = (code, fragment, fn)
            return fn
        return register

    SC = grpc.StatusCode

    # gRPC 1.51's callback API answers a request it cannot parse with UNIMPLEMENTED and no
    # message, before our handler runs (the sync API would say INTERNAL).
    @case("malformed-proto", SC.UNIMPLEMENTED, "")
    def _(e):
        call = e.channels[0].unary_unary("/nvfp4.v1.Quantizer/QuantizeTensorUnary",
                                         request_serializer=None, response_deserializer=None)
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=30)  # field 1 claims 4 GiB

    @case("no-header", SC.INVALID_ARGUMENT, "first message must carry the header")
    def _(e):
        e.stream([e.req(data=b"abcd")])

    @case("dtype-unspecified", SC.INVALID_ARGUMENT, "header.dtype")
    def _(e):
        e.stream([e.req(header=e.header(dtype=0))])

    @case("dtype-unknown", SC.INVALID_ARGUMENT, "header.dtype")
    def _(e):
        e.stream([e.req(header=e.header(dtype=99))])

    @case("shape-rank", SC.INVALID_ARGUMENT, "header.shape")
    def _(e):
        e.stream([e.req(header=e.header(shape=[2, 4, 16]))])

    @case("shape-zero-length", SC.INVALID_ARGUMENT, "header.shape")
    def _(e):
        e.stream([e.req(header=e.header(shape=[0, 16]))])

    @case("shape-negative", SC.INVALID_ARGUMENT, "header.shape")
    def _(e):
        e.stream([e.req(header=e.header(shape=[-4, 16]))])

    @case("shape-too-large", SC.INVALID_ARGUMENT, "2^40")
    def _(e):
        e.stream([e.req(header=e.header(shape=[1 << 21, 1 << 20]))])

    @case("method-unknown", SC.INVALID_ARGUMENT, "header.method")
    def _(e):
        e.stream([e.req(header=e.header(method=42))])

    @case("objective-unknown", SC.INVALID_ARGUMENT, "header.objective")
    def _(e):
        e.stream([e.req(header=e.header(objective=7))])

    @case("scale-max", SC.INVALID_ARGUMENT, "header.scale_max")
    def _(e):
        e.stream([e.req(header=e.header(scale_max=300))])

    @case("amax-nan", SC.INVALID_ARGUMENT, "header.amax")
    def _(e):
        e.stream([e.req(header=e.header(amax=float("nan")))])

    @case("wmse-without-importance", SC.INVALID_ARGUMENT, "importance_layout")
    def _(e):
        e.stream([e.req(header=e.header(objective=e.pb.OBJECTIVE_WMSE))])

    @case("name-too-long", SC.INVALID_ARGUMENT, "header.name")
    def _(e):
        e.stream([e.req(header=e.header(name="n" * 300))])

    @case("request-id-too-long", SC.INVALID_ARGUMENT, "header.request_id")
    def _(e):
        e.stream([e.req(header=e.header(request_id="r" * 200))])

    @case("data-exceeds-shape", SC.INVALID_ARGUMENT, "exceed")
    def _(e):
        e.stream([e.req(header=e.header()), e.req(data=b"\0" * (4 * 16 * 4 + 4))])

    @case("stream-ends-early", SC.INVALID_ARGUMENT, "ended early")
    def _(e):
        e.stream([e.req(header=e.header()), e.req(data=b"\0" * 100)])

    @case("chunk-oversized", SC.INVALID_ARGUMENT, "exceeds the limit")
    def _(e):  # (the plain server's 1 MiB message limit would refuse it earlier)
        e.stream([e.req(header=e.header(shape=[2048, 1024])),
                  e.req(data=b"\0" * ((4 << 20) + 4))], which="confined")

    @case("chunk-empty", SC.INVALID_ARGUMENT, "empty data chunk")
    def _(e):
        e.stream([e.req(header=e.header()), e.req(data=b"")])

    @case("second-header", SC.INVALID_ARGUMENT, "second header")
    def _(e):
        e.stream([e.req(header=e.header()), e.req(header=e.header())])

    @case("nan-element", SC.INVALID_ARGUMENT, "element 21 (row 1, column 5) is NaN")
    def _(e):
        x = np.ones(64, dtype="<f4")
        x[21] = np.nan
        e.stream([e.req(header=e.header()), e.req(data=x.tobytes())])

    @case("inf-element", SC.INVALID_ARGUMENT, "element 3 (row 0, column 3)")
    def _(e):
        x = np.ones(64, dtype="<f4")
        x[3] = np.inf
        e.unary(e.header(), x.tobytes())

    @case("importance-negative", SC.INVALID_ARGUMENT, "importance")
    def _(e):
        imp = np.ones(16, dtype="<f4")
        imp[2] = -1
        e.unary(e.header(objective=e.pb.OBJECTIVE_WMSE,
                         importance_layout=e.pb.IMPORTANCE_LAYOUT_PER_COLUMN),
                e.good_data(), imp.tobytes())

    @case("unary-size-mismatch", SC.INVALID_ARGUMENT, "data")
    def _(e):
        e.unary(e.header(), e.good_data()[:-4])

    @case("unary-message-too-large", SC.RESOURCE_EXHAUSTED, "")
    def _(e):  # the plain server runs with --max-message-mib 1
        e.unary(e.header(shape=[1024, 512]), b"\0" * (1024 * 512 * 4))

    @case("missing-token", SC.UNAUTHENTICATED, "bearer token")
    def _(e):
        e.stream([e.req(header=e.header())], which="token")

    @case("expired-deadline", SC.DEADLINE_EXCEEDED, "")
    def _(e):  # the upload stalls past the call's deadline
        def messages():
            yield e.req(header=e.header())
            time.sleep(2)
            yield e.req(data=e.good_data())
        e.stream(messages(), timeout=0.5)

    @case("checkpoint-disabled", SC.FAILED_PRECONDITION, "--allowed-root")
    def _(e):
        e.checkpoint(e.tmp / "m", e.tmp / "o", which="plain")

    @case("checkpoint-traversal", SC.PERMISSION_DENIED, "'..' is not allowed")
    def _(e):
        e.checkpoint(e.model("traversal"), f"{e.root}/sub/../../escape")

    @case("checkpoint-outside-root", SC.PERMISSION_DENIED, "outside the server's allowed roots")
    def _(e):
        e.checkpoint(e.tmp, e.root / "o-outside")

    @case("checkpoint-symlink-escape", SC.PERMISSION_DENIED,
          "outside the server's allowed roots")
    def _(e):
        (e.root / "link").symlink_to(e.tmp)
        e.checkpoint(e.root / "link", e.root / "o-link")

    @case("checkpoint-relative-path", SC.INVALID_ARGUMENT, "must be absolute")
    def _(e):
        e.checkpoint("relative/model", e.root / "o-rel")

    @case("checkpoint-missing-model", SC.NOT_FOUND, "no such file or directory")
    def _(e):
        e.checkpoint(e.root / "absent", e.root / "o-absent")

    @case("checkpoint-format-unknown", SC.INVALID_ARGUMENT, "format")
    def _(e):
        e.checkpoint(e.model("fmt"), e.root / "o-fmt", format=9)

    @case("checkpoint-output-not-empty", SC.FAILED_PRECONDITION, "not an empty directory")
    def _(e):
        model = e.model("nonempty")
        (e.root / "o-full").mkdir()
        (e.root / "o-full" / "x").write_text("x")
        e.checkpoint(model, e.root / "o-full")

    @case("checkpoint-already-quantized", SC.FAILED_PRECONDITION, "already has a quantization_config")
    def _(e):
        model = e.model("quantized")
        (model / "config.json").write_text('{"quantization_config": {}}')
        e.checkpoint(model, e.root / "o-q")

    @case("safetensors-truncated", SC.INVALID_ARGUMENT, "the tensors cover")
    def _(e):
        w = b"\0" * 64
        st = st_bytes({"m.q_proj.weight": {"dtype": "F32", "shape": [1, 16],
                                           "data_offsets": [0, 64]}}, w)
        e.checkpoint(e.model("truncated", st[:-10]), e.root / "o-trunc")

    @case("safetensors-overlapping", SC.INVALID_ARGUMENT, "do not continue the previous tensor")
    def _(e):
        st = st_bytes({"a.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                       "b.weight": {"dtype": "F32", "shape": [16], "data_offsets": [32, 96]}},
                      b"\0" * 96)
        e.checkpoint(e.model("overlap", st), e.root / "o-overlap")

    @case("safetensors-oversized-header", SC.INVALID_ARGUMENT, "exceeds the limit")
    def _(e):
        e.checkpoint(e.model("hugeheader", struct.pack("<Q", 200_000_000) + b"{}"),
                     e.root / "o-huge")

    @case("safetensors-duplicate-name", SC.INVALID_ARGUMENT, "duplicate key")
    def _(e):
        text = (b'{"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
                b' "a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')
        e.checkpoint(e.model("dup", st_bytes(text, b"\0" * 8)), e.root / "o-dup")

    @case("safetensors-unknown-dtype", SC.INVALID_ARGUMENT, "unknown dtype")
    def _(e):
        st = st_bytes({"a.weight": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}},
                      b"\0\0")
        e.checkpoint(e.model("dtype", st), e.root / "o-dtype")

    @case("safetensors-not-json", SC.INVALID_ARGUMENT, "not valid JSON")
    def _(e):
        e.checkpoint(e.model("notjson", st_bytes(b"{not json", b"")), e.root / "o-nj")

    return C


CASES = _cases()


@pytest.fixture(scope="module")
def env(pb, nvfp4q, tmp_path_factory):
    e = Env(pb, str(pathlib.Path(nvfp4q).parent / "nvfp4d"), tmp_path_factory.mktemp("bad"))
    yield e
    e.close()


@pytest.mark.parametrize("cid", sorted(CASES))
def test_bad_input(env, cid):
    code, fragment, action = CASES[cid]
    with pytest.raises(grpc.RpcError) as info:
        action(env)
    assert info.value.code() == code, (cid, info.value.code(), info.value.details())
    assert fragment in (info.value.details() or ""), (cid, info.value.details())
    # The server survives every case.
    env.stub().GetServerInfo(env.pb.GetServerInfoRequest(), timeout=10)


def test_the_table_and_the_cases_agree():
    text = (REPO / "docs/operations.md").read_text()
    section = text.split("## Bad inputs", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert len(rows) >= 25
    assert sorted(rows) == sorted(CASES), set(rows) ^ set(CASES)
    for cid in rows:
        code = CASES[cid][0].name
        row = re.search(rf"^\| `{cid}` \|.*$", section, flags=re.M).group(0)
        assert code in row, (cid, code, row)
