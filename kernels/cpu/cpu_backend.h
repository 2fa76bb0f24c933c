// CpuBackend: the multithreaded, SIMD CPU implementation of QuantizerBackend.
//
// Quantize() runs two passes over the input: (1) max |x| and a NaN/Inf check (the first bad
// element is named in the InvalidArgument), (2) per row chunk: widen to fp32, zero-pad rows to
// a multiple of 16, run the ISA's row kernel. Chunks are fixed by the tensor shape (not by the
// thread count) and their metric sums are merged in chunk order, so bytes and metrics are the
// same for every thread count and ISA. options.cancelled is polled before every chunk (~64k
// elements). Thread-safe: concurrent Quantize calls share the pool (their parallel sections are
// serialised).
#ifndef NVFP4_KERNELS_CPU_CPU_BACKEND_H_
#define NVFP4_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/thread_pool.h"

namespace nvfp4::cpu {

struct CpuBackendOptions {
  int threads = 0;             // 0: all hardware threads
  CpuIsa isa = CpuIsa::kAuto;  // kAuto: the best this CPU supports
};

class CpuBackend final : public QuantizerBackend {
 public:
  // InvalidArgument if threads < 0 or the requested ISA is not supported by this CPU.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const CpuBackendOptions& options);

  std::string_view name() const override { return name_; }
  int threads() const { return pool_.parallelism(); }
  CpuIsa isa() const { return isa_; }

  absl::StatusOr<QuantizedTensor> Quantize(const TensorView& input,
                                           const ImportanceView& importance,
                                           const QuantizeOptions& options) override;
  // Streaming (streamed): chunks are quantised as their rows arrive (in chunk order, one per
  // pool thread), read in place from the source's pieces and checked for NaN/Inf first; the
  // first bad element of the tensor is reported (chunks after a bad one are skipped). rows_done
  // is told after every chunk that extends the finished prefix.
  absl::StatusOr<QuantizedSummary> QuantizeInto(const TensorView& input,
                                                const ImportanceView& importance,
                                                const QuantizeOptions& options,
                                                const QuantizedBuffers& out, RowSource* streamed,
                                                const RowsDoneFn* rows_done) override;
  bool quantizes_in_place() const override { return true; }

  // max |x| over the tensor; InvalidArgument naming the first NaN/Inf element.
  absl::StatusOr<float> ComputeAmax(const TensorView& input);

 private:
  CpuBackend(int threads, CpuIsa isa);
  // Out-of-memory mapping around QuantizeUnchecked (the request is validated).
  absl::StatusOr<QuantizedSummary> QuantizeChecked(const TensorView& input,
                                                   const ImportanceView& importance,
                                                   const QuantizeOptions& options,
                                                   const QuantizedBuffers& out, RowSource* streamed,
                                                   const RowsDoneFn* rows_done);
  // streamed: nullptr for a complete input (whole-tensor NaN/amax pass first).
  absl::StatusOr<QuantizedSummary> QuantizeUnchecked(
      const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
      const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done);

  ThreadPool pool_;
  CpuIsa isa_;
  std::string name_;
};

}  // namespace nvfp4::cpu

#endif  // NVFP4_KERNELS_CPU_CPU_BACKEND_H_
