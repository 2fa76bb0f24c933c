#include "client/quantizer_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "client/blocking_raw_stream.h"
#include "common/large_buffer.h"
#include "common/status_macros.h"
#include "grpcpp/generic/generic_stub.h"
#include "kernels/numerics/half.h"
#include "proto/chunk_wire.h"
#include "proto/convert.h"

namespace nvfp4::client {
namespace {

absl::Status Unexpected(const char* what) {
  return absl::InternalError(absl::StrCat("protocol error: unexpected ", what, " from the server"));
}

// The result header must describe the tensor that was sent: its sizes decide what the client
// reserves and accepts, so a wrong or hostile server cannot make it allocate without bound.
absl::Status CheckResultHeader(const api::TensorSpec& spec, const v1::ResultHeader& header) {
  if (header.rows() != spec.rows || header.cols() != spec.cols ||
      header.padded_cols() != PaddedCols(spec.cols) ||
      header.packed_bytes() != PackedBytes(spec.rows, spec.cols) ||
      header.scales_bytes() != ScaleBytes(spec.rows, spec.cols) ||
      header.dequantized_bytes() != spec.dequantized_bytes()) {
    return absl::InternalError(
        absl::StrCat("protocol error: the server's result header (rows ", header.rows(), ", cols ",
                     header.cols(), ", packed ", header.packed_bytes(), " B, scales ",
                     header.scales_bytes(), " B, dequantized ", header.dequantized_bytes(),
                     " B) does not match the tensor sent [", spec.rows, ", ", spec.cols, "]"));
  }
  return absl::OkStatus();
}

// A slice of memory that `owner` keeps alive; the slice holds a reference until gRPC drops it.
grpc::Slice BorrowedSlice(const std::shared_ptr<const void>& owner, const void* data, size_t n) {
  using Holder = std::shared_ptr<const void>;
  return grpc::Slice(
      const_cast<void*>(data), n, [](void* holder) { delete static_cast<Holder*>(holder); },
      new Holder(owner));
}

}  // namespace

absl::StatusOr<std::string> ChannelTarget(const std::string& servers) {
  if (servers.empty()) return absl::InvalidArgumentError("no server address given");
  for (const char* scheme : {"dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:"}) {
    if (absl::StartsWith(servers, scheme)) return servers;
  }
  if (servers.find(',') == std::string::npos) return servers;
  bool v4 = true, v6 = true;
  for (absl::string_view address : absl::StrSplit(servers, ',')) {
    const size_t colon = address.rfind(':');
    if (address.empty() || colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port"));
    }
    const std::string host(address.substr(0, colon));
    in_addr a4;
    in6_addr a6;
    const bool is_v4 = ::inet_pton(AF_INET, host.c_str(), &a4) == 1;
    const bool is_v6 = host.size() > 2 && host.front() == '[' && host.back() == ']' &&
                       ::inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6) == 1;
    if (!is_v4 && !is_v6) {
      return absl::InvalidArgumentError(absl::StrCat(
          "several servers must be IP addresses ('", host,
          "' is a name): use dns:///NAME:PORT to balance over the addresses of a name"));
    }
    v4 = v4 && is_v4;
    v6 = v6 && is_v6;
  }
  if (!v4 && !v6) return absl::InvalidArgumentError("do not mix IPv4 and IPv6 servers");
  return absl::StrCat(v4 ? "ipv4:" : "ipv6:", servers);
}

absl::StatusOr<std::unique_ptr<QuantizerClient>> QuantizerClient::Connect(
    const ClientOptions& options) {
  ASSIGN_OR_RETURN(const std::string target, ChannelTarget(options.target));
  if (options.chunk_bytes <= 0) return absl::InvalidArgumentError("chunk_bytes must be positive");
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (!options.tls_ca_file.empty()) {
    std::ifstream in(options.tls_ca_file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read CA file ", options.tls_ca_file));
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Large tensors: let HTTP/2 keep several chunks in flight instead of growing its window
  // from 64 KiB.
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 16 << 20);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 8 << 20);
  // A replica that stops answering (frozen, or cut off without a FIN) fails the calls on it with
  // UNAVAILABLE within ~50 s instead of holding them until their deadline (an hour by default).
  // nvfp4d permits pings this often (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30 * 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Replicas (several addresses): every call goes to the next ready one; a failed or
  // draining replica is skipped until it is back.
  args.SetLoadBalancingPolicyName("round_robin");
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  return std::unique_ptr<QuantizerClient>(new QuantizerClient(options, std::move(channel)));
}

QuantizerClient::QuantizerClient(const ClientOptions& options,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Quantizer::NewStub(channel_)),
      upload_pool_(SlicePool::Create(static_cast<size_t>(options.chunk_bytes), 16)) {}

