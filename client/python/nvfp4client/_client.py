"""Client: nvfp4d (nvfp4.v1.Quantizer) from Python. docs/python.md is the guide.

Thread-safety: one Client may be used from many threads (quantize_many does); each call is its
own RPC on the shared channel. Errors: failed calls raise Nvfp4Error (InvalidArgumentError for
a bad request, also a ValueError) carrying the gRPC code and nvfp4d's message; bad arguments
caught before sending raise TypeError / ValueError.
"""
import collections
import contextlib
import concurrent.futures
import inspect
import ipaddress
import json
import math
import operator
import random
import re
import threading
import time
import uuid
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import grpc
import ml_dtypes
import numpy as np
from grpc_health.v1 import health_pb2

from . import _results as results
from ._tensors import TensorBytes, finite_amax, importance_bytes, is_torch, tensor_bytes

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
# the queue or memory budget is full, the server is draining or unreachable. gRPC's own
# message size errors share RESOURCE_EXHAUSTED but are not retried (_is_message_size_error).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.ABORTED})
# gRPC's wording when a message exceeds a size limit, on either side: "Received message larger
# than max (N vs. M)", "CLIENT: Sent message larger than max (N vs. M)". The same message would
# be refused on every attempt, so it is not a full queue to wait for.
_MESSAGE_SIZE_ERROR = re.compile(r"\b(Received|Sent) message larger than max\b")
_MESSAGE_SIZE_HINT = ("; this is gRPC's message size limit, not a full queue, so it is not "
                      "retried: a message of the call is larger than nvfp4d's --max-message-mib "
                      "or the client's grpc.max_send_message_length / "
                      "grpc.max_receive_message_length")

_SERVICE = "/nvfp4.v1.Quantizer/"
_MESSAGE_SLACK = 64 << 10  # headers and framing next to the tensor bytes of a unary message
# Larger tensors are streamed even when the server would take them in one message: a unary
# call copies the whole tensor three times (bytes, message, serialisation) and cannot
# overlap the upload with the quantisation (docs/python.md: even at 1 MiB, 2x slower at 2 MiB).
_UNARY_MAX_BYTES = 1 << 20
# Channel options of every client; channel_options= replaces or adds to them.
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Large tensors: several chunks in flight instead of a window grown from 64 KiB.
    ("grpc.http2.lookahead_bytes", 64 << 20),
    ("grpc.http2.max_frame_size", 16 << 20),
    ("grpc.http2.write_buffer_size", 8 << 20),
    # Replicas: each call goes to the next ready one (a refusal is retried, above).
    ("grpc.lb_policy_name", "round_robin"),
    # A server that stops answering without closing the connection (SIGSTOP, a hung host, a
    # dropped route) would hold a call until its deadline (an hour by default): a ping after
    # 30 s without incoming data, unanswered for 20 s, ends the calls with UNAVAILABLE. Only
    # while calls are open, and without a limit on pings between data frames (a long
    # quantisation sends none). nvfp4d must allow pings this often (docs/python.md,
    # "Keepalive").
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # A keepalive that finds another ping in flight (gRPC's flow control pings) waits for
    # that one's answer instead, for the ping timeout: 1 min unless set.
    ("grpc.http2.ping_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


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
        return self.code in RETRYABLE and not _is_message_size_error(self.code, self.details)


class InvalidArgumentError(Nvfp4Error, ValueError):
    """nvfp4d refused the request (INVALID_ARGUMENT); details name the field or element."""


def _is_message_size_error(code: grpc.StatusCode, details: str) -> bool:
    return (code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and _MESSAGE_SIZE_ERROR.search(details) is not None)


def _error(rpc_error: grpc.RpcError, job_id: str = "") -> Nvfp4Error:
    code = rpc_error.code() if hasattr(rpc_error, "code") else grpc.StatusCode.UNKNOWN
    details = (rpc_error.details() if hasattr(rpc_error, "details") else None) or str(rpc_error)
    if _is_message_size_error(code, details):
        details += _MESSAGE_SIZE_HINT
    cls = InvalidArgumentError if code == grpc.StatusCode.INVALID_ARGUMENT else Nvfp4Error
    return cls(code, details, job_id)


def _cancelled() -> Nvfp4Error:
    return Nvfp4Error(grpc.StatusCode.CANCELLED, "cancelled by the client")


def _choice(table: dict, value: str, what: str) -> int:
    try:
        return table[value]
    except (KeyError, TypeError):  # TypeError: an unhashable value, such as a list
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {value!r}") from None


def _integer(value, what: str, minimum: Optional[int] = None) -> int:
    """value as an int; TypeError naming `what` for a float, a str or a bool (448.0 and "448"
    are not silently taken for 448), ValueError below `minimum`."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} "
                        f"{value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {number}")
    return number


def _scale_max(value) -> int:
    number = _integer(value, "scale_max")
    if number not in (256, 448):  # nvfp4q's --scale-max takes these two
        raise ValueError(f"scale_max (F in g = amax / (6 F)) must be 256 or 448, got {number}")
    return number


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _float32(value, what: str) -> float:
    """value as the float32 nvfp4d receives (the proto field is a float): finite, and within
    float32's range, so that a float64 value is not turned into inf on the way."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)  # also a 0-d numpy array or torch tensor
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    with np.errstate(over="ignore"):
        if not np.isfinite(np.float32(number)):
            raise ValueError(f"{what} = {number:g} is beyond float32's range (largest "
                             f"{_FLOAT32_MAX:g}): it would be sent as inf")
    return number


def _strings(value, what: str) -> list:
    """A list of strings from one str (one item: a glob, a state) or an iterable of them; a
    bare str is one item, never its characters."""
    if isinstance(value, str):
        return [value]
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} takes strings, got {type(item).__name__} {item!r}")
    return items


