// RemoteBackend: a QuantizerBackend that quantises through nvfp4d's QuantizeTensor stream, so
// the checkpoint pipeline can run locally (reading and writing local files) while an nvfp4d
// does the math. Same bytes as the embedded engines: the server runs the same numerics.
// Ownership: borrows the client, which must outlive it.
// Thread-safety: as QuantizerClient: concurrent Quantize calls are fine (one stream each).
// Errors: the server's status, mapped back from gRPC (see QuantizerClient).
#ifndef NVFP4_CLIENT_REMOTE_BACKEND_H_
#define NVFP4_CLIENT_REMOTE_BACKEND_H_

#include <string_view>

#include "client/quantizer_client.h"
#include "kernels/backend.h"

namespace nvfp4::client {

class RemoteBackend final : public QuantizerBackend {
 public:
  explicit RemoteBackend(QuantizerClient* client) : client_(client) {}

  std::string_view name() const override { return "nvfp4d"; }
  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                           const ImportanceView& importance,
                                           const QuantizeOptions& options) override {
    return client_->QuantizeTensor(input, importance, options);
  }

 private:
  QuantizerClient* client_;
};

}  // namespace nvfp4::client

#endif  // NVFP4_CLIENT_REMOTE_BACKEND_H_