bool QuantizerClient::cancelled() {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void QuantizerClient::Prepare(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  absl::MutexLock lock(&mu_);
  if (cancelled_) context->TryCancel();
  in_flight_.insert(context);
}

void QuantizerClient::Forget(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  in_flight_.erase(context);
}

void QuantizerClient::CancelInFlight() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* context : in_flight_) context->TryCancel();
}

absl::StatusOr<QuantizedTensor> QuantizerClient::QuantizeTensor(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const std::string& name, const ProgressFn& progress, std::string* job_id,
    const std::string& request_id) {
  return Quantize(nullptr, input, importance, options, name, progress, job_id, request_id);
}

absl::StatusOr<QuantizedTensor> QuantizerClient::QuantizeTensor(
    std::shared_ptr<const void> owner, const TensorView& input, const ImportanceView& importance,
    const QuantizeOptions& options, const std::string& name, const ProgressFn& progress,
    std::string* job_id, const std::string& request_id) {
  if (owner == nullptr) return absl::InvalidArgumentError("no owner for the tensor's memory");
  return Quantize(owner, input, importance, options, name, progress, job_id, request_id);
}

absl::StatusOr<QuantizedTensor> QuantizerClient::Quantize(
    const std::shared_ptr<const void>& input_owner, const TensorView& input,
    const ImportanceView& importance, const QuantizeOptions& options, const std::string& name,
    const ProgressFn& progress, std::string* job_id, const std::string& request_id) {
  api::TensorSpec spec;
  spec.name = name;
  spec.request_id = request_id;
  spec.dtype = input.dtype;
  spec.rows = input.rows;
  spec.cols = input.cols;
  spec.options = options;
  spec.importance_layout = importance.layout;
  spec.want_packed = true;
  spec.want_dequantized = options.want_dequantized;
  if (importance.present() && importance.size != spec.importance_values()) {
    return absl::InvalidArgumentError(absl::StrCat("importance has ", importance.size,
                                                   " values, expected ", spec.importance_values()));
  }

  if (!spec.options.amax.has_value() && !spec.options.global_scale.has_value()) {
    ASSIGN_OR_RETURN(const float amax, LocalAmax(input));
    spec.options.amax = amax;
  }

  grpc::ClientContext context;
  Prepare(&context);
  // On every exit, exceptions included (a failed buffer allocation), before `context` dies.
  absl::Cleanup forget = [this, &context] { Forget(&context); };
  BlockingRawStream stream(channel_, &context, "/nvfp4.v1.Quantizer/QuantizeTensor");
  // `cancel`: on a local failure the server may still be sending, so cancel or Finish would
  // wait for it. Not after a failed write: the call is already over and cancelling now would
  // race the server's status (e.g. UNAUTHENTICATED) and replace it with CANCELLED.
  auto finish = [&](absl::Status local, bool cancel = true) -> absl::Status {
    if (!local.ok() && cancel) context.TryCancel();
    const grpc::Status remote = stream.Finish();
    // The server's status explains a failed write/read better than the local symptom, except
    // the CANCELLED that our own cancel just caused.
    const bool own_cancel =
        !local.ok() && cancel && remote.error_code() == grpc::StatusCode::CANCELLED;
    if (!remote.ok() && !own_cancel) return api::FromGrpcStatus(remote);
    return local;
  };

  v1::QuantizeTensorRequest header_message;
  *header_message.mutable_header() = api::HeaderFromSpec(spec);
  grpc::ByteBuffer message;
  bool own_buffer = false;
  if (!grpc::SerializationTraits<v1::QuantizeTensorRequest>::Serialize(header_message, &message,
                                                                       &own_buffer)
           .ok()) {
    return finish(absl::InternalError("cannot serialise the request header"));
  }
  const int64_t importance_bytes = spec.importance_values() * 4;
  const int64_t total_upload = importance_bytes + static_cast<int64_t>(input.bytes());
  int64_t uploaded = 0;
  bool write_ok = stream.Write(message);
  // Chunks go out as slices of pooled buffers (one copy, no protobuf serialisation), or of the
  // caller's tensor itself when its owner was given (each slice holds a reference to it).
  auto send = [&](const void* base, int64_t bytes, uint32_t field,
                  const std::shared_ptr<const void>& owner) {
    for (int64_t offset = 0; write_ok && offset < bytes; offset += options_.chunk_bytes) {
      const int64_t n = std::min(options_.chunk_bytes, bytes - offset);
      const char* from = static_cast<const char*>(base) + offset;
      write_ok = stream.Write(api::SingleBytesFieldMessage(
          field, owner ? BorrowedSlice(owner, from, static_cast<size_t>(n))
                       : upload_pool_->Copy(from, static_cast<size_t>(n))));
      uploaded += n;
      if (progress) progress(uploaded, total_upload, "upload");
    }
  };
  if (importance_bytes > 0) {
    send(importance.data, importance_bytes, v1::QuantizeTensorRequest::kImportanceFieldNumber,
         nullptr);
  }
  send(input.data, static_cast<int64_t>(input.bytes()), v1::QuantizeTensorRequest::kDataFieldNumber,
       input_owner);
  if (write_ok) write_ok = stream.WritesDone();
  if (!write_ok) {
    // Drain whatever the server sent before closing so Finish returns its status at once.
    grpc::ByteBuffer ignored;
    while (stream.Read(&ignored)) {
    }
    return finish(absl::UnavailableError("the server closed the stream"), /*cancel=*/false);
  }
  if (progress) progress(0, 0, "quantize");

  QuantizedTensor out;
  std::vector<uint8_t> dequantized;
  v1::ResultHeader header;
  bool have_header = false, have_metrics = false;
  int64_t received = 0, expected = 0;
  // Where a byte section's chunks go and how many bytes the header announced for it
  // (to == nullptr: not a byte section).
  struct Section {
    std::vector<uint8_t>* to = nullptr;
    int64_t announced = 0;
  };
  auto section = [&](uint32_t field) -> Section {
    switch (field) {
      case v1::QuantizeTensorResponse::kPackedFieldNumber:
        return {&out.packed, header.packed_bytes()};
      case v1::QuantizeTensorResponse::kScalesFieldNumber:
        return {&out.scales, header.scales_bytes()};
      case v1::QuantizeTensorResponse::kDequantizedFieldNumber:
        return {&dequantized, header.dequantized_bytes()};
      default:
        return {};
    }
  };
  v1::QuantizeTensorResponse response;
  grpc::ByteBuffer raw;
  while (stream.Read(&raw)) {
    // Byte chunks are copied once, from the received slices; other messages are parsed.
    const std::optional<api::BytesFieldView> chunk = api::AsSingleBytesField(raw);
    if (const Section s = chunk ? section(chunk->field_number()) : Section{}; s.to != nullptr) {
      std::vector<uint8_t>* to = s.to;
      if (!have_header) return finish(Unexpected("result bytes before the result header"));
      if (static_cast<int64_t>(to->size() + chunk->size()) > s.announced) {
        return finish(Unexpected("result bytes beyond the announced size"));
      }
      chunk->ForEachPiece(
          [to](const uint8_t* data, size_t n) { to->insert(to->end(), data, data + n); });
      received += static_cast<int64_t>(chunk->size());
      if (progress && expected > 0) progress(received, expected, "download");
      continue;
    }
    if (!grpc::SerializationTraits<v1::QuantizeTensorResponse>::Deserialize(&raw, &response).ok()) {
      return finish(Unexpected("unparsable message"));
    }
    switch (response.payload_case()) {
      case v1::QuantizeTensorResponse::kAccepted:
        if (job_id) *job_id = response.accepted().job_id();
        break;
      case v1::QuantizeTensorResponse::kResult:
        if (have_header) return finish(Unexpected("second result header"));
        header = response.result();
        if (absl::Status bad = CheckResultHeader(spec, header); !bad.ok()) return finish(bad);
        have_header = true;
        out.rows = header.rows();
        out.cols = header.cols();
        out.padded_cols = header.padded_cols();
        out.global_scale = header.global_scale();
        out.amax = header.amax();
        ReserveOnHugePages(out.packed, static_cast<size_t>(header.packed_bytes()));
        ReserveOnHugePages(out.scales, static_cast<size_t>(header.scales_bytes()));
        ReserveOnHugePages(dequantized, static_cast<size_t>(header.dequantized_bytes()));
        expected = header.packed_bytes() + header.scales_bytes() + header.dequantized_bytes();
        break;
      case v1::QuantizeTensorResponse::kMetrics:
        out.metrics = api::MetricsFromProto(response.metrics());
        have_metrics = true;
        break;
      default:
        // Byte sections are single fields, taken above; anything else is not ours.
        return finish(Unexpected("message"));
    }
  }
  RETURN_IF_ERROR(finish(absl::OkStatus()));
  if (!have_header || !have_metrics) return Unexpected("end of stream before the results");
  if (static_cast<int64_t>(out.packed.size()) != header.packed_bytes() ||
      static_cast<int64_t>(out.scales.size()) != header.scales_bytes() ||
      static_cast<int64_t>(dequantized.size()) != header.dequantized_bytes()) {
    return absl::DataLossError("the server sent fewer result bytes than announced");
  }
  if (!dequantized.empty()) {
    ResizeOnHugePages(out.dequantized, static_cast<size_t>(out.rows * out.cols));
    std::memcpy(out.dequantized.data(), dequantized.data(),
                std::min(dequantized.size(), out.dequantized.size() * sizeof(float)));
  }
  return out;
}

