// QuantizerService: the nvfp4.v1.Quantizer gRPC service on the callback API.
//
// Reactions never block: they validate, admit (Scheduler::Admit), copy the incoming chunk into
// the job's buffer and return; engines run on the scheduler's workers, which hand results back
// to the RPC. One read and one write at most are in flight per stream, so a slow reader only
// slows its own stream (its memory stays reserved until it is done). absl::Status is mapped to
// gRPC codes once, here (api::ToGrpcStatus). Client cancellation, deadlines and disconnects
// (OnCancel) cancel the job: removed from the queue, or stopped between chunks on the worker.
// Thread-safe; the service must outlive the grpc::Server it is registered with.
#ifndef NVFP4_SERVER_SERVICE_QUANTIZER_SERVICE_H_
#define NVFP4_SERVER_SERVICE_QUANTIZER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nvfp4/v1/quantizer.grpc.pb.h"
#include "proto/convert.h"
#include "server/checkpoint/path_policy.h"
#include "server/engine/buffer_pool.h"
#include "server/engine/job_registry.h"
#include "server/engine/scheduler.h"
#include "server/metrics/server_metrics.h"

namespace nvfp4::server {

// Which finished calls nvfp4d logs (one line each on stderr).
enum class JobLog {
  kNone,
  kFailed,  // admitted jobs that end neither OK nor CANCELLED (the default)
  kAll,     // every call, refusals before admission included
};

struct ServiceOptions {
  JobLog job_log = JobLog::kFailed;
  int64_t max_chunk_bytes = int64_t{4} << 20;
  int64_t max_message_bytes = int64_t{64} << 20;
  // Non-empty: every Quantizer call needs metadata "authorization: Bearer <token>".
  std::string auth_token;
  // A tensor upload that makes no progress this long fails with DEADLINE_EXCEEDED: a started
  // streamed job holds a worker while it waits, any admitted job its memory reservation
  // (checked by nvfp4d's housekeeping, every 2 s and also while draining, before the job
  // starts).
  absl::Duration upload_idle_timeout = absl::Seconds(120);
  // QuantizeCheckpoint may only touch paths inside these roots; unconfined (no roots) disables
  // the RPC.
  checkpoint::PathPolicy paths;
  // Input and output buffers of finished tensor jobs are reused by later jobs, and freed after
  // idling this long (server/engine/buffer_pool.h).
  absl::Duration buffer_idle_release = absl::Seconds(10);
  // A streaming job (header gives amax or global_scale) keeps its received data chunks until
  // the engine has read them; beyond this many bytes held, the server stops reading and gRPC
  // flow control holds the client back.
  int64_t stream_window_bytes = int64_t{64} << 20;
};

// QuantizeTensor is a raw method (grpc::ByteBuffer messages, see the reactor); the others use
// the generated message types.
using QuantizerServiceBase = v1::Quantizer::WithRawCallbackMethod_QuantizeTensor<
    v1::Quantizer::WithCallbackMethod_QuantizeTensorUnary<v1::Quantizer::WithCallbackMethod_GetJob<
        v1::Quantizer::WithCallbackMethod_ListJobs<v1::Quantizer::WithCallbackMethod_CancelJob<
            v1::Quantizer::WithCallbackMethod_GetServerInfo<
                v1::Quantizer::WithCallbackMethod_QuantizeCheckpoint<v1::Quantizer::Service>>>>>>>;

class QuantizerService final : public QuantizerServiceBase {
 public:
  // metrics may be nullptr. None of the pointers are owned.
  QuantizerService(const ServiceOptions& options, Scheduler* scheduler, JobRegistry* jobs,
                   ServerMetrics* metrics);

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* QuantizeTensor(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* QuantizeTensorUnary(grpc::CallbackServerContext* context,
                                                const v1::QuantizeTensorUnaryRequest* request,
                                                v1::QuantizeTensorUnaryResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerWriteReactor<v1::QuantizeCheckpointResponse>* QuantizeCheckpoint(
      grpc::CallbackServerContext* context, const v1::QuantizeCheckpointRequest* request) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  // Internal, for the reactors.
  absl::Status Authenticate(const grpc::CallbackServerContext& context) const;
  // Authenticate, then the job called `job_id` (NotFound when unknown).
  absl::StatusOr<std::shared_ptr<Job>> FindJob(const grpc::CallbackServerContext& context,
                                               const std::string& job_id) const;
  // Counts a finished call in the metrics and logs it (ServiceOptions::job_log). job: the
  // admitted job, or nullptr for a call refused before admission (counted by code, but not a
  // job duration). seconds: since the call started. kind: "tensor" or "checkpoint".
  void RecordOutcome(const absl::Status& status, const Job* job, double seconds,
                     const std::string& kind = "tensor");
  const ServiceOptions& options() const { return options_; }
  Scheduler* scheduler() const { return scheduler_; }
  JobRegistry* jobs() const { return jobs_; }
  ServerMetrics* metrics() const { return metrics_; }
  JobBufferPool* buffer_pool() { return &buffer_pool_; }
  // What admission reserves for a tensor job: its buffers, where a streamed input (`streamed`:
  // the header gives g) counts only the received chunks held at once (the flow-control window
  // and what the engine reads at a time); plus, when some engine does not quantise in place
  // (QuantizerBackend::quantizes_in_place), a second copy of the outputs and of a streamed input.
  int64_t ReservedBytes(const api::TensorSpec& spec, bool streamed) const;

  // Received data chunks held by streaming calls (all of them), now and at most since start;
  // kept by the calls through StreamHeld and exported as nvfp4_stream_held_bytes.
  void StreamHeld(int64_t delta);
  int64_t stream_held_bytes() const { return stream_held_bytes_.load(); }
  int64_t stream_held_peak_bytes() const { return stream_held_peak_bytes_.load(); }

  // Tensor and checkpoint calls in progress: a member of their reactors counts one from the
  // reactor's construction to its deletion (after OnDone), so a draining server can wait for
  // them to end before it closes connections.
  class ActiveCall {
   public:
    explicit ActiveCall(QuantizerService* service) : service_(service) {
      service_->active_calls_.fetch_add(1, std::memory_order_relaxed);
    }
    ~ActiveCall() { service_->active_calls_.fetch_sub(1, std::memory_order_release); }
    ActiveCall(const ActiveCall&) = delete;
    ActiveCall& operator=(const ActiveCall&) = delete;

   private:
    QuantizerService* const service_;
  };
  int active_calls() const { return active_calls_.load(std::memory_order_acquire); }

  // An upload the service watches for stalls: the streaming QuantizeTensor call, in the upload
  // watch list (uploads_) from its construction to OnDone. Its job holds a memory reservation
  // and a queue slot from the header on, and a job that is not submitted yet has nothing else
  // watching it (ReadRows watches a started streamed job).
  class WatchedUpload {
   public:
    virtual ~WatchedUpload() = default;
    // Called with the watch list locked. When the call's job is admitted but not submitted and
    // was cancelled (CancelJob), or no message came for `idle`: fails the call with CANCELLED
    // or DEADLINE_EXCEEDED, keeps the call from finishing and returns true; the caller then
    // calls EndExpired without the list locked.
    virtual bool ExpireIfStalledOrCancelled(absl::Time now, absl::Duration idle) = 0;
    // Releases the job's buffers, then its reservation and queue slot, ends the pending read
    // (TryCancel) and lets the call finish.
    virtual void EndExpired() = 0;
  };
  void WatchUpload(WatchedUpload* upload);
  void UnwatchUpload(WatchedUpload* upload);
  // Fails the watched uploads idle for options().upload_idle_timeout before their job was
  // submitted (a header without amax waits for all the data first), so that a stalled client
  // does not hold its memory reservation until its connection dies, and those whose job was
  // cancelled meanwhile. Returns how many. Called periodically (nvfp4d's housekeeping, every
  // 2 s and also while it drains) and by CancelJob. Thread-safe.
  int ExpireStalledUploads();

 private:
  const ServiceOptions options_;
  Scheduler* const scheduler_;
  JobRegistry* const jobs_;
  ServerMetrics* const metrics_;
  JobBufferPool buffer_pool_;
  const bool engines_copy_outputs_;
  std::atomic<int64_t> stream_held_bytes_{0};
  std::atomic<int64_t> stream_held_peak_bytes_{0};
  std::atomic<int> active_calls_{0};
  absl::Mutex uploads_mu_;  // taken before a call's own lock, never while holding it
  absl::flat_hash_set<WatchedUpload*> uploads_ ABSL_GUARDED_BY(uploads_mu_);
};

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_SERVICE_QUANTIZER_SERVICE_H_
