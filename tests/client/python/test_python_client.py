"""nvfp4client (client/python) against a real nvfp4d: the bytes equal the embedded engine's
(nvfp4q quantize-tensor, run here as an independent reference), shapes and dtypes are sent as
they are, and retries, cancellation, auth and checkpoint jobs behave as docs/python.md says."""
import dataclasses
import gc
import json
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "pylib"))
from nvfp4_files import assert_same_tree  # noqa: E402
from nvfp4_reference import decode  # noqa: E402

np.float8_e4m3fn = ml_dtypes.float8_e4m3fn  # what safetensors.numpy looks up for F8_E4M3


def reference(bin_dir, tmp_path, w, *args, importance=None):
    """nvfp4q quantize-tensor, embedded (no server): packed, scale bytes, g."""
    if w.dtype == ml_dtypes.bfloat16:
        source = tmp_path / "w.bf16"
        source.write_bytes(w.tobytes())
        inputs = ["--input", source, "--dtype", "bf16", "--shape", f"{w.shape[0]},{w.shape[1]}"]
    else:
        source = tmp_path / "w.npy"
        np.save(source, w)
        inputs = ["--input", source]
    if importance is not None:
        np.save(tmp_path / "imp.npy", importance.astype(np.float32))
        inputs += ["--importance", tmp_path / "imp.npy"]
    out = tmp_path / "ref.safetensors"
    subprocess.run([bin_dir / "nvfp4q", "quantize-tensor", *inputs, "--output", out, *args],
                   check=True, capture_output=True)
    st = load_file(str(out))
    return st["weight"], st["weight_scale"].view(np.uint8), np.float32(st["weight_scale_2"])


def assert_same_bytes(q, ref):
    packed, scales, g = ref
    assert q.packed.dtype == np.uint8 and q.scales.dtype == ml_dtypes.float8_e4m3fn
    assert np.array_equal(q.packed, packed)
    assert np.array_equal(q.scales.view(np.uint8), scales)
    assert np.float32(q.global_scale) == g