absl::StatusOr<checkpoint::CheckpointReport> QuantizerClient::QuantizeCheckpoint(
    const checkpoint::CheckpointJobOptions& options,
    const checkpoint::CheckpointProgressFn& progress, std::string* job_id) {
  const v1::QuantizeCheckpointRequest request = api::CheckpointRequestFromOptions(options);
  grpc::ClientContext context;
  Prepare(&context);
  auto stream = stub_->QuantizeCheckpoint(&context, request);
  v1::QuantizeCheckpointResponse response;
  std::optional<absl::StatusOr<checkpoint::CheckpointReport>> report;
  absl::Status local;
  while (stream->Read(&response)) {
    switch (response.payload_case()) {
      case v1::QuantizeCheckpointResponse::kAccepted:
        if (job_id) *job_id = response.accepted().job_id();
        break;
      case v1::QuantizeCheckpointResponse::kProgress: {
        if (!progress) break;
        std::optional<checkpoint::TensorReport> tensor;
        progress(api::ProgressFromProto(response.progress(), &tensor));
        break;
      }
      case v1::QuantizeCheckpointResponse::kReportJson: {
        const nlohmann::ordered_json json =
            nlohmann::ordered_json::parse(response.report_json(), nullptr, false);
        report = json.is_discarded()
                     ? absl::StatusOr<checkpoint::CheckpointReport>(
                           absl::DataLossError("the server sent an unparsable report"))
                     : checkpoint::CheckpointReportFromJson(json);
        break;
      }
      default:
        break;
    }
  }
  const grpc::Status status = stream->Finish();
  Forget(&context);
  if (!status.ok()) return api::FromGrpcStatus(status);
  if (!report.has_value()) return Unexpected("end of stream before the report");
  return *std::move(report);
}