def _bearer_token(token: Optional[str], token_file: Optional[str]) -> Optional[str]:
    """The token to send: token=, or the contents of token_file (nvfp4q --token-file), without
    the surrounding whitespace a file ends with. A header value is printable ASCII: anything
    else would fail each call with gRPC's bare "Invalid metadata"."""
    if token is not None and token_file is not None:
        raise ValueError("token and token_file exclude each other: pass one of them")
    what = "token"
    if token_file is not None:
        with open(token_file, encoding="utf-8") as f:
            token = f.read()
        what = f"token_file {token_file}"
    elif not token:
        return None  # None or "": no authorization header
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, got {type(token).__name__}")
    token = token.strip()
    if not token:
        raise ValueError(f"{what}: the token is empty")
    for position, char in enumerate(token):
        if not " " <= char <= "~":  # the value itself is a secret: only where, and what
            raise ValueError(f"{what}: the token holds U+{ord(char):04X} at position "
                             f"{position}; a bearer token is printable ASCII")
    return token


def _channel_options(extra) -> list:
    """The client's channel options (_CHANNEL_OPTIONS) with `extra`, a dict or (name, value)
    pairs, replacing those of the same name and adding the others."""
    options = dict(_CHANNEL_OPTIONS)
    for name, value in (extra.items() if isinstance(extra, dict) else extra or ()):
        if not isinstance(name, str):
            raise TypeError(f"channel_options: an option name is a str, got {name!r}")
        options[name] = value
    return list(options.items())


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


def _tensor_header(method, objective, scale_max, amax, global_scale, output,
                   dequantized_dtype, name) -> "pb.TensorHeader":
    """The options of quantize() as a TensorHeader (without the tensor's dtype and shape),
    checked: quantize_many checks its options with it before it pulls a tensor."""
    if amax is not None and global_scale is not None:
        # As nvfp4q's --amax and --global-scale: with both, nvfp4d would use g and ignore amax.
        raise ValueError("amax and global_scale exclude each other: pass the group's amax, or "
                         "its g as global_scale")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    header = pb.TensorHeader(
        name=name, method=_choice(METHODS, method, "method"),
        objective=_choice(OBJECTIVES, objective, "objective"), scale_max=_scale_max(scale_max),
        output_mode=_choice(OUTPUTS, output, "output"),
        dequantized_dtype=_choice(DEQUANTIZED_DTYPES, dequantized_dtype, "dequantized_dtype"))
    if amax is not None:
        header.amax = _float32(amax, "amax")
    if global_scale is not None:
        header.global_scale = _float32(global_scale, "global_scale")
    return header