def gaussian(shape, dtype, scale=0.02, seed=2026):
    """The same data for the same arguments, whichever tests ran before."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, shape).astype(np.float32).astype(dtype)


# -- the bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("method", ["scalesweep", "absmax", "four-over-six", "exhaustive"])
def test_bytes_equal_the_embedded_engine(nvfp4client, server, bin_dir, tmp_path, dtype, method):
    w = gaussian((48, 200), dtype)  # 200 columns: the last block of each row is padded
    w[3, :16] = 0  # an all-zero block
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(w, method=method)
        assert_same_bytes(q, reference(bin_dir, tmp_path, w, "--method", method))
        # ModelOpt's own rule and F: the CLI's --scale-max 448 --method absmax.
        q448 = client.quantize(w, method="absmax", scale_max=448)
        assert_same_bytes(q448, reference(bin_dir, tmp_path, w, "--method", "absmax",
                                          "--scale-max", "448"))
    assert (q.rows, q.cols, q.padded_cols) == (48, 200, 208)
    assert q.packed.shape == (48, 104) and q.scales.shape == (48, 13)
    assert q.amax == float(np.abs(w.astype(np.float32)).max())
    assert q.metrics.elements == 48 * 200 and q.metrics.objective == "mse"
    if method != "absmax":
        assert q.metrics.gain < 1


@pytest.mark.parametrize("layout", ["per_column", "per_element"])
def test_wmse_with_importance_equals_the_embedded_engine(nvfp4client, server, bin_dir, tmp_path,
                                                         layout):
    w = gaussian((32, 96), ml_dtypes.bfloat16)
    shape = (96,) if layout == "per_column" else (32, 96)
    importance = np.random.default_rng(7).lognormal(0, 1.5, shape).astype(np.float32)
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(w, objective="wmse", importance=importance)
        plain = client.quantize(w, importance=importance)  # MSE: importance only adds figures
    assert_same_bytes(q, reference(bin_dir, tmp_path, w, "--objective", "wmse",
                                   importance=importance))
    assert q.metrics.objective == "wmse" and q.metrics.wmse_gain < 1
    assert plain.metrics.objective == "mse" and plain.metrics.wmse is not None
    assert not np.array_equal(q.scales.view(np.uint8), plain.scales.view(np.uint8))


def test_streamed_and_unary_calls_give_the_same_bytes(nvfp4client, server):
    w = gaussian((256, 320), np.float32)
    with nvfp4client.Client(server.target, chunk_bytes=4096) as client:
        unary = client.quantize(w, output="both")
        # Below every tensor's size the client streams: 80 data chunks of 4 KiB here.
        client._limits = dataclasses.replace(client.info().limits, max_message_bytes=0)
        uploads = []
        streamed = client.quantize(w, output="both",
                                   progress=lambda done, total, phase: uploads.append(
                                       (done, total, phase)))
    for field in ("packed", "scales", "dequantized"):
        assert np.array_equal(getattr(unary, field).view(np.uint8),
                              getattr(streamed, field).view(np.uint8)), field
    sent = [u for u in uploads if u[2] == "upload"]
    assert len(sent) == w.nbytes // 4096 and sent[-1][:2] == (w.nbytes, w.nbytes)
    assert [u for u in uploads if u[2] == "download"][-1][0] == \
        unary.packed.nbytes + unary.scales.nbytes + unary.dequantized.nbytes


def test_dequantized_outputs_decode_the_packed_bytes(nvfp4client, server):
    w = gaussian((40, 64), np.float32, scale=3.0)
    with nvfp4client.Client(server.target) as client:
        both = client.quantize(w, output="both")
        only = client.quantize(w, output="dequantized", dequantized_dtype="bf16")
    expected = decode(both.packed, both.scales.view(np.uint8), both.global_scale, 64)
    assert both.dequantized.dtype == np.float32
    assert np.array_equal(both.dequantized, expected)
    assert only.packed is None and only.scales is None
    assert only.dequantized.dtype == ml_dtypes.bfloat16
    assert np.array_equal(only.dequantized, expected.astype(ml_dtypes.bfloat16))
    with pytest.raises(ValueError, match="no packed output"):
        only.modelopt_tensors()


# -- what is sent ----------------------------------------------------------------------------

def test_nd_and_1d_tensors_are_quantised_along_their_last_axis(nvfp4client, server):
    x = gaussian((2, 3, 40), np.float32)
    v = gaussian((40,), np.float32)
    with nvfp4client.Client(server.target) as client:
        q3 = client.quantize(x, output="both")
        q2 = client.quantize(x.reshape(6, 40))
        q1 = client.quantize(v, output="both")
        row = client.quantize(v.reshape(1, 40))
    assert q3.packed.shape == (2, 3, 24) and q3.scales.shape == (2, 3, 3)
    assert q3.dequantized.shape == x.shape and (q3.rows, q3.cols) == (6, 40)
    assert np.array_equal(q3.packed.reshape(6, 24), q2.packed)
    assert q1.packed.shape == (24,) and q1.scales.shape == (3,) and q1.dequantized.shape == (40,)
    assert np.array_equal(q1.packed, row.packed[0])


def test_layouts_and_byte_orders_do_not_change_the_result(nvfp4client, server):
    w = gaussian((64, 48), np.float32)
    with nvfp4client.Client(server.target) as client:
        base = client.quantize(np.ascontiguousarray(w.T))
        transposed_view = client.quantize(w.T)  # not C-contiguous
        big_endian = client.quantize(np.ascontiguousarray(w.T).astype(">f4"))
    for q in (transposed_view, big_endian):
        assert np.array_equal(q.packed, base.packed)
        assert np.array_equal(q.scales.view(np.uint8), base.scales.view(np.uint8))


def test_unsupported_inputs_are_refused_before_sending(nvfp4client, server):
    with nvfp4client.Client(server.target) as client:
        with pytest.raises(TypeError, match=r"float64.*astype\(np.float32\)"):
            client.quantize(np.zeros((4, 16)))
        with pytest.raises(TypeError, match="int32"):
            client.quantize(np.zeros((4, 16), np.int32))
        with pytest.raises(TypeError, match="numpy array or a torch tensor"):
            client.quantize([[1.0] * 16])
        with pytest.raises(ValueError, match="0-d"):
            client.quantize(np.array(1.0, np.float32))
        with pytest.raises(ValueError, match="no elements"):
            client.quantize(np.zeros((0, 16), np.float32))
        with pytest.raises(ValueError, match="method must be one of"):
            client.quantize(np.ones((1, 16), np.float32), method="gptq")
        with pytest.raises(ValueError, match="needs importance"):
            client.quantize(np.ones((1, 16), np.float32), objective="wmse")
        with pytest.raises(ValueError, match=r"importance: shape \(15,\)"):
            client.quantize(np.ones((2, 16), np.float32), importance=np.ones(15, np.float32))
        with pytest.raises(TypeError, match="masked array"):
            client.quantize(np.ma.masked_array(np.ones((2, 16), np.float32)))
        with pytest.raises(ValueError, match="request_id is per tensor"):
            list(client.quantize_many([np.ones((2, 16), np.float32)], request_id="x"))
        w = np.ones((2, 16), np.float32)
        for scale_max, error in ((448.0, TypeError), ("448", TypeError), (True, TypeError),
                                 (-1, ValueError), (300, ValueError)):
            with pytest.raises(error, match="scale_max"):
                client.quantize(w, scale_max=scale_max)
        with pytest.raises(TypeError, match="scale_max"):
            client.quantize_checkpoint("/m", "/o", scale_max=448.0)
        # Finite float64 values that float32 (the wire type) cannot hold would become inf.
        with pytest.raises(ValueError, match="amax = 1e\\+39 is beyond float32's range"):
            client.quantize(w, amax=1e39)
        with pytest.raises(ValueError, match="global_scale must be finite"):
            client.quantize(w, global_scale=float("inf"))
        with pytest.raises(TypeError, match="amax must be a number"):
            client.quantize(w, amax="1.5")
        big = np.ones(16)
        big[3] = 1e39
        with pytest.raises(ValueError, match=r"importance value 3 \(1e\+39\) is beyond float32"):
            client.quantize(w, importance=big)
        assert client.jobs() == []  # nothing reached the server


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_the_client_sends_the_exact_amax_and_the_server_names_bad_elements(
        nvfp4client, server, dtype):
    w = gaussian((8, 32), dtype)
    w[5, 7] = -4 * float(np.abs(w.astype(np.float32)).max())  # the maximum is negative
    seen = []
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(w, request_id=f"amax-{np.dtype(dtype).name}")
        seen.append(client.job(q.job_id))
        for bad in (np.nan, np.inf):
            x = w.copy()
            x[2, 9] = bad
            with pytest.raises(nvfp4client.InvalidArgumentError,
                               match=r"element 73 \(row 2, column 9\)") as info:
                client.quantize(x)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert q.amax == float(np.abs(w.astype(np.float32)).max())
    assert seen[0].request_id == f"amax-{np.dtype(dtype).name}"
    assert seen[0].state == "succeeded" and seen[0].kind == "tensor"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_the_amax_scan_is_exact_on_edge_values(nvfp4client, dtype):
    from nvfp4client._tensors import finite_amax, tensor_bytes

    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    cases = {
        "negative max": [0.5, -3.25, 1.0, -0.0],
        "subnormals only": [tiny, -2 * tiny, 0.0],
        "zeros": [0.0, -0.0],
        "largest finite": [float(ml_dtypes.finfo(dtype).max), -1.0],
    }
    for what, values in cases.items():
        x = np.array(values * 8, np.float32).astype(dtype).reshape(2, -1)
        expected = float(np.abs(x.astype(np.float32)).max())
        assert finite_amax(tensor_bytes(x)) == expected, what
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 16), np.float32).astype(dtype)
        x[1, 3] = bad
        assert finite_amax(tensor_bytes(x)) is None


def test_an_all_zero_tensor_gets_the_embedded_bytes(nvfp4client, server, bin_dir, tmp_path):
    w = np.zeros((4, 32), np.float32)
    with nvfp4client.Client(server.target) as client:
        assert_same_bytes(client.quantize(w), reference(bin_dir, tmp_path, w))


def test_amax_and_global_scale_exclude_each_other(nvfp4client, server):
    # As nvfp4q's --amax and --global-scale: with both, nvfp4d would take g and ignore amax.
    with nvfp4client.Client(server.target) as client:
        with pytest.raises(ValueError, match="amax and global_scale exclude each other"):
            client.quantize(gaussian((4, 16), np.float32), amax=1.0, global_scale=0.001)
        with pytest.raises(ValueError, match="amax and global_scale exclude each other"):
            client.quantize_many([gaussian((4, 16), np.float32)], amax=1.0, global_scale=0.001)
        assert client.jobs() == []


def test_a_fused_group_shares_its_global_scale(nvfp4client, server, bin_dir, tmp_path):
    q_proj = gaussian((32, 64), np.float32, 0.02)
    k_proj = gaussian((16, 64), np.float32, 0.05)
    group_amax = float(max(np.abs(q_proj).max(), np.abs(k_proj).max()))
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(q_proj, amax=group_amax)
        k = client.quantize(k_proj, amax=group_amax)
        by_g = client.quantize(q_proj, global_scale=q.global_scale)
    assert q.global_scale == k.global_scale and q.amax == group_amax
    assert np.array_equal(by_g.packed, q.packed)
    # Given g, the result's amax is the tensor's own: g did not come from an amax.
    assert by_g.amax == float(np.abs(q_proj).max()) != group_amax
    _, _, own_g = reference(bin_dir, tmp_path, q_proj)
    assert own_g != np.float32(q.global_scale)  # q_proj alone would get its own g


# -- many tensors, retries, cancellation, auth -----------------------------------------------

def test_quantize_many_keeps_the_order_and_raises_the_first_failure(nvfp4client, server):
    tensors = [gaussian((16 * (i + 1), 48), np.float32) for i in range(7)]
    with nvfp4client.Client(server.target) as client:
        singles = [client.quantize(t) for t in tensors]
        many = list(client.quantize_many([(f"t{i}", t) for i, t in enumerate(tensors)],
                                         max_in_flight=3))
        names = {j.id: j.name for j in client.jobs()}
        bad = [t.copy() for t in tensors]
        bad[4][0, 0] = np.nan
        got = []
        with pytest.raises(nvfp4client.InvalidArgumentError, match="NaN"):
            for q in client.quantize_many(bad, max_in_flight=2):
                got.append(q)
    assert [q.packed.shape for q in many] == [q.packed.shape for q in singles]
    for a, b in zip(many, singles):
        assert np.array_equal(a.packed, b.packed)
    assert [names[q.job_id] for q in many] == [f"t{i}" for i in range(7)]
    assert len(got) == 4


def test_quantize_many_checks_its_arguments_when_called(nvfp4client, server):
    w = gaussian((4, 16), np.float32)
    with nvfp4client.Client(server.target) as client:
        # Each raises from the call itself, not from the first next() of the generator.
        for options, error, match in (
                (dict(max_in_flight=0), ValueError, "max_in_flight must be at least 1"),
                (dict(max_in_flight=2.0), TypeError, "max_in_flight must be an integer"),
                (dict(request_id="x"), ValueError, "request_id is per tensor"),
                (dict(methd="absmax"), TypeError, "options quantize.. does not take: methd"),
                (dict(method="gptq"), ValueError, "method must be one of"),
                (dict(scale_max=100), ValueError, "scale_max")):
            with pytest.raises(error, match=match):
                client.quantize_many([w], **options)
        # An array is a batch of its rows to a for loop: refused, not quantised row by row.
        with pytest.raises(TypeError, match="iterable of tensors"):
            client.quantize_many(w)
        assert client.jobs() == []
        # A malformed item is raised in input order, after the results before it.
        for bad, match in (((w,), "item 1 is a tuple of 1"),
                           ((w, "b"), "item 1 is a tuple that starts with a ndarray")):
            got = []
            with pytest.raises(TypeError, match=match):
                for q in client.quantize_many([("a", w), bad, ("c", w)]):
                    got.append(q)
            assert len(got) == 1


class FlakyProxy:
    """A gRPC proxy in front of nvfp4d that answers the first `failures` QuantizeTensor calls
    with `code` and forwards everything else byte for byte (what a replica that is draining,
    or whose queue is full, looks like to the client)."""

    def __init__(self, upstream, failures, code):
        self.failures = failures
        self.attempts = 0
        self.channel = grpc.insecure_channel(upstream)
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "nvfp4.v1.Quantizer", {
                "QuantizeTensorUnary": grpc.unary_unary_rpc_method_handler(self.unary),
                "QuantizeCheckpoint": grpc.unary_stream_rpc_method_handler(self.checkpoint),
                "GetServerInfo": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: self.channel.unary_unary(
                        "/nvfp4.v1.Quantizer/GetServerInfo")(request)),
            })])
        self.code = code
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def unary(self, request, context):
        self.attempts += 1
        if self.attempts <= self.failures:
            context.abort(self.code, "replica draining (test proxy)")
        return self.channel.unary_unary("/nvfp4.v1.Quantizer/QuantizeTensorUnary")(request)

    def checkpoint(self, request, context):
        self.attempts += 1
        if self.attempts <= self.failures:
            context.abort(self.code, "replica lost (test proxy)")
        yield from self.channel.unary_stream("/nvfp4.v1.Quantizer/QuantizeCheckpoint")(request)

    def stop(self):
        self.server.stop(0)
        self.channel.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retries_carry_one_request_id_and_stop_at_the_limit(nvfp4client, server, code):
    w = gaussian((16, 32), np.float32)
    proxy = FlakyProxy(server.target, failures=2, code=code)
    try:
        with nvfp4client.Client(f"127.0.0.1:{proxy.port}", retries=3) as client:
            q = client.quantize(w, request_id="retry-me")
        assert proxy.attempts == 3
        with nvfp4client.Client(server.target) as direct:
            assert direct.job(q.job_id).request_id == "retry-me"
        proxy.attempts = 0
        with nvfp4client.Client(f"127.0.0.1:{proxy.port}", retries=2) as client:
            with pytest.raises(nvfp4client.Nvfp4Error, match="draining") as info:
                client.quantize(w)
        assert info.value.code == code and info.value.retryable and proxy.attempts == 2
    finally:
        proxy.stop()


def test_bad_requests_are_not_retried(nvfp4client, server):
    proxy = FlakyProxy(server.target, failures=5, code=grpc.StatusCode.INVALID_ARGUMENT)
    try:
        with nvfp4client.Client(f"127.0.0.1:{proxy.port}", retries=3) as client:
            with pytest.raises(nvfp4client.InvalidArgumentError):
                client.quantize(gaussian((4, 16), np.float32))
        assert proxy.attempts == 1
    finally:
        proxy.stop()


def test_upload_chunks_fit_the_servers_message_limit(nvfp4client, nvfp4d):
    # nvfp4d takes messages up to --max-message-mib (1 MiB here), whatever max_chunk_bytes it
    # advertises: a server that advertises 4 MiB chunks (as nvfp4d did before it capped them
    # by the message limit) would refuse each of the client's 4 MiB chunks.
    server = nvfp4d("--max-message-mib", "1", "--threads", "2")
    w = gaussian((1024, 1024), np.float32)  # 4 MiB: streamed
    uploads = []
    with nvfp4client.Client(server.target, retries=1) as client:
        client._limits = dataclasses.replace(client.info().limits, max_chunk_bytes=4 << 20)
        q = client.quantize(w, progress=lambda done, total, phase: uploads.append(done)
                            if phase == "upload" else None)
    steps = np.diff([0] + uploads)
    assert uploads[-1] == w.nbytes and steps.max() < 1 << 20
    assert q.packed.shape == (1024, 512)


@pytest.mark.parametrize("limit", ["server", "client"])
def test_message_size_errors_are_not_retried(nvfp4client, nvfp4d, limit):
    """gRPC's "message larger than max" is RESOURCE_EXHAUSTED like a full queue, but every
    attempt would get it again."""
    w = gaussian((1024, 1024), np.float32)  # 4 MiB: streamed in 4 MiB chunks by default
    if limit == "server":
        server = nvfp4d("--max-message-mib", "1", "--threads", "2")
        client = nvfp4client.Client(server.target, retries=3)
        # A server that advertises larger limits than it takes.
        client._limits = dataclasses.replace(client.info().limits, max_chunk_bytes=4 << 20,
                                             max_message_bytes=64 << 20)
    else:
        server = nvfp4d("--threads", "2")
        client = nvfp4client.Client(server.target, retries=3, channel_options={
            "grpc.max_send_message_length": 1 << 20})
    attempts = []
    stream = client._stream
    client._stream = lambda *args, **kwargs: attempts.append(1) or stream(*args, **kwargs)
    with client:
        with pytest.raises(nvfp4client.Nvfp4Error, match="message larger than max.*not "
                           "retried") as info:
            client.quantize(w)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not info.value.retryable and len(attempts) == 1


def wait_for_state(client, state, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = client.jobs(states=[state])
        if jobs:
            return jobs[0]
        time.sleep(0.02)
    raise AssertionError(f"no {state} job within {timeout} s")


class StalledUpload:
    """A progress callback that holds the upload of tensors of `nbytes` after its first chunk
    until released: the job (running from the first rows on, since the client sends the amax)
    then waits for its input on any machine, however fast its engine."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.release = threading.Event()

    def __call__(self, done, total, phase):
        if phase == "upload" and total == self.nbytes:
            self.release.wait(60)