absl::StatusOr<std::string> QuantizerClient::CheckHealth(const std::string& service) {
  // grpc.health.v1 through the generic stub, so the client needs no generated health code:
  // HealthCheckRequest{string service = 1}, HealthCheckResponse{ServingStatus status = 1}.
  if (service.size() > 127) return absl::InvalidArgumentError("service name too long");
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back(0x0A);
    request_bytes.push_back(static_cast<char>(service.size()));
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::GenericStub stub(channel_);
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  Forget(&context);
  if (!status.ok()) return api::FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::DataLossError("unreadable health response");
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  int value = 0;  // UNKNOWN when the field is absent (proto3 default)
  for (size_t i = 0; i < bytes.size();) {
    const uint8_t tag = static_cast<uint8_t>(bytes[i++]);
    if (tag == 0x08 && i < bytes.size()) {
      value = static_cast<uint8_t>(bytes[i++]) & 0x7F;
    } else {
      break;  // nothing else is defined in HealthCheckResponse
    }
  }
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  return std::string(value >= 0 && value < 4 ? kNames[value] : "UNKNOWN");
}

absl::StatusOr<float> QuantizerClient::LocalAmax(const TensorView& input) {
  absl::MutexLock lock(&scanner_mu_);
  if (!scanner_) {
    ASSIGN_OR_RETURN(scanner_, cpu::CpuBackend::Create({}));
  }
  return scanner_->ComputeAmax(input);
}

absl::StatusOr<v1::ServerInfo> QuantizerClient::GetServerInfo() {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ServerInfo info;
  const grpc::Status status = stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  Forget(&context);
  RETURN_IF_ERROR(api::FromGrpcStatus(status));
  return info;
}

absl::StatusOr<std::vector<v1::Job>> QuantizerClient::ListJobs() {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ListJobsResponse response;
  const grpc::Status status = stub_->ListJobs(&context, v1::ListJobsRequest(), &response);
  Forget(&context);
  RETURN_IF_ERROR(api::FromGrpcStatus(status));
  return std::vector<v1::Job>(response.jobs().begin(), response.jobs().end());
}

absl::StatusOr<v1::Job> QuantizerClient::GetJob(const std::string& job_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  const grpc::Status status = stub_->GetJob(&context, request, &job);
  Forget(&context);
  RETURN_IF_ERROR(api::FromGrpcStatus(status));
  return job;
}

absl::StatusOr<v1::Job> QuantizerClient::CancelJob(const std::string& job_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  const grpc::Status status = stub_->CancelJob(&context, request, &job);
  Forget(&context);
  RETURN_IF_ERROR(api::FromGrpcStatus(status));
  return job;
}

}  // namespace nvfp4::client
