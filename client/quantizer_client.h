// QuantizerClient: the C++ client of nvfp4d (nvfp4.v1.Quantizer).
//
// QuantizeTensor streams a tensor (header, importance, data in chunks) and reassembles the
// NVFP4 result into the same QuantizedTensor the embedded engine returns, so callers switch
// between local and remote quantisation without other changes. Unless the caller fixed the
// global scale (options.amax / global_scale), the client scans the tensor for its amax first and
// sends it in the header: same scale, same bytes, and the server quantises while the upload is
// still running. Errors come back as
// absl::Status with the server's gRPC code and message. A client may be used from several
// threads; CancelInFlight() (for example from a Ctrl-C handler thread) cancels every call in
// progress.
#ifndef NVFP4_CLIENT_QUANTIZER_CLIENT_H_
#define NVFP4_CLIENT_QUANTIZER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/slice_pool.h"
#include "grpcpp/grpcpp.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quantize_options.h"
#include "kernels/quantized_tensor.h"
#include "kernels/tensor.h"
#include "nvfp4/v1/quantizer.grpc.pb.h"
#include "server/checkpoint/checkpoint_job.h"

namespace nvfp4::client {

struct ClientOptions {
  // "host:port"; several replicas as "ip:port,ip:port,..." or "dns:///name:port" (each call is
  // balanced round-robin over the addresses); or any gRPC target ("ipv4:", "unix:", ...).
  std::string target;
  std::string tls_ca_file;                  // set: TLS, trusting this PEM CA bundle
  std::string token;                        // set: sent as "authorization: Bearer <token>"
  absl::Duration timeout = absl::Hours(1);  // deadline of each call
  int64_t chunk_bytes = int64_t{4} << 20;   // upload chunk size (<= the server's limit)
};

// Called during uploads and downloads: bytes done / total and the phase ("upload",
// "quantize", "download").
using ProgressFn = std::function<void(int64_t done, int64_t total, std::string_view phase)>;

// The gRPC target for ClientOptions::target: "a:1,b:2" of IP literals becomes "ipv4:a:1,b:2"
// (or ipv6:); host names in a list are refused (use dns:/// to reach several replicas by name).
absl::StatusOr<std::string> ChannelTarget(const std::string& servers);

class QuantizerClient {
 public:
  static absl::StatusOr<std::unique_ptr<QuantizerClient>> Connect(const ClientOptions& options);

  // name labels the job on the server; job_id (optional) receives its id; request_id is the
  // idempotency key kept on the server's job (the same for every retry of one tensor).
  absl::StatusOr<QuantizedTensor> QuantizeTensor(
      const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
      const std::string& name = "", const ProgressFn& progress = {}, std::string* job_id = nullptr,
      const std::string& request_id = "");
  // The same without copying the tensor into upload buffers: data chunks are sent straight
  // from input.data, which `owner` must keep alive and unchanged. gRPC can hold a sent chunk
  // after the call has returned (until its connection writes or drops it), so the chunks hold
  // references to `owner` rather than the call waiting for them.
  absl::StatusOr<QuantizedTensor> QuantizeTensor(
      std::shared_ptr<const void> owner, const TensorView& input, const ImportanceView& importance,
      const QuantizeOptions& options, const std::string& name = "", const ProgressFn& progress = {},
      std::string* job_id = nullptr, const std::string& request_id = "");

  // True once CancelInFlight was called: later calls are cancelled at once.
  bool cancelled();

  // Runs a checkpoint job on the server (QuantizeCheckpoint): the paths are server paths.
  // progress (optional) sees the server's events, with each finished tensor's report.
  // options.paths and options.concurrency are the server's business and are ignored.
  absl::StatusOr<checkpoint::CheckpointReport> QuantizeCheckpoint(
      const checkpoint::CheckpointJobOptions& options,
      const checkpoint::CheckpointProgressFn& progress = {}, std::string* job_id = nullptr);

  absl::StatusOr<v1::ServerInfo> GetServerInfo();
  // grpc.health.v1.Health/Check for `service` ("" = the server, "nvfp4.v1.Quantizer" =
  // readiness, "liveness"): SERVING, NOT_SERVING, SERVICE_UNKNOWN, ... as named by the proto.
  absl::StatusOr<std::string> CheckHealth(const std::string& service);
  absl::StatusOr<std::vector<v1::Job>> ListJobs();
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);

  void CancelInFlight();

  // Upload buffers kept for the copying calls (diagnostics: a zero-copy call uses none).
  size_t idle_upload_buffers() const { return upload_pool_->idle(); }

 private:
  // input_owner: null to copy the data chunks, else what keeps input.data alive.
  absl::StatusOr<QuantizedTensor> Quantize(const std::shared_ptr<const void>& input_owner,
                                           const TensorView& input,
                                           const ImportanceView& importance,
                                           const QuantizeOptions& options, const std::string& name,
                                           const ProgressFn& progress, std::string* job_id,
                                           const std::string& request_id);

  explicit QuantizerClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);
  void Prepare(grpc::ClientContext* context);
  void Forget(grpc::ClientContext* context);

  // Scans a tensor for its amax (and NaN/Inf) before uploading it, so the server can quantise
  // rows while later ones are still in flight. Created on first use.
  absl::StatusOr<float> LocalAmax(const TensorView& input);

  const ClientOptions options_;
  absl::Mutex scanner_mu_;
  std::unique_ptr<cpu::CpuBackend> scanner_ ABSL_GUARDED_BY(scanner_mu_);
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quantizer::Stub> stub_;
  // Upload chunk buffers, reused across calls (at most 16 chunks, 64 MiB by default, stay
  // allocated between calls: about the HTTP/2 window's worth that is in flight anyway).
  std::shared_ptr<SlicePool> upload_pool_;
  absl::Mutex mu_;
  std::set<grpc::ClientContext*> in_flight_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace nvfp4::client

#endif  // NVFP4_CLIENT_QUANTIZER_CLIENT_H_
