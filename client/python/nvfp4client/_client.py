"""Client: nvfp4d (nvfp4.v1.Quantizer) from Python. docs/python.md is the guide.

Thread-safety: one Client may be used from many threads (quantize_many does); each call is its
own RPC on the shared channel. Errors: failed calls raise Nvfp4Error (InvalidArgumentError for
a bad request, also a ValueError) carrying the gRPC code and nvfp4d's message; bad arguments
caught before sending raise TypeError / ValueError.
"""
import collections
import contextlib
import concurrent.futures
import ipaddress
import json
import random
import threading
import time
import uuid
from typing import Callable, Iterable, Iterator, Optional, Sequence

import grpc
import ml_dtypes
import numpy as np
from grpc_health.v1 import health_pb2

from . import _results as results
from ._tensors import TensorBytes, finite_amax, importance_bytes, tensor_bytes

try:
    from ._proto import quantizer_pb2 as pb
except ImportError as error:  # pragma: no cover - a packaging mistake, not a runtime state
    raise ImportError(
        "nvfp4client's message classes are generated when the package is built: install it "
        "with `pip install ./client/python` from a checkout (an editable install has no build "
        "step)") from error

METHODS = {"absmax": pb.METHOD_ABSMAX, "four-over-six": pb.METHOD_FOUR_OVER_SIX,
           "exhaustive": pb.METHOD_EXHAUSTIVE, "scalesweep": pb.METHOD_SCALESWEEP}
OBJECTIVES = {"mse": pb.OBJECTIVE_MSE, "wmse": pb.OBJECTIVE_WMSE}
OUTPUTS = {"packed": pb.OUTPUT_MODE_PACKED, "dequantized": pb.OUTPUT_MODE_DEQUANTIZED,
           "both": pb.OUTPUT_MODE_BOTH}
DTYPES = {"f32": pb.DTYPE_F32, "bf16": pb.DTYPE_BF16, "f16": pb.DTYPE_F16}
DEQUANTIZED_DTYPES = {"f32": pb.DTYPE_F32, "bf16": pb.DTYPE_BF16}
FORMATS = {"modelopt": pb.CHECKPOINT_FORMAT_MODELOPT,
           "compressed-tensors": pb.CHECKPOINT_FORMAT_COMPRESSED_TENSORS}
IMPORTANCE = {"per_column": pb.IMPORTANCE_LAYOUT_PER_COLUMN,
              "per_element": pb.IMPORTANCE_LAYOUT_PER_ELEMENT}

# nvfp4d's answers that mean "try again, here or on another replica" (proto header comment):
# the queue or memory budget is full, the server is draining or unreachable.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.ABORTED})

_SERVICE = "/nvfp4.v1.Quantizer/"
_MESSAGE_SLACK = 64 << 10  # headers and framing next to the tensor bytes of a unary message
# Larger tensors are streamed even when the server would take them in one message: a unary
# call copies the whole tensor three times (bytes, message, serialisation) and cannot
# overlap the upload with the quantisation (docs/python.md: even at 1 MiB, 2x slower at 2 MiB).
_UNARY_MAX_BYTES = 1 << 20


class Nvfp4Error(Exception):
    """A call nvfp4d (or the connection to it) failed: code is the grpc.StatusCode, details
    the server's message, job_id the job's id when the call learnt it (streamed calls, once
    admitted), request_id the tensor's idempotency key."""

    def __init__(self, code: grpc.StatusCode, details: str, job_id: str = "",
                 request_id: str = ""):
        super().__init__(f"{code.name}: {details}" + (f" (job {job_id})" if job_id else ""))
        self.code = code
        self.details = details
        self.job_id = job_id
        self.request_id = request_id  # the tensor's idempotency key (jobs() shows it)

    def __reduce__(self):  # picklable (multiprocessing, ProcessPoolExecutor)
        return (type(self), (self.code, self.details, self.job_id, self.request_id))

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class InvalidArgumentError(Nvfp4Error, ValueError):
    """nvfp4d refused the request (INVALID_ARGUMENT); details name the field or element."""