def in_thread(fn):
    outcome = []

    def work():
        try:
            outcome.append(fn())
        except BaseException as e:  # noqa: B036 - the test inspects it
            outcome.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("how", ["cancel_all", "cancel_job"])
def test_a_call_in_progress_can_be_cancelled(nvfp4client, server, how):
    w = gaussian((1024, 1024), np.float32)  # 4 MiB: streamed in 64 KiB chunks
    stall = StalledUpload(w.nbytes)
    client = nvfp4client.Client(server.target, chunk_bytes=64 << 10)
    thread, outcome = in_thread(lambda: client.quantize(w, progress=stall))
    try:
        stalled = wait_for_state(client, "running")
        if how == "cancel_all":
            client.cancel_all()
        else:
            client.cancel(stalled.id)
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome[0], nvfp4client.Nvfp4Error), outcome
        assert outcome[0].code == grpc.StatusCode.CANCELLED and outcome[0].request_id
        deadline = time.time() + 10
        while client.job(stalled.id).state != "cancelled" and time.time() < deadline:
            time.sleep(0.02)
        assert client.job(stalled.id).state == "cancelled"
        assert client.quantize(w[:4]).packed.shape == (4, 512)  # the client still works
    finally:
        stall.release.set()
        client.close()


def test_an_interrupt_in_the_progress_callback_reaches_the_caller(nvfp4client, server):
    w = gaussian((1024, 1024), np.float32)

    def interrupt(done, total, phase):
        if phase == "upload" and done >= 4 * (64 << 10):
            raise KeyboardInterrupt

    with nvfp4client.Client(server.target, chunk_bytes=64 << 10) as client:
        with pytest.raises(KeyboardInterrupt):
            client.quantize(w, progress=interrupt)
        deadline = time.time() + 10
        while time.time() < deadline and \
                any(j.state not in ("cancelled", "failed") for j in client.jobs()):
            time.sleep(0.02)
        assert [j.state for j in client.jobs()] == ["cancelled"]
        assert client.quantize(w[:4]).packed.shape == (4, 512)


