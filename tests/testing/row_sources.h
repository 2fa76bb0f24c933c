// Test helpers for QuantizerBackend::QuantizeInto (header-only): a RowSource that serves a
// buffer in pieces of pseudo-random sizes, and QuantizeInto into poisoned caller buffers.
// Used by the CPU engine's tests and the GPU tests.
#ifndef NVFP4_TESTS_TESTING_ROW_SOURCES_H_
#define NVFP4_TESTS_TESTING_ROW_SOURCES_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/quantized_tensor.h"
#include "kernels/row_source.h"
#include "kernels/tensor.h"

namespace nvfp4::testing_rows {

// A RowSource over a buffer, cut into pieces of pseudo-random sizes (1 byte to a few rows, odd
// sizes included, so pieces split elements as received network messages can). Rows are served
// once `arrived` covers them; `never` makes every read fail. Records what the engine asked for.
class PiecewiseRowSource final : public RowSource {
 public:
  PiecewiseRowSource(const void* data, int64_t rows, size_t row_bytes, uint32_t seed)
      : data_(static_cast<const uint8_t*>(data)), row_bytes_(row_bytes) {
    arrived = rows;
    const size_t total = static_cast<size_t>(rows) * row_bytes;
    uint32_t state = seed * 2654435761u + 1;
    for (size_t at = 0; at < total;) {
      state = state * 1664525u + 1013904223u;
      at = std::min(total, at + 1 + (state >> 8) % (3 * row_bytes));
      cuts_.push_back(at);
    }
  }

  bool ReadRows(int64_t begin, int64_t end, PieceFn piece) override {
    int64_t seen = max_requested.load();
    while (end > seen && !max_requested.compare_exchange_weak(seen, end)) {
    }
    if (never) return false;
    while (arrived.load() < end) std::this_thread::yield();
    if (begin < released.load()) reads_of_released.fetch_add(1);
    size_t at = static_cast<size_t>(begin) * row_bytes_;
    const size_t stop = static_cast<size_t>(end) * row_bytes_;
    for (auto cut = std::upper_bound(cuts_.begin(), cuts_.end(), at); at < stop; ++cut) {
      const size_t next = std::min(*cut, stop);
      piece(data_ + at, next - at);
      pieces.fetch_add(1);
      at = next;
    }
    return true;
  }

  std::atomic<int64_t> arrived{0};
  bool never = false;
  std::atomic<int64_t> max_requested{0};
  std::atomic<int64_t> released{0};  // rows the engine reported done (set by the test)
  std::atomic<int64_t> reads_of_released{0};
  std::atomic<int64_t> pieces{0};

 private:
  const uint8_t* const data_;
  const size_t row_bytes_;
  std::vector<size_t> cuts_;  // piece ends, increasing
};

// QuantizeInto into buffers pre-filled with garbage (every output byte must be written),
// assembled as a QuantizedTensor.
inline absl::StatusOr<QuantizedTensor> QuantizeIntoFresh(
    QuantizerBackend& backend, const TensorView& input, const QuantizeOptions& options,
    RowSource* streamed, const QuantizerBackend::RowsDoneFn* rows_done) {
  QuantizedTensor out;
  out.rows = input.rows;
  out.cols = input.cols;
  out.padded_cols = PaddedCols(input.cols);
  ResizeOutputs(out, options.want_dequantized);
  std::fill(out.packed.begin(), out.packed.end(), 0xAB);
  std::fill(out.scales.begin(), out.scales.end(), 0xCD);
  std::fill(out.dequantized.begin(), out.dequantized.end(), -1234.5f);
  absl::StatusOr<QuantizedSummary> summary =
      backend.QuantizeInto(input, {}, options, BuffersOf(out), streamed, rows_done);
  if (!summary.ok()) return summary.status();
  out.amax = summary->amax;
  out.global_scale = summary->global_scale;
  out.metrics = summary->metrics;
  return out;
}

}  // namespace nvfp4::testing_rows

#endif  // NVFP4_TESTS_TESTING_ROW_SOURCES_H_