def _error(rpc_error: grpc.RpcError, job_id: str = "") -> Nvfp4Error:
    code = rpc_error.code() if hasattr(rpc_error, "code") else grpc.StatusCode.UNKNOWN
    details = (rpc_error.details() if hasattr(rpc_error, "details") else None) or str(rpc_error)
    cls = InvalidArgumentError if code == grpc.StatusCode.INVALID_ARGUMENT else Nvfp4Error
    return cls(code, details, job_id)


def _cancelled() -> Nvfp4Error:
    return Nvfp4Error(grpc.StatusCode.CANCELLED, "cancelled by the client")


def _choice(table: dict, value: str, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {value!r}") from None


def channel_target(servers: str) -> str:
    """The gRPC target for `servers`: "host:port", any gRPC target ("dns:///name:port",
    "unix:/path", ...), or several replicas "ip:port,ip:port" (IP literals; each call then goes
    to the next ready replica). Host names in a list are refused: use dns:/// for those."""
    parts = [p.strip() for p in servers.split(",")]
    if len(parts) == 1:
        if not parts[0]:
            raise ValueError("server address is empty")
        return parts[0]
    families = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or host.count(":") and not host.startswith("["):
            raise ValueError(f"'{part}' in a list of servers has no port (ip:port, [ipv6]:port)")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"'{part}' in a list of servers is not ip:port; reach several "
                             "replicas by name with dns:///name:port") from None
    if len(families) != 1:
        raise ValueError("a list of servers must be all IPv4 or all IPv6 addresses")
    return ("ipv4:" if families == {4} else "ipv6:") + ",".join(parts)