def test_closing_quantize_many_early_cancels_the_calls_in_flight(nvfp4client, nvfp4d):
    # Two workers: the stalled job holds one (it runs while its rows arrive), whichever of the
    # two calls reaches the server first.
    server = nvfp4d("--cpu-workers", "2", "--threads", "1")
    small = gaussian((16, 64), np.float32)
    large = gaussian((1024, 1024), np.float32, seed=1)
    stall = StalledUpload(large.nbytes)
    with nvfp4client.Client(server.target, chunk_bytes=64 << 10) as client:
        try:
            results = client.quantize_many([("small", small), ("large", large)],
                                           max_in_flight=2, progress=stall)
            first = next(results)
            wait_for_state(client, "running")
            start = time.monotonic()
            results.close()  # what leaving a for loop early does
            assert time.monotonic() - start < 10
        finally:
            stall.release.set()
        deadline = time.time() + 10  # the server records the cancel once its engine stops
        while client.jobs(states=["running"]) and time.time() < deadline:
            time.sleep(0.02)
        states = {j.name: j.state for j in client.jobs()}
    assert first.packed.shape == (16, 32)
    assert states == {"small": "succeeded", "large": "cancelled"}


def test_an_abandoned_quantize_many_collected_on_its_own_thread_does_not_hang(nvfp4client,
                                                                              nvfp4d):
    """The generator's cleanup can run wherever the garbage collector runs: here, inside the
    download progress of the batch's own call, on the batch's own worker thread."""
    server = nvfp4d("--cpu-workers", "2", "--threads", "1")
    small = gaussian((16, 64), np.float32)
    large = gaussian((512, 1024), np.float32, seed=1)
    go = threading.Event()
    where = []

    def progress(done, total, phase):
        if phase == "upload" and total == large.nbytes:
            go.wait(30)  # the large tensor's download comes after the generator is garbage
        elif phase == "download" and total > 10000 and not where:
            where.append("collecting")
            gc.collect()
            where.append("collected")

    client = nvfp4client.Client(server.target, chunk_bytes=64 << 10)
    gc.disable()
    try:
        results = client.quantize_many([("small", small), ("large", large)], max_in_flight=2,
                                       progress=progress)
        first = next(results)
        cycle = [results]
        cycle.append(cycle)  # only a collection can reclaim the generator now
        del results, cycle
        go.set()
        deadline = time.time() + 20
        while where != ["collecting", "collected"] and time.time() < deadline:
            time.sleep(0.02)
        assert where == ["collecting", "collected"]
        assert first.packed.shape == (16, 32)
    finally:
        gc.enable()
        go.set()
        client.close()


