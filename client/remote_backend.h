// RemoteBackend: a QuantizerBackend that quantises through nvfp4d's QuantizeTensor stream, so
// the checkpoint pipeline can run locally (reading and writing local files) while one or
// several nvfp4d replicas do the math. Same bytes as the embedded engines: every replica runs
// the same numerics, so where a tensor runs does not change the output.
//
// Scale-out and failover: the client's channel balances calls round-robin over the replicas
// (ClientOptions::target). A call that fails with UNAVAILABLE (replica killed, draining or
// unreachable), RESOURCE_EXHAUSTED (its queue is full) or ABORTED is retried with exponential
// backoff, up to max_attempts, carrying the same request id (TensorHeader.request_id); round
// robin sends the retry to the next ready replica. Nothing is retried after CancelInFlight.
// Ownership: borrows the client, which must outlive it.
// Thread-safety: concurrent Quantize calls are fine (one stream each).
// Errors: the last attempt's status, mapped back from gRPC (see QuantizerClient).
#ifndef NVFP4_CLIENT_REMOTE_BACKEND_H_
#define NVFP4_CLIENT_REMOTE_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <string_view>

#include "absl/time/time.h"
#include "client/quantizer_client.h"
#include "kernels/backend.h"

namespace nvfp4::client {

struct RetryPolicy {
  int max_attempts = 6;
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
};

class RemoteBackend final : public QuantizerBackend {
 public:
  explicit RemoteBackend(QuantizerClient* client, RetryPolicy retry = {});

  std::string_view name() const override { return "nvfp4d"; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                           const ImportanceView& importance,
                                           const QuantizeOptions& options) override;
  // Attempts that failed and were retried, over the backend's life.
  int64_t retries() const { return retries_.load(); }

 private:
  QuantizerClient* client_;
  const RetryPolicy retry_;
  const uint64_t id_prefix_;
  std::atomic<uint64_t> next_request_{0};
  std::atomic<int64_t> retries_{0};
};

// True for the codes a retry on another replica may cure.
bool IsRetryable(const absl::Status& status);

}  // namespace nvfp4::client

#endif  // NVFP4_CLIENT_REMOTE_BACKEND_H_