class _Assembly:
    """Puts a streamed result back together: the ResultHeader says how many bytes of each
    output follow, the chunks fill them in order."""

    def __init__(self, t: TensorBytes, sizes: dict, progress):
        self.t = t
        self.sizes = sizes  # what the request asked for: _output_sizes
        self.progress = progress
        self.job_id = ""
        self.header = None
        self.buffers = {}
        self.filled = {}
        self.metrics = None
        self.received = 0
        self.total = 0

    def start(self, header):
        got = {"packed": header.packed_bytes, "scales": header.scales_bytes,
               "dequantized": header.dequantized_bytes}
        padded = (self.t.cols + 15) // 16 * 16
        if ((header.rows, header.cols, header.padded_cols) != (self.t.rows, self.t.cols, padded)
                or got != self.sizes):
            raise Nvfp4Error(grpc.StatusCode.INTERNAL, "protocol: the result header "
                             f"(rows {header.rows}, cols {header.cols}, padded_cols "
                             f"{header.padded_cols}, sizes {got}) does not match the request "
                             f"([{self.t.rows}, {self.t.cols}], sizes {self.sizes})", self.job_id)
        self.header = header
        self.buffers = {k: bytearray(n) for k, n in got.items() if n > 0}
        self.filled = {k: 0 for k in self.buffers}
        self.total = sum(got.values())

    def add(self, kind: str, piece: bytes):
        if self.header is None or kind not in self.buffers:
            raise Nvfp4Error(grpc.StatusCode.INTERNAL, f"protocol: unexpected {kind} chunk",
                             self.job_id)
        start = self.filled[kind]
        if start + len(piece) > len(self.buffers[kind]):
            raise Nvfp4Error(grpc.StatusCode.INTERNAL, f"protocol: more {kind} bytes than the "
                             "result header announced", self.job_id)
        self.buffers[kind][start:start + len(piece)] = piece
        self.filled[kind] = start + len(piece)
        self.received += len(piece)
        if self.progress:
            self.progress(self.received, self.total, "download")

    def finish(self) -> results.QuantizedTensor:
        if self.header is None or self.metrics is None:
            raise Nvfp4Error(grpc.StatusCode.INTERNAL, "protocol: the call ended without a "
                             "result and its metrics", self.job_id)
        for kind, buffer in self.buffers.items():
            if self.filled[kind] != len(buffer):
                raise Nvfp4Error(grpc.StatusCode.INTERNAL, f"protocol: {self.filled[kind]} of "
                                 f"{len(buffer)} {kind} bytes arrived", self.job_id)
        h, t = self.header, self.t
        lead = t.shape[:-1]
        packed = scales = dequantized = None
        if "packed" in self.buffers:
            packed = np.frombuffer(self.buffers["packed"], np.uint8).reshape(
                lead + (h.padded_cols // 2,))
        if "scales" in self.buffers:
            scales = np.frombuffer(self.buffers["scales"], ml_dtypes.float8_e4m3fn).reshape(
                lead + (h.padded_cols // 16,))
        if "dequantized" in self.buffers:
            dtype = ml_dtypes.bfloat16 if h.dequantized_dtype == pb.DTYPE_BF16 else np.float32
            dequantized = np.frombuffer(self.buffers["dequantized"], dtype).reshape(t.shape)
        return results.QuantizedTensor(
            job_id=self.job_id, shape=t.shape, rows=h.rows, cols=h.cols,
            padded_cols=h.padded_cols, global_scale=h.global_scale, amax=h.amax, packed=packed,
            scales=scales, dequantized=dequantized,
            metrics=results.metrics_from(self.metrics, pb.Objective))


class _Scope:
    """Calls cancelled together: one quantize() or quantize_checkpoint() with its retries, or a
    quantize_many batch. Guarded by the client's lock."""

    def __init__(self):
        self.cancelled = threading.Event()
        self.calls = set()


class Client:
    """A connection to nvfp4d (or to several replicas).

    target: "host:port", "ip:port,ip:port,..." or any gRPC target (channel_target).
    token: bearer token (nvfp4d --auth-token-file); tls_ca_file: PEM bundle to trust (TLS on),
    or tls=True for TLS with the system's roots. timeout: deadline of each call in seconds.
    retries: attempts per tensor when nvfp4d answers UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED
    (backoff from 0.5 s doubling to 8 s; every attempt carries the same request_id).
    chunk_bytes: upload chunk size (capped by the server's limit).
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, token: Optional[str] = None,
                 tls: bool = False, tls_ca_file: Optional[str] = None,
                 timeout: float = 3600.0, retries: int = 3, chunk_bytes: int = 4 << 20):
        if retries < 1:
            raise ValueError("retries counts attempts: at least 1")
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.timeout = timeout
        self.retries = retries
        self.chunk_bytes = chunk_bytes
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            # Large tensors: several chunks in flight instead of a window grown from 64 KiB.
            ("grpc.http2.lookahead_bytes", 64 << 20),
            ("grpc.http2.max_frame_size", 16 << 20),
            ("grpc.http2.write_buffer_size", 8 << 20),
            # Replicas: each call goes to the next ready one (a refusal is retried, above).
            ("grpc.lb_policy_name", "round_robin"),
        ]
        resolved = channel_target(target)
        if tls or tls_ca_file:
            roots = None
            if tls_ca_file:
                with open(tls_ca_file, "rb") as f:
                    roots = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(resolved, credentials, options)
        else:
            self._channel = grpc.insecure_channel(resolved, options)

        def bind(kind, path, request, response):
            # Each RPC bound by name: only the message classes are generated (setup.py).
            return getattr(self._channel, kind)(path, request_serializer=request.SerializeToString,
                                                response_deserializer=response.FromString)

        self._stream = bind("stream_stream", _SERVICE + "QuantizeTensor",
                            pb.QuantizeTensorRequest, pb.QuantizeTensorResponse)
        self._unary = bind("unary_unary", _SERVICE + "QuantizeTensorUnary",
                           pb.QuantizeTensorUnaryRequest, pb.QuantizeTensorUnaryResponse)
        self._checkpoint = bind("unary_stream", _SERVICE + "QuantizeCheckpoint",
                                pb.QuantizeCheckpointRequest, pb.QuantizeCheckpointResponse)
        self._get_job = bind("unary_unary", _SERVICE + "GetJob", pb.GetJobRequest, pb.Job)
        self._list_jobs = bind("unary_unary", _SERVICE + "ListJobs", pb.ListJobsRequest,
                               pb.ListJobsResponse)
        self._cancel_job = bind("unary_unary", _SERVICE + "CancelJob", pb.CancelJobRequest, pb.Job)
        self._server_info = bind("unary_unary", _SERVICE + "GetServerInfo",
                                 pb.GetServerInfoRequest, pb.ServerInfo)
        self._health = bind("unary_unary", "/grpc.health.v1.Health/Check",
                            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse)
        # Reentrant: a garbage-collected quantize_many cleans up (_cancel_scope) on whichever
        # thread the collector runs, possibly one inside a `with self._lock` block.
        self._lock = threading.RLock()
        self._limits = None
        self._scopes = set()  # _Scope of every quantize / checkpoint call or batch in progress
        self._local = threading.local()  # .scope: the quantize_many batch of a worker thread

    @contextlib.contextmanager
    def _scope(self):
        """The cancellation scope of a call: the quantize_many batch this thread works for, or
        a new one that lives as long as the call (its retries included)."""
        batch = getattr(self._local, "scope", None)
        if batch is not None:
            yield batch
            return
        scope = _Scope()
        with self._lock:
            self._scopes.add(scope)
        try:
            yield scope
        finally:
            with self._lock:
                self._scopes.discard(scope)

    @contextlib.contextmanager
    def _tracked(self, scope, call):
        """Registers an RPC in flight in its scope; one started after the scope was cancelled
        is cancelled at once (a cancel can come between the RPC's start and this). Anything
        that leaves the block with an exception (a KeyboardInterrupt, a protocol error)
        cancels the RPC, so that the server cancels its job too; for an RPC that already
        failed that is a no-op."""
        with self._lock:
            scope.calls.add(call)
            cancelled = scope.cancelled.is_set()
        if cancelled:
            call.cancel()
        try:
            yield call
        except BaseException:
            call.cancel()
            raise
        finally:
            with self._lock:
                scope.calls.discard(call)

    def _cancel_scope(self, scope):
        with self._lock:
            scope.cancelled.set()
            calls = list(scope.calls)
        for call in calls:
            call.cancel()

    # -- lifetime ------------------------------------------------------------------------------
    def close(self):
        self.cancel_all()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cancel_all(self):
        """Cancels every call of this client in progress, from any thread: RPCs in flight, calls
        waiting to retry and quantize_many batches. Their callers get Nvfp4Error(CANCELLED)
        and the server cancels the jobs. Later calls are not affected."""
        with self._lock:
            scopes = list(self._scopes)
        for scope in scopes:
            self._cancel_scope(scope)

    # -- small calls ---------------------------------------------------------------------------
    def _deadline(self, timeout):
        return self.timeout if timeout is None else timeout

    def _call(self, method, request, timeout=None):
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e) from None

    def info(self) -> results.ServerInfo:
        """GetServerInfo: version, devices, methods, limits."""
        m = self._call(self._server_info, pb.GetServerInfoRequest())
        return results.ServerInfo(
            version=m.version,
            devices=tuple(results.from_message(results.Device, d) for d in m.devices),
            methods=tuple(m.methods), objectives=tuple(m.objectives),
            limits=results.from_message(results.Limits, m.limits),
            auth_required=m.auth_required, draining=m.draining)

    def health(self, service: str = "", timeout: Optional[float] = None) -> str:
        """grpc.health.v1 status of `service`: "" (the server), "nvfp4.v1.Quantizer"
        (readiness) or "liveness"; "SERVING", "NOT_SERVING", ..."""
        m = self._call(self._health, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(m.status)

    def wait_until_ready(self, timeout: float = 30.0):
        """Polls readiness until nvfp4d serves nvfp4.v1.Quantizer; Nvfp4Error(DEADLINE_EXCEEDED)
        naming the last answer after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Nvfp4Error(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"nvfp4d not ready after {timeout} s (last: {last})")
            try:
                status = self.health("nvfp4.v1.Quantizer", timeout=max(left, 0.01))
                if status == "SERVING":
                    return
                last = status
            except Nvfp4Error as e:
                last = str(e)
            time.sleep(min(0.2, max(left, 0)))

    def _job(self, m) -> results.Job:
        return results.from_message(
            results.Job, m, kind=results.enum_name(pb.JobKind, m.kind),
            state=results.enum_name(pb.JobState, m.state),
            metrics=results.metrics_from(m.metrics, pb.Objective) if m.HasField("metrics")
            else None)

    def jobs(self, states: Sequence[str] = ()) -> list:
        """Recent jobs, newest first; states filters ("running", "failed", ...)."""
        names = {results.enum_name(pb.JobState, v): v for v in pb.JobState.values()}
        request = pb.ListJobsRequest(states=[_choice(names, s, "state") for s in states])
        return [self._job(j) for j in self._call(self._list_jobs, request).jobs]

    def job(self, job_id: str) -> results.Job:
        return self._job(self._call(self._get_job, pb.GetJobRequest(job_id=job_id)))

    def cancel(self, job_id: str) -> results.Job:
        """Cancels a queued or running job (any client's); returns its state."""
        return self._job(self._call(self._cancel_job, pb.CancelJobRequest(job_id=job_id)))

    def _unary_in_scope(self, scope, method, request, timeout):
        """A unary RPC that the scope's cancellation (cancel_all, a closed batch) stops."""
        future = method.future(request, timeout=self._deadline(timeout), metadata=self._metadata)
        try:
            with self._tracked(scope, future):
                return future.result()
        except grpc.FutureCancelledError:
            raise _cancelled() from None
        except grpc.RpcError as e:
            raise _error(e) from None

    def _server_limits(self, scope, timeout) -> results.Limits:
        """The server's limits, asked once per client, in the scope of the call that needs them
        first (cancel_all stops that question too)."""
        with self._lock:
            if self._limits is not None:
                return self._limits
        info = self._unary_in_scope(scope, self._server_info, pb.GetServerInfoRequest(), timeout)
        limits = results.from_message(results.Limits, info.limits)
        with self._lock:
            self._limits = limits
        return limits

    # -- tensors -------------------------------------------------------------------------------
    def quantize(self, tensor, *, method: str = "scalesweep", objective: str = "mse",
                 importance=None, scale_max: int = 256, amax: Optional[float] = None,
                 global_scale: Optional[float] = None, output: str = "packed",
                 dequantized_dtype: str = "f32", name: str = "",
                 request_id: Optional[str] = None, timeout: Optional[float] = None,
                 progress: Optional[Callable[[int, int, str], None]] = None
                 ) -> results.QuantizedTensor:
        """Quantises one tensor to NVFP4 on nvfp4d; the bytes equal `nvfp4q quantize-tensor`.

        tensor: numpy (float32, float16, ml_dtypes.bfloat16) or torch (float32, bfloat16,
            float16; any device, copied to the CPU), any shape: quantised along the last axis.
        method: "scalesweep" (default: the exhaustive optimum within proven bounds), "absmax"
            (ModelOpt's rule; with scale_max=448 ModelOpt's export bit for bit),
            "four-over-six", "exhaustive". objective: "mse" or "wmse" (needs importance).
        importance: weights, one per column ([cols]) or per element (the tensor's shape);
            with objective="mse" they only add the WMSE figures to the metrics.
        scale_max: F in g = amax / (6 F), 256 or 448. amax / global_scale: a fused group's
            (q/k/v, gate/up) shared amax or g; by default the tensor's own amax, computed here
            so that nvfp4d quantises rows while the rest is still uploading.
        output: "packed", "dequantized" (fake-quant only) or "both"; dequantized_dtype "f32" or
            "bf16". name labels the job; request_id is the idempotency key (generated).
        progress(done_bytes, total_bytes, phase) is called with phase "upload" and "download":
            per chunk when streamed (upload calls then come from gRPC's request thread), once
            each way for a tensor small enough for one message. An exception it raises ends
            the call (cancelled on the server) and reaches the caller.
        """
        t = tensor_bytes(tensor)
        header = pb.TensorHeader(
            name=name, request_id=request_id or uuid.uuid4().hex, dtype=DTYPES[t.dtype],
            shape=[t.rows, t.cols], method=_choice(METHODS, method, "method"),
            objective=_choice(OBJECTIVES, objective, "objective"), scale_max=scale_max,
            output_mode=_choice(OUTPUTS, output, "output"),
            dequantized_dtype=_choice(DEQUANTIZED_DTYPES, dequantized_dtype,
                                      "dequantized_dtype"))
        weights = None
        if importance is not None:
            layout, weights = importance_bytes(importance, t.rows, t.cols, t.shape)
            header.importance_layout = IMPORTANCE[layout]
        elif objective == "wmse":
            raise ValueError("objective 'wmse' needs importance weights")
        if global_scale is not None:
            header.global_scale = global_scale
        if amax is not None:
            header.amax = amax
        if amax is None and global_scale is None:
            own = finite_amax(t)  # None with NaN/Inf: nvfp4d then names the first one
            if own is not None:
                header.amax = own
        try:
            with self._scope() as scope:
                return self._with_retries(scope, lambda: self._quantize_once(
                    scope, t, header, weights, timeout, progress))
        except Nvfp4Error as e:
            e.request_id = header.request_id
            raise

    def _with_retries(self, scope, attempt):
        """attempt() until it succeeds, fails for good or the scope is cancelled; the backoff
        is jittered so that many clients refused at once do not come back at once."""
        backoff = 0.5
        for number in range(1, self.retries + 1):
            if scope.cancelled.is_set():
                raise _cancelled()
            try:
                return attempt()
            except Nvfp4Error as e:
                if not e.retryable or number == self.retries or scope.cancelled.is_set():
                    raise
            if scope.cancelled.wait(backoff * random.uniform(0.5, 1.0)):
                raise _cancelled()
            backoff = min(backoff * 2, 8.0)

    @staticmethod
    def _output_sizes(t: TensorBytes, header) -> dict:
        """Bytes of each output the request asks for: packed values and scales (a half and a
        sixteenth of a byte per padded element), the fake-quant tensor."""
        padded = t.rows * ((t.cols + 15) // 16 * 16)
        packed = header.output_mode != pb.OUTPUT_MODE_DEQUANTIZED
        element = 2 if header.dequantized_dtype == pb.DTYPE_BF16 else 4
        return {"packed": padded // 2 if packed else 0, "scales": padded // 16 if packed else 0,
                "dequantized": 0 if header.output_mode == pb.OUTPUT_MODE_PACKED
                else t.rows * t.cols * element}

    def _quantize_once(self, scope, t: TensorBytes, header, weights, timeout, progress):
        limits = self._server_limits(scope, timeout)
        data = t.data()
        weight_bytes = memoryview(weights.view(np.uint8)) if weights is not None else None
        upload = len(data) + (len(weight_bytes) if weight_bytes is not None else 0)
        sizes = self._output_sizes(t, header)
        if (upload + sum(sizes.values()) + _MESSAGE_SLACK
                <= min(_UNARY_MAX_BYTES, limits.max_message_bytes)):
            return self._quantize_unary(scope, t, sizes, header, data, weight_bytes, upload,
                                        timeout, progress)
        return self._quantize_stream(scope, t, sizes, header, data, weight_bytes, upload,
                                     timeout, progress,
                                     min(self.chunk_bytes, limits.max_chunk_bytes))

    def _quantize_unary(self, scope, t, sizes, header, data, weight_bytes, upload, timeout,
                        progress):
        request = pb.QuantizeTensorUnaryRequest(
            header=header, data=data.tobytes(),
            importance=weight_bytes.tobytes() if weight_bytes is not None else b"")
        m = self._unary_in_scope(scope, self._unary, request, timeout)
        if progress:  # one message each way: the upload is whole once the answer is here
            progress(upload, upload, "upload")
        assembly = _Assembly(t, sizes, progress)
        assembly.job_id = m.job_id
        assembly.start(m.result)
        for kind in ("packed", "scales", "dequantized"):
            piece = getattr(m, kind)
            if piece:
                assembly.add(kind, piece)
        assembly.metrics = m.metrics
        return assembly.finish()

    def _quantize_stream(self, scope, t, sizes, header, data, weight_bytes, upload, timeout,
                         progress, chunk):
        # The request iterator runs on a gRPC thread: an exception of the progress callback
        # there (a KeyboardInterrupt, a closed progress bar) is kept, the call cancelled, and
        # the exception raised to the caller instead of gRPC's "Exception iterating requests".
        failure = []
        started = []

        def requests():
            yield pb.QuantizeTensorRequest(header=header)
            sent = 0
            for kind, view in (("importance", weight_bytes), ("data", data)):
                if view is None:
                    continue
                for start in range(0, len(view), chunk):
                    piece = view[start:start + chunk].tobytes()
                    yield pb.QuantizeTensorRequest(**{kind: piece})
                    sent += len(piece)
                    if progress:
                        try:
                            progress(sent, upload, "upload")
                        except BaseException as e:  # noqa: B036 - handed to the caller
                            failure.append(e)
                            if started:  # else the caller has not registered it yet
                                started[0].cancel()
                            return

        assembly = _Assembly(t, sizes, progress)
        call = self._stream(requests(), timeout=self._deadline(timeout),
                            metadata=self._metadata)
        started.append(call)
        try:
            with self._tracked(scope, call):
                for response in call:
                    kind = response.WhichOneof("payload")
                    if kind == "accepted":
                        assembly.job_id = response.accepted.job_id
                    elif kind == "result":
                        assembly.start(response.result)
                    elif kind == "metrics":
                        assembly.metrics = response.metrics
                    elif kind is not None:
                        assembly.add(kind, getattr(response, kind))
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise _error(e, assembly.job_id) from None
        if failure:
            raise failure[0]
        return assembly.finish()

    def quantize_many(self, tensors: Iterable, *, max_in_flight: int = 4,
                      **options) -> Iterator[results.QuantizedTensor]:
        """Quantises many tensors with up to max_in_flight calls at once (uploads of one
        overlap the quantisation of others), yielding the results in input order. Items are
        tensors, (name, tensor) or (name, tensor, importance) tuples; options are quantize()'s.
        The first failure is raised where its result would be yielded, and the calls still in
        flight are cancelled (also when the caller stops iterating early)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if options.get("request_id"):
            raise ValueError("request_id is per tensor: quantize_many makes one for each")
        pending = collections.deque()
        batch = _Scope()  # this batch's calls (cancel_all would also stop other threads')
        with self._lock:
            self._scopes.add(batch)

        def run(tensor, call_options):
            self._local.scope = batch
            try:
                return self.quantize(tensor, **call_options)
            finally:
                self._local.scope = None

        pool = concurrent.futures.ThreadPoolExecutor(max_in_flight)
        try:
            for item in tensors:
                name, tensor, importance = "", item, options.get("importance")
                if isinstance(item, tuple):
                    name, tensor = item[0], item[1]
                    if len(item) > 2:
                        importance = item[2]
                call_options = dict(options, name=name or options.get("name", ""),
                                    importance=importance)
                pending.append(pool.submit(run, tensor, call_options))
                if len(pending) >= max_in_flight:
                    # Left in `pending` while awaited, so that an interrupt cancels it too.
                    result = pending[0].result()
                    pending.popleft()
                    yield result
            while pending:
                result = pending[0].result()
                pending.popleft()
                yield result
        finally:
            # A garbage collection of an abandoned generator can run this on one of the
            # batch's own threads: that thread must not wait for itself.
            own_thread = getattr(self._local, "scope", None) is batch
            try:
                if pending:
                    for future in pending:
                        future.cancel()  # not started yet
                    self._cancel_scope(batch)  # started, or waiting to retry
                    if not own_thread:
                        concurrent.futures.wait(pending)
            finally:
                pool.shutdown(wait=not own_thread)
                with self._lock:
                    self._scopes.discard(batch)

    # -- checkpoints ---------------------------------------------------------------------------
    def quantize_checkpoint(self, model_dir: str, out_dir: str, *, format: str = "modelopt",
                            method: str = "scalesweep", objective: str = "mse",
                            scale_max: int = 256, include: Sequence[str] = (),
                            exclude: Sequence[str] = (), importance_path: str = "",
                            calibration_path: str = "", shard_bytes: int = 0, name: str = "",
                            timeout: Optional[float] = None,
                            progress: Optional[Callable[[results.CheckpointProgress], None]]
                            = None) -> dict:
        """Runs a checkpoint job on nvfp4d: model_dir and out_dir are paths on the server,
        inside its --allowed-root directories (docs/checkpoints.md). Returns the report (the
        JSON of `nvfp4q quantize --report`) as a dict; progress sees every event. A job lost
        with its replica (UNAVAILABLE, ...) is resubmitted like a tensor (retries; progress
        then starts again with the new job's events); on a shared file system the next replica
        resumes after the finished shards."""
        request = pb.QuantizeCheckpointRequest(
            model_dir=model_dir, out_dir=out_dir, format=_choice(FORMATS, format, "format"),
            method=_choice(METHODS, method, "method"),
            objective=_choice(OBJECTIVES, objective, "objective"), scale_max=scale_max,
            include=list(include), exclude=list(exclude), importance_path=importance_path,
            calibration_path=calibration_path, shard_bytes=shard_bytes, name=name)
        with self._scope() as scope:
            return self._with_retries(scope, lambda: self._checkpoint_once(
                scope, request, timeout, progress))

    def _checkpoint_once(self, scope, request, timeout, progress) -> dict:
        call = self._checkpoint(request, timeout=self._deadline(timeout),
                                metadata=self._metadata)
        job_id, report = "", None
        try:
            with self._tracked(scope, call):
                for response in call:
                    kind = response.WhichOneof("payload")
                    if kind == "accepted":
                        job_id = response.accepted.job_id
                    elif kind == "progress" and progress:
                        p = response.progress
                        progress(results.CheckpointProgress(
                            phase=p.phase, done=p.done, total=p.total, bytes_done=p.bytes_done,
                            bytes_total=p.bytes_total, message=p.message,
                            tensor=json.loads(p.tensor_report_json) if p.tensor_report_json
                            else None, warning=p.warning))
                    elif kind == "report_json":
                        report = json.loads(response.report_json)
        except grpc.RpcError as e:
            raise _error(e, job_id) from None
        if report is None:
            raise Nvfp4Error(grpc.StatusCode.INTERNAL, "protocol: the checkpoint job ended "
                             "without its report", job_id)
        return report
