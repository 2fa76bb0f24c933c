#include "client/remote_backend.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace nvfp4::client {

bool IsRetryable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsResourceExhausted(status) ||
         absl::IsAborted(status);
}

RemoteBackend::RemoteBackend(QuantizerClient* client, RetryPolicy retry)
    : client_(client), retry_(retry), id_prefix_(std::random_device{}()) {}

absl::StatusOr<QuantizedTensor> RemoteBackend::Quantize(const TensorView& input,
                                                        const ImportanceView& importance,
                                                        const QuantizeOptions& options) {
  const std::string request_id =
      absl::StrFormat("%08x-%d", static_cast<uint32_t>(id_prefix_), next_request_.fetch_add(1));
  absl::Duration backoff = retry_.first_backoff;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<QuantizedTensor> result =
        client_->QuantizeTensor(input, importance, options, options.label, {}, nullptr, request_id);
    if (result.ok() || !IsRetryable(result.status()) || attempt >= retry_.max_attempts ||
        client_->cancelled() || (options.cancelled != nullptr && options.cancelled->load())) {
      return result;
    }
    retries_.fetch_add(1);
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, retry_.max_backoff);
  }
}

}  // namespace nvfp4::client