def test_cancel_all_stops_the_first_calls_question_about_limits(nvfp4client):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # never answers: the first call waits for the server's limits
    try:
        client = nvfp4client.Client(f"127.0.0.1:{listener.getsockname()[1]}", timeout=30)
        thread, outcome = in_thread(lambda: client.quantize(gaussian((4, 16), np.float32)))
        time.sleep(0.5)
        start = time.monotonic()
        client.cancel_all()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - start < 5
        assert isinstance(outcome[0], nvfp4client.Nvfp4Error), outcome
        assert outcome[0].code == grpc.StatusCode.CANCELLED
        client.close()
    finally:
        listener.close()


def test_a_cancel_while_an_attempt_fails_gives_cancelled(nvfp4client):
    # The window test_cancel_all_stops_a_call_that_waits_to_retry hits only by chance (CI did):
    # cancel_all after an attempt's RPC failed, before the retry decision.
    client = nvfp4client.Client("127.0.0.1:1", retries=5)
    attempts = []

    def attempt():
        attempts.append(1)
        client.cancel_all()
        raise nvfp4client.Nvfp4Error(grpc.StatusCode.UNAVAILABLE, "replica draining")
    with client._scope() as scope:
        with pytest.raises(nvfp4client.Nvfp4Error) as error:
            client._with_retries(scope, attempt)
    assert error.value.code == grpc.StatusCode.CANCELLED and len(attempts) == 1
    client.close()