def _batch_item(index: int, item, options: dict):
    """(name, tensor, importance) of quantize_many's item number `index`: a tensor, (name,
    tensor) or (name, tensor, importance); the options give the defaults."""
    if not isinstance(item, tuple):
        return options.get("name", ""), item, options.get("importance")
    if len(item) not in (2, 3):
        raise TypeError(f"quantize_many: item {index} is a tuple of {len(item)}; items are "
                        "tensors, (name, tensor) or (name, tensor, importance)")
    if not isinstance(item[0], str):
        raise TypeError(f"quantize_many: item {index} is a tuple that starts with a "
                        f"{type(item[0]).__name__}; the name comes first: (name, tensor)")
    importance = item[2] if len(item) == 3 else options.get("importance")
    return item[0] or options.get("name", ""), item[1], importance


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
    token: bearer token (nvfp4d --auth-token-file), surrounding whitespace stripped; or
    token_file: a file holding it (nvfp4q --token-file). tls_ca_file: PEM bundle to trust (TLS
    on), or tls=True for TLS with the system's roots. timeout: deadline of each call in seconds.
    retries: attempts per tensor when nvfp4d answers UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED
    (backoff from 0.5 s doubling to 8 s, jittered: the default 8 attempts give up after 16 to
    32 s of refusals; every attempt carries the same request_id).
    chunk_bytes: upload chunk size (capped by the server's limits).
    channel_options: gRPC channel options, a dict or (name, value) pairs, replacing the
    client's own of the same name (such as the keepalive: docs/python.md).
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls: bool = False,
                 tls_ca_file: Optional[str] = None, timeout: float = 3600.0, retries: int = 8,
                 chunk_bytes: int = 4 << 20, channel_options=None):
        self.timeout = timeout
        self.retries = _integer(retries, "retries (attempts per call)", 1)
        self.chunk_bytes = _integer(chunk_bytes, "chunk_bytes", 1)
        token = _bearer_token(token, token_file)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = _channel_options(channel_options)
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

    def jobs(self, states: Union[str, Sequence[str]] = ()) -> list:
        """Recent jobs, newest first; states filters: one state ("running") or several
        (["running", "failed"])."""
        names = {results.enum_name(pb.JobState, v): v for v in pb.JobState.values()
                 if v != pb.JOB_STATE_UNSPECIFIED}
        request = pb.ListJobsRequest(
            states=[_choice(names, s, "state") for s in _strings(states, "states")])
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
        scale_max: F in g = amax / (6 F), 256 or 448. amax / global_scale (one or the other,
            as nvfp4q's --amax and --global-scale): a fused group's (q/k/v, gate/up) shared
            amax or g; by default the tensor's own amax, computed here so that nvfp4d quantises
            rows while the rest is still uploading. The result's amax is the one g came from;
            with global_scale given, the tensor's own.
        output: "packed", "dequantized" (fake-quant only) or "both"; dequantized_dtype "f32" or
            "bf16". name labels the job; request_id is the idempotency key (generated).
        progress(done_bytes, total_bytes, phase) is called with phase "upload" and "download".
            Streamed: per chunk (upload calls then come from gRPC's request thread); an
            exception it raises ends the call (cancelled on the server) and reaches the
            caller. One message: "upload" once before it is sent (an exception sends nothing)
            and "download" once with the whole result (the server's job is done by then; the
            exception reaches the caller).
        """
        header = _tensor_header(method, objective, scale_max, amax, global_scale, output,
                                dequantized_dtype, name)
        t = tensor_bytes(tensor)
        header.request_id = request_id or uuid.uuid4().hex
        header.dtype = DTYPES[t.dtype]
        header.shape[:] = [t.rows, t.cols]
        weights = None
        if importance is not None:
            layout, weights = importance_bytes(importance, t.rows, t.cols, t.shape)
            header.importance_layout = IMPORTANCE[layout]
        elif objective == "wmse":
            raise ValueError("objective 'wmse' needs importance weights")
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
                # A cancel that came while this attempt was failing wins over its error: the
                # caller asked to stop, and gets CANCELLED whenever it asked.
                if scope.cancelled.is_set():
                    raise _cancelled() from None
                if not e.retryable or number == self.retries:
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

    def _chunk_bytes(self, limits: results.Limits) -> int:
        """The upload chunk: chunk_bytes, at most the server's max_chunk_bytes, and small
        enough for its max_message_bytes (the server refuses a larger message with gRPC's
        "Received message larger than max", whatever max_chunk_bytes it advertises). A limit
        of 0 is one the server did not advertise."""
        chunk = self.chunk_bytes
        if limits.max_chunk_bytes > 0:
            chunk = min(chunk, limits.max_chunk_bytes)
        if limits.max_message_bytes > _MESSAGE_SLACK:
            chunk = min(chunk, limits.max_message_bytes - _MESSAGE_SLACK)
        return chunk

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
                                     timeout, progress, self._chunk_bytes(limits))

    def _quantize_unary(self, scope, t, sizes, header, data, weight_bytes, upload, timeout,
                        progress):
        request = pb.QuantizeTensorUnaryRequest(
            header=header, data=data.tobytes(),
            importance=weight_bytes.tobytes() if weight_bytes is not None else b"")
        # One message each way, so one call each way: the upload before the message is sent
        # (an exception there sends nothing), the download once the whole result is here.
        # The server's job is done by then: an exception there cannot cancel it.
        if progress:
            progress(upload, upload, "upload")
        m = self._unary_in_scope(scope, self._unary, request, timeout)
        assembly = _Assembly(t, sizes, None)
        assembly.job_id = m.job_id
        assembly.start(m.result)
        for kind in ("packed", "scales", "dequantized"):
            piece = getattr(m, kind)
            if piece:
                assembly.add(kind, piece)
        assembly.metrics = m.metrics
        result = assembly.finish()
        if progress:
            progress(assembly.total, assembly.total, "download")
        return result

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
                    sent += len(piece)
                    # Reported as the chunk is handed to gRPC, not after: gRPC resumes this
                    # iterator past the last chunk only when it wants more, which may be after
                    # the call has ended, so a report after the yield could come after
                    # quantize() returned, or never.
                    if progress:
                        try:
                            progress(sent, upload, "upload")
                        except BaseException as e:  # noqa: B036 - handed to the caller
                            failure.append(e)
                            if started:  # else the caller has not registered it yet
                                started[0].cancel()
                            return
                    yield pb.QuantizeTensorRequest(**{kind: piece})

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
        flight are cancelled (also when the caller stops iterating early).

        Items are taken up to max_in_flight ahead of the result being yielded and read later,
        on worker threads (like an asynchronous copy): a tensor, and its importance, must not
        be changed until its result has been yielded. A generator that refills one buffer
        for each item must yield a copy (buffer.copy()) or a fresh array instead.

        The arguments and options are checked here, before the first tensor is taken; the
        items are checked as they are taken."""
        max_in_flight = _integer(max_in_flight, "max_in_flight", 1)
        unknown = options.keys() - _QUANTIZE_DEFAULTS.keys()
        if unknown:
            raise TypeError(f"quantize_many got options quantize() does not take: "
                            f"{', '.join(sorted(unknown))}")
        if options.get("request_id") is not None:
            raise ValueError("request_id is per tensor: quantize_many makes one for each")
        _tensor_header(**{k: v for k, v in dict(_QUANTIZE_DEFAULTS, **options).items()
                          if k in _HEADER_OPTIONS})
        if isinstance(tensors, np.ndarray) or is_torch(tensors):
            # Iterating a tensor yields its rows: each would be quantised on its own.
            raise TypeError("quantize_many takes an iterable of tensors (a list, a generator); "
                            "quantise one tensor with quantize()")
        return self._quantize_many(iter(tensors), max_in_flight, options)

    def _quantize_many(self, items: Iterator, max_in_flight: int, options: dict):
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
            for index, item in enumerate(items):
                try:
                    name, tensor, importance = _batch_item(index, item, options)
                except TypeError as e:
                    # Raised in input order, after the results of the items before it.
                    refused = concurrent.futures.Future()
                    refused.set_exception(e)
                    pending.append(refused)
                    break
                call_options = dict(options, name=name, importance=importance)
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
                            scale_max: int = 256, include: Union[str, Sequence[str]] = (),
                            exclude: Union[str, Sequence[str]] = (), importance_path: str = "",
                            calibration_path: str = "", shard_bytes: int = 0, name: str = "",
                            timeout: Optional[float] = None,
                            progress: Optional[Callable[[results.CheckpointProgress], None]]
                            = None) -> dict:
        """Runs a checkpoint job on nvfp4d: model_dir and out_dir are paths on the server,
        inside its --allowed-root directories (docs/checkpoints.md). Returns the report (the
        JSON of `nvfp4q quantize --report`) as a dict; progress sees every event. include and
        exclude are globs (nvfp4q's --include / --exclude): one str or a list. A job lost
        with its replica (UNAVAILABLE, ...) is resubmitted like a tensor (retries; progress
        then starts again with the new job's events); on a shared file system the next replica
        resumes after the finished shards."""
        request = pb.QuantizeCheckpointRequest(
            model_dir=model_dir, out_dir=out_dir, format=_choice(FORMATS, format, "format"),
            method=_choice(METHODS, method, "method"),
            objective=_choice(OBJECTIVES, objective, "objective"),
            scale_max=_scale_max(scale_max), include=_strings(include, "include"),
            exclude=_strings(exclude, "exclude"), importance_path=importance_path,
            calibration_path=calibration_path,
            shard_bytes=_integer(shard_bytes, "shard_bytes", 0), name=name)
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


# quantize()'s options and their defaults: what quantize_many takes and checks up front.
_QUANTIZE_DEFAULTS = {name: parameter.default for name, parameter
                      in inspect.signature(Client.quantize).parameters.items()
                      if parameter.kind == parameter.KEYWORD_ONLY}
_HEADER_OPTIONS = frozenset(inspect.signature(_tensor_header).parameters)