def test_cancel_all_stops_a_call_that_waits_to_retry(nvfp4client, server):
    proxy = FlakyProxy(server.target, failures=100, code=grpc.StatusCode.UNAVAILABLE)
    try:
        client = nvfp4client.Client(f"127.0.0.1:{proxy.port}", retries=10)
        thread, outcome = in_thread(lambda: client.quantize(gaussian((4, 16), np.float32)))
        deadline = time.time() + 10
        while proxy.attempts < 2 and time.time() < deadline:
            time.sleep(0.01)
        client.cancel_all()  # during a backoff (0.25 to 1 s after the second attempt)
        thread.join(5)
        attempts = proxy.attempts
        time.sleep(1.5)
        assert not thread.is_alive()
        assert isinstance(outcome[0], nvfp4client.Nvfp4Error), outcome
        assert outcome[0].code == grpc.StatusCode.CANCELLED
        assert 2 <= attempts <= 3 and proxy.attempts == attempts  # no attempt after the cancel
        client.close()
    finally:
        proxy.stop()


def test_auth_token_and_health(nvfp4client, nvfp4d, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    daemon = nvfp4d("--auth-token-file", tmp_path / "token")
    w = gaussian((4, 16), np.float32)
    with nvfp4client.Client(daemon.target) as anonymous:
        with pytest.raises(nvfp4client.Nvfp4Error) as info:
            anonymous.quantize(w)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and not info.value.retryable
    with nvfp4client.Client(daemon.target, token="s3cret") as client:
        client.wait_until_ready(timeout=10)
        assert client.health() == "SERVING"
        assert client.health("liveness") == "SERVING"
        assert client.info().auth_required
        assert client.quantize(w).packed.shape == (4, 8)
    # The file's trailing newline is not part of the token (as nvfp4q --token-file).
    for options in (dict(token=(tmp_path / "token").read_text()),
                    dict(token_file=str(tmp_path / "token"))):
        with nvfp4client.Client(daemon.target, **options) as client:
            assert client.quantize(w).packed.shape == (4, 8)


def test_tokens_that_grpc_cannot_send_are_refused(nvfp4client, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    for token, match in (("s3\ncret", "U\\+000A at position 2"), ("s3cr\u00e9t", "U\\+00E9"),
                         ("  \n", "empty")):
        with pytest.raises(ValueError, match="^token: .*" + match):
            nvfp4client.Client("127.0.0.1:1", token=token)
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValueError, match="token_file .*blank: the token is empty"):
        nvfp4client.Client("127.0.0.1:1", token_file=str(tmp_path / "blank"))
    with pytest.raises(ValueError, match="token and token_file exclude each other"):
        nvfp4client.Client("127.0.0.1:1", token="s3cret", token_file=str(tmp_path / "token"))


def test_wait_until_ready_gives_up_with_the_last_answer(nvfp4client):
    with nvfp4client.Client("127.0.0.1:1", timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(nvfp4client.Nvfp4Error, match="not ready after 0.5 s") as info:
            client.wait_until_ready(timeout=0.5)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 5


def test_wait_until_ready_keeps_its_timeout_against_a_silent_listener(nvfp4client):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections are accepted by the kernel, and nothing ever answers
    try:
        with nvfp4client.Client(f"127.0.0.1:{listener.getsockname()[1]}") as client:
            start = time.monotonic()
            with pytest.raises(nvfp4client.Nvfp4Error, match="not ready after 1.0 s"):
                client.wait_until_ready(timeout=1.0)
            assert time.monotonic() - start < 3
    finally:
        listener.close()


def test_tls_with_a_token(nvfp4client, nvfp4d, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    (tmp_path / "token").write_text("t0ken\n")
    daemon = nvfp4d("--tls-cert", tmp_path / "cert.pem", "--tls-key", tmp_path / "key.pem",
                    "--auth-token-file", tmp_path / "token")
    w = gaussian((8, 32), np.float32)
    with nvfp4client.Client(daemon.target, tls_ca_file=str(tmp_path / "cert.pem"),
                            token="t0ken") as client:
        assert client.info().auth_required
        assert client.quantize(w).packed.shape == (8, 16)
    with nvfp4client.Client(daemon.target, retries=1, timeout=5) as plain:  # no TLS
        with pytest.raises(nvfp4client.Nvfp4Error) as info:
            plain.quantize(w)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_stopped_server_ends_the_call_by_keepalive(nvfp4client, nvfp4d):
    """A server that stops answering without closing the connection (SIGSTOP here): the
    keepalive ping goes unanswered and the call ends with UNAVAILABLE, long before its
    deadline. The client's own keepalive (30 s, 20 s) is shortened for the test."""
    server = nvfp4d("--threads", "2")
    keepalive = {"grpc.keepalive_time_ms": 1000, "grpc.keepalive_timeout_ms": 1000,
                 "grpc.http2.ping_timeout_ms": 1000}
    with nvfp4client.Client(server.target, retries=1, timeout=60,
                            channel_options=keepalive) as client:
        client.info()  # connected
        server.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(nvfp4client.Nvfp4Error) as info:
                client.quantize(gaussian((4, 16), np.float32))
            elapsed = time.monotonic() - start
        finally:
            server.proc.send_signal(signal.SIGCONT)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and elapsed < 10, (info.value, elapsed)


def test_channel_options_replace_the_clients_own(nvfp4client):
    from nvfp4client._client import _channel_options

    defaults = dict(_channel_options(None))
    assert defaults["grpc.keepalive_time_ms"] == 30000
    assert defaults["grpc.keepalive_timeout_ms"] == 20000
    assert defaults["grpc.http2.ping_timeout_ms"] == 20000
    mine = _channel_options([("grpc.keepalive_time_ms", 60000), ("grpc.primary_user_agent", "x")])
    assert len(mine) == len(defaults) + 1  # one value per name: replaced, not repeated
    assert dict(mine)["grpc.keepalive_time_ms"] == 60000


def test_the_default_retries_ride_out_a_full_queue_for_16_to_32_s(nvfp4client):
    with nvfp4client.Client("127.0.0.1:1") as client:
        assert client.retries == 8  # waits of 0.5, 1, 2, 4, 8, 8, 8 s, each jittered to 50-100 %


def test_errors_survive_pickling(nvfp4client):
    for error in (nvfp4client.Nvfp4Error(grpc.StatusCode.UNAVAILABLE, "draining", "t-1", "r-1"),
                  nvfp4client.InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "NaN")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.code, copy.details, copy.job_id, copy.request_id) == \
            (error.code, error.details, error.job_id, error.request_id)


def test_progress_of_a_one_message_call(nvfp4client, server):
    w = gaussian((16, 64), np.float32)
    importance = np.ones(64, np.float32)
    calls = []
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(w, importance=importance, output="both",
                            progress=lambda *a: calls.append(a))
        up = w.nbytes + importance.nbytes
        down = q.packed.nbytes + q.scales.nbytes + q.dequantized.nbytes
        # One message each way: one call each way, the upload before anything is sent.
        assert calls == [(up, up, "upload"), (down, down, "download")]

        def interrupt(done, total, phase):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.quantize(w, progress=interrupt)
        assert len(client.jobs()) == 1  # the interrupted call sent nothing


def test_a_result_header_that_does_not_match_the_request_is_refused(nvfp4client):
    from nvfp4client._client import Client, _Assembly, pb
    from nvfp4client._tensors import tensor_bytes

    t = tensor_bytes(np.zeros((2, 40), np.float32))
    header = pb.TensorHeader(output_mode=pb.OUTPUT_MODE_PACKED)
    sizes = Client._output_sizes(t, header)
    assert sizes == {"packed": 48, "scales": 6, "dequantized": 0}
    good = pb.ResultHeader(rows=2, cols=40, padded_cols=48, packed_bytes=48, scales_bytes=6)
    _Assembly(t, sizes, None).start(good)
    for bad in (dict(rows=1), dict(cols=48), dict(padded_cols=40), dict(packed_bytes=40),
                dict(dequantized_bytes=320)):
        header = pb.ResultHeader()
        header.CopyFrom(good)
        for field, value in bad.items():
            setattr(header, field, value)
        with pytest.raises(nvfp4client.Nvfp4Error, match="does not match the request"):
            _Assembly(t, sizes, None).start(header)


def test_server_lists_are_ip_literals_or_dns(nvfp4client):
    target = nvfp4client.channel_target
    assert target("10.0.0.1:50051") == "10.0.0.1:50051"
    assert target("10.0.0.1:1,10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert target("[::1]:1, [::2]:2") == "ipv6:[::1]:1,[::2]:2"
    assert target("dns:///nvfp4d.svc:50051") == "dns:///nvfp4d.svc:50051"
    with pytest.raises(ValueError, match="dns:///"):
        target("a.example:1,b.example:2")
    with pytest.raises(ValueError, match="no port"):
        target("10.0.0.1,10.0.0.2:2")
    with pytest.raises(ValueError, match="all IPv4 or all IPv6"):
        target("10.0.0.1:1,[::1]:2")


def test_two_replicas_share_the_calls(nvfp4client, nvfp4d):
    a, b = nvfp4d(), nvfp4d()
    w = gaussian((4, 16), np.float32)
    direct = [nvfp4client.Client(d.target) for d in (a, b)]
    results = []
    with nvfp4client.Client(f"127.0.0.1:{a.port},127.0.0.1:{b.port}") as client:
        client.wait_until_ready(timeout=10)
        # Round robin over the replicas that are ready: both, once both connections are up.
        while len(results) < 100 and not all(c.jobs() for c in direct):
            results.append(client.quantize(w))
    assert all(c.jobs() for c in direct), f"one replica got all {len(results)} calls"
    assert len({q.packed.tobytes() for q in results}) == 1
    for c in direct:
        c.close()


# -- checkpoints -----------------------------------------------------------------------------

def test_checkpoint_job_writes_what_nvfp4q_writes(nvfp4client, nvfp4d, bin_dir, tmp_path):
    root = (tmp_path / "root").resolve()
    root.mkdir()
    subprocess.run([bin_dir / "nvfp4_demo_checkpoint", "--out", root / "src", "--layers", "1",
                    "--hidden", "256", "--intermediate", "512", "--vocab", "128"],
                   check=True, capture_output=True)
    subprocess.run([bin_dir / "nvfp4q", "quantize", "--model", root / "src", "--out",
                    tmp_path / "embedded", "--quiet", "--report", tmp_path / "report.json"],
                   check=True, capture_output=True)
    daemon = nvfp4d("--allowed-root", root)
    events = []
    # The first attempt fails as if its replica were lost; the client resubmits the job.
    proxy = FlakyProxy(daemon.target, failures=1, code=grpc.StatusCode.UNAVAILABLE)
    try:
        with nvfp4client.Client(f"127.0.0.1:{proxy.port}") as client:
            report = client.quantize_checkpoint(str(root / "src"), str(root / "out"),
                                                progress=events.append)
        assert proxy.attempts == 2
    finally:
        proxy.stop()
    with nvfp4client.Client(daemon.target) as client:
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(nvfp4client.Nvfp4Error) as info:
            client.quantize_checkpoint(str(tmp_path / "elsewhere"), str(root / "out2"))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert_same_tree(root / "out", tmp_path / "embedded")
    embedded_report = json.loads((tmp_path / "report.json").read_text())
    finished = [e.tensor for e in events if e.tensor is not None]
    assert len(finished) == len(report["tensors"]) > 0
    assert {e.phase for e in events} >= {"quantize", "done"}
    assert report["totals"]["mse"] == embedded_report["totals"]["mse"]


def test_one_glob_or_state_given_as_a_str_is_one_item(nvfp4client, nvfp4d, bin_dir, tmp_path):
    """include="lm_head" is one glob and jobs("succeeded") one state, not their characters
    (the glob "*" among them would exclude every module)."""
    root = (tmp_path / "root").resolve()
    root.mkdir()
    subprocess.run([bin_dir / "nvfp4_demo_checkpoint", "--out", root / "src", "--layers", "1",
                    "--hidden", "256", "--intermediate", "512", "--vocab", "128"],
                   check=True, capture_output=True)
    daemon = nvfp4d("--allowed-root", root)
    with nvfp4client.Client(daemon.target) as client:
        report = client.quantize_checkpoint(str(root / "src"), str(root / "out"),
                                            include="lm_head", exclude="*down_proj")
        quantized = {t["name"] for t in report["tensors"] if t["quantized"]}
        assert "lm_head.weight" in quantized
        assert "model.layers.0.mlp.up_proj.weight" in quantized
        assert "model.layers.0.mlp.down_proj.weight" not in quantized
        succeeded = client.jobs("succeeded")
        assert [j.kind for j in succeeded] == ["checkpoint"]
        assert client.jobs(["succeeded", "failed"]) == succeeded
        with pytest.raises(TypeError, match="include takes strings"):
            client.quantize_checkpoint(str(root / "src"), str(root / "out2"), include=[1])


# -- torch -----------------------------------------------------------------------------------

def test_torch_tensors_give_the_numpy_bytes(nvfp4client, server):
    torch = pytest.importorskip("torch", reason="torch is not in the test venv (a 2 GB "
                                "download); run with a venv that has it")
    w = gaussian((32, 64), np.float32)
    t = torch.from_numpy(w).to(torch.bfloat16)
    with nvfp4client.Client(server.target) as client:
        from_torch = client.quantize(t, output="both", dequantized_dtype="bf16")
        from_numpy = client.quantize(w.astype(ml_dtypes.bfloat16))
    assert np.array_equal(from_torch.packed, from_numpy.packed)
    tensors = from_torch.modelopt_tensors("layer.", as_torch=True)
    assert tensors["layer.weight"].dtype == torch.uint8
    assert tensors["layer.weight_scale"].dtype == torch.float8_e4m3fn
    assert tensors["layer.weight_scale_2"].dtype == torch.float32
    deq = from_torch.dequantized_torch()
    assert deq.dtype == torch.bfloat16 and tuple(deq.shape) == (32, 64)


def test_torch_tensor_subclasses_are_torch_tensors(nvfp4client, server):
    """Subclasses from other modules (nn.Parameter, bitsandbytes' Params4bit, ...) are torch
    tensors too; float64 torch importance is range-checked like numpy's."""
    torch = pytest.importorskip("torch", reason="torch is not in the test venv")

    class Weight(torch.Tensor):  # defined in this test module, not in torch
        pass

    w = gaussian((32, 64), np.float32)
    with nvfp4client.Client(server.target) as client:
        base = client.quantize(w)
        for t in (torch.from_numpy(w).as_subclass(Weight), torch.nn.Parameter(torch.from_numpy(w))):
            assert np.array_equal(client.quantize(t).packed, base.packed), type(t)
        importance = torch.ones(64, dtype=torch.float64)
        importance[5] = 1e39
        with pytest.raises(ValueError, match=r"importance value 5 \(1e\+39\)"):
            client.quantize(w, importance=importance)


def test_torch_outputs_without_torch_say_what_needs_torch(nvfp4client, server, monkeypatch):
    with nvfp4client.Client(server.target) as client:
        q = client.quantize(gaussian((4, 16), np.float32), output="both")
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets without torch
    with pytest.raises(ModuleNotFoundError, match=r"as_torch=True\) needs torch.*numpy arrays"):
        q.modelopt_tensors(as_torch=True)
    with pytest.raises(ModuleNotFoundError, match=r"dequantized_torch\(\) needs torch"):
        q.dequantized_torch()
