#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cpu_count.h"
#include "common/large_buffer.h"
#include "common/status_macros.h"
#include "kernels/cpu/row_kernel.h"
#include "kernels/numerics/block_math.h"
#include "kernels/numerics/global_scale.h"
#include "kernels/numerics/scale_table.h"
#include "kernels/validate.h"

namespace nvfp4::cpu {
namespace {

struct IsaKernels {
  RowKernelFn rows;
  ConvertFn convert;
  ScanFn scan;
  ScanHalfFn scan_half;

  // max |x| and non-finite count of n values of `dtype` (16-bit types scanned on their bits).
  ScanResult Scan(DType dtype, const void* src, int64_t n) const {
    return dtype == DType::kF32 ? scan(static_cast<const float*>(src), n)
                                : scan_half(dtype, static_cast<const uint16_t*>(src), n);
  }
};

IsaKernels KernelsFor(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return {QuantizeRowsAvx512, ConvertToF32Avx512, ScanF32Avx512, ScanHalfAvx512};
    case CpuIsa::kAvx2:
      return {QuantizeRowsAvx2, ConvertToF32Avx2, ScanF32Avx2, ScanHalfAvx2};
    default:
      return {QuantizeRowsScalar, ConvertToF32Scalar, ScanF32Scalar, ScanHalfScalar};
  }
}

// Work unit size: about 64k elements (256 KiB of fp32), so a chunk's buffers stay in L2.
constexpr int64_t kChunkElements = int64_t{1} << 16;

absl::Status OutOfMemory(const TensorView& input) {
  return absl::ResourceExhaustedError(
      absl::StrCat("out of memory quantising a [", input.rows, ", ", input.cols, "] tensor"));
}

// Scratch buffers reused by each pool thread across chunks and calls.
std::vector<float>& ThreadScratch(int which) {
  thread_local std::vector<float> scratch[3];
  return scratch[which];
}

// A non-finite input element: its index in the tensor (-1: none) and value.
struct BadElement {
  int64_t index = -1;
  float value = 0.0f;
};

// The first non-finite of the n values of `dtype` at src (a scan found one); first_index is
// the tensor index of src's first value.
BadElement FirstNonFinite(DType dtype, const void* src, int64_t n, int64_t first_index) {
  std::vector<float>& values = ThreadScratch(2);
  values.resize(static_cast<size_t>(n));
  ConvertToF32Scalar(dtype, src, n, values.data());
  const auto bad =
      std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
  if (bad == values.end()) return {};
  return {first_index + (bad - values.begin()), *bad};
}

struct PieceView {
  const uint8_t* data;
  size_t size;
};

std::vector<PieceView>& ThreadPieces() {
  thread_local std::vector<PieceView> pieces;
  return pieces;
}

std::vector<uint8_t>& ThreadBytes() {
  thread_local std::vector<uint8_t> bytes;
  return bytes;
}

// Reads consecutive byte runs from a RowSource's pieces: in place when a run lies inside one
// piece, gathered into `scratch` when it crosses pieces. Runs never exceed what remains.
class PieceReader {
 public:
  explicit PieceReader(const std::vector<PieceView>& pieces) : pieces_(pieces) { SkipEmpty(); }

  // Bytes readable in place from here.
  size_t contiguous() const { return index_ < pieces_.size() ? pieces_[index_].size - offset_ : 0; }

  // The next n <= contiguous() bytes, in place.
  const uint8_t* Take(size_t n) {
    const uint8_t* data = pieces_[index_].data + offset_;
    offset_ += n;
    SkipEmpty();
    return data;
  }

  // The next n bytes, copied into scratch (resized as needed).
  const uint8_t* Gather(size_t n, std::vector<uint8_t>& scratch) {
    scratch.resize(n);
    for (size_t done = 0; done < n;) {
      const size_t part = std::min(n - done, contiguous());
      std::memcpy(scratch.data() + done, Take(part), part);
      done += part;
    }
    return scratch.data();
  }

 private:
  void SkipEmpty() {
    while (index_ < pieces_.size() && offset_ == pieces_[index_].size) {
      ++index_;
      offset_ = 0;
    }
  }

  const std::vector<PieceView>& pieces_;
  size_t index_ = 0;
  size_t offset_ = 0;
};

}  // namespace

CpuBackend::CpuBackend(int threads, CpuIsa isa)
    : pool_(threads), isa_(isa), name_(absl::StrCat("cpu-", std::string(CpuIsaName(isa)))) {}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const CpuBackendOptions& options) {
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 0, got ", options.threads));
  }
  CpuIsa isa = options.isa == CpuIsa::kAuto ? BestCpuIsa() : options.isa;
  if (!CpuSupports(isa)) {
    return absl::InvalidArgumentError(
        absl::StrCat("this CPU does not support the ", std::string(CpuIsaName(isa)), " kernels"));
  }
  int threads = options.threads;
  if (threads == 0) threads = UsableCpuCount();  // the pod's or cpuset's share, not the node's
  return std::unique_ptr<CpuBackend>(new CpuBackend(threads, isa));
}

absl::StatusOr<float> CpuBackend::ComputeAmax(const TensorView& input) {
  const IsaKernels kernels = KernelsFor(isa_);
  const int64_t n = input.elements();
  const int64_t chunks = (n + kChunkElements - 1) / kChunkElements;
  std::vector<ScanResult> results(static_cast<size_t>(chunks));
  const size_t element_size = DTypeSize(input.dtype);
  pool_.ParallelFor(chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * kChunkElements;
    const int64_t count = std::min(kChunkElements, n - begin);
    const void* src = static_cast<const uint8_t*>(input.data) + begin * element_size;
    results[chunk] = kernels.Scan(input.dtype, src, count);
  });
  float amax = 0.0f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    if (results[chunk].non_finite > 0) {
      const int64_t begin = chunk * kChunkElements;
      const int64_t count = std::min(kChunkElements, n - begin);
      const BadElement bad = FirstNonFinite(
          input.dtype, static_cast<const uint8_t*>(input.data) + begin * element_size, count,
          begin);
      return NonFiniteInputError(bad.index, input.cols, bad.value);
    }
    amax = std::max(amax, results[chunk].max_abs);
  }
  return amax;
}

absl::StatusOr<QuantizedTensor> CpuBackend::Quantize(const TensorView& input,
                                                     const ImportanceView& importance,
                                                     const QuantizeOptions& options) {
  RETURN_IF_ERROR(ValidateQuantizeRequest(input, importance, options));
  return QuantizeIntoNewTensor(input, importance, options);
}

absl::StatusOr<QuantizedSummary> CpuBackend::QuantizeInto(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  RETURN_IF_ERROR(CheckStreamable(options, streamed));
  RETURN_IF_ERROR(ValidateQuantizeRequest(input, importance, options, streamed != nullptr));
  return QuantizeChecked(input, importance, options, out, streamed, rows_done);
}

absl::StatusOr<QuantizedSummary> CpuBackend::QuantizeChecked(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  try {
    return QuantizeUnchecked(input, importance, options, out, streamed, rows_done);
  } catch (const std::bad_alloc&) {
    return OutOfMemory(input);
  }
}

absl::StatusOr<QuantizedSummary> CpuBackend::QuantizeUnchecked(
    const TensorView& input, const ImportanceView& importance, const QuantizeOptions& options,
    const QuantizedBuffers& out, RowSource* streamed, const RowsDoneFn* rows_done) {
  const auto start = std::chrono::steady_clock::now();
  const IsaKernels kernels = KernelsFor(isa_);
  float tensor_amax = 0.0f;
  if (streamed == nullptr) {
    ASSIGN_OR_RETURN(tensor_amax, ComputeAmax(input));
  }

  QuantizedSummary summary;
  summary.amax = options.amax.value_or(tensor_amax);
  // The g a caller can announce before the run (KnownGlobalScale), else the tensor's own.
  summary.global_scale =
      KnownGlobalScale(options).value_or(GlobalScaleFromAmax(tensor_amax, options.scale_max));
  auto table = std::make_unique<ScaleTable>();
  BuildScaleTable(summary.global_scale, table.get());
  const ScaleSearchParams params =
      MakeScaleSearchParams(options.method, options.objective, summary.global_scale);

  RETURN_IF_ERROR(CheckImportanceValues(importance));
  std::vector<float> column_weights;
  const int64_t pc = PaddedCols(input.cols);
  if (importance.layout == ImportanceLayout::kPerColumn) {
    column_weights.assign(static_cast<size_t>(pc), 0.0f);
    std::copy(importance.data, importance.data + input.cols, column_weights.begin());
  }

  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkElements / pc);
  const int64_t chunks = (input.rows + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<ErrorAccumulator> sums(static_cast<size_t>(chunks));
  const size_t element_size = DTypeSize(input.dtype);
  const bool direct = input.dtype == DType::kF32 && pc == input.cols;
  std::atomic<bool> stopped{false};
  // Streaming: the first non-finite element of each chunk, and the first chunk that
  // has one (later chunks are skipped: the call fails anyway).
  std::vector<BadElement> first_bad(streamed ? static_cast<size_t>(chunks) : 0);
  std::atomic<int64_t> first_bad_chunk{chunks};
  std::vector<float> chunk_amax(streamed ? static_cast<size_t>(chunks) : 0, 0.0f);
  // rows_done: chunks finish out of order; report the finished prefix when it grows.
  std::vector<uint8_t> chunk_done(rows_done ? static_cast<size_t>(chunks) : 0, 0);
  std::mutex prefix_mutex;
  int64_t done_prefix = 0;  // chunks [0, done_prefix) are finished
  auto report_done = [&](int64_t chunk) {
    int64_t rows = -1;
    {
      std::lock_guard<std::mutex> lock(prefix_mutex);
      chunk_done[chunk] = 1;
      if (chunk != done_prefix) return;
      while (done_prefix < chunks && chunk_done[done_prefix]) ++done_prefix;
      rows = std::min(done_prefix * rows_per_chunk, input.rows);
    }
    (*rows_done)(rows);
  };
  // Streaming: checks rows [r0, r0 + rows) of `streamed` for NaN/Inf (the whole-tensor pass
  // cannot run before the data is there) and converts them to f32 rows of `x` (stride pc).
  // Rows are read where they lie in the source's pieces; only a row split between two pieces
  // is gathered first. False when the chunk has a non-finite element (recorded).
  auto read_streamed = [&](int64_t chunk, int64_t r0, int64_t rows, float* x) {
    std::vector<PieceView>& pieces = ThreadPieces();
    pieces.clear();
    if (!streamed->ReadRows(r0, r0 + rows, [&pieces](const uint8_t* data, size_t n) {
          pieces.push_back({data, n});
        })) {
      stopped.store(true, std::memory_order_relaxed);
      return false;
    }
    const size_t row_bytes = static_cast<size_t>(input.cols) * element_size;
    PieceReader reader(pieces);
    float amax = 0.0f;
    for (int64_t r = 0; r < rows;) {
      const int64_t whole_rows = std::min<int64_t>(rows - r, reader.contiguous() / row_bytes);
      const int64_t n = std::max<int64_t>(whole_rows, 1);
      const uint8_t* src = whole_rows > 0 ? reader.Take(whole_rows * row_bytes)
                                          : reader.Gather(row_bytes, ThreadBytes());
      const ScanResult scanned = kernels.Scan(input.dtype, src, n * input.cols);
      if (scanned.non_finite > 0) {
        first_bad[chunk] = FirstNonFinite(input.dtype, src, n * input.cols, (r0 + r) * input.cols);
        int64_t seen = first_bad_chunk.load();
        while (chunk < seen && !first_bad_chunk.compare_exchange_weak(seen, chunk)) {
        }
        return false;
      }
      amax = std::max(amax, scanned.max_abs);
      for (int64_t k = 0; k < n; ++k) {
        kernels.convert(input.dtype, src + k * row_bytes, input.cols, x + (r + k) * pc);
      }
      r += n;
    }
    chunk_amax[chunk] = amax;
    return true;
  };
  pool_.ParallelFor(chunks, [&](int64_t chunk) {
    if (options.cancelled && options.cancelled->load(std::memory_order_relaxed)) {
      stopped.store(true, std::memory_order_relaxed);
      return;
    }
    if (stopped.load(std::memory_order_relaxed)) return;
    if (chunk > first_bad_chunk.load(std::memory_order_relaxed)) return;
    const int64_t r0 = chunk * rows_per_chunk;
    const int64_t rows = std::min(rows_per_chunk, input.rows - r0);
    RowKernelArgs args;
    if (streamed) {
      std::vector<float>& x = ThreadScratch(0);
      x.assign(static_cast<size_t>(rows * pc), 0.0f);
      if (!read_streamed(chunk, r0, rows, x.data())) return;
      args.x = x.data();
    } else if (direct) {
      args.x = static_cast<const float*>(input.data) + r0 * pc;
    } else {
      std::vector<float>& x = ThreadScratch(0);
      x.assign(static_cast<size_t>(rows * pc), 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        const auto* src =
            static_cast<const uint8_t*>(input.data) + (r0 + r) * input.cols * element_size;
        kernels.convert(input.dtype, src, input.cols, x.data() + r * pc);
      }
      args.x = x.data();
    }
    if (importance.layout == ImportanceLayout::kPerColumn) {
      args.weights = column_weights.data();
    } else if (importance.layout == ImportanceLayout::kPerElement) {
      args.weights_per_element = true;
      if (pc == input.cols) {
        args.weights = importance.data + r0 * pc;
      } else {
        std::vector<float>& w = ThreadScratch(1);
        w.assign(static_cast<size_t>(rows * pc), 0.0f);
        for (int64_t r = 0; r < rows; ++r) {
          const float* src = importance.data + (r0 + r) * input.cols;
          std::copy(src, src + input.cols, w.begin() + r * pc);
        }
        args.weights = w.data();
      }
    }
    args.rows = rows;
    args.cols = input.cols;
    args.padded_cols = pc;
    args.table = table.get();
    args.params = params;
    args.packed = out.packed + r0 * (pc / 2);
    args.scales = out.scales + r0 * (pc / kBlockSize);
    args.dequantized = options.want_dequantized ? out.dequantized + r0 * input.cols : nullptr;
    args.sums = &sums[chunk];
    kernels.rows(args);
    if (rows_done) report_done(chunk);
  });

  if (stopped.load()) return absl::CancelledError("quantisation cancelled");
  if (streamed && !options.amax.has_value()) {
    // Report the tensor's amax like the one-shot call does.
    for (float a : chunk_amax) summary.amax = std::max(summary.amax, a);
  }
  for (const BadElement& bad : first_bad) {
    if (bad.index >= 0) {
      return NonFiniteInputError(bad.index, input.cols, bad.value);
    }
  }
  ErrorAccumulator total;
  for (const ErrorAccumulator& s : sums) total.Merge(s);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.metrics = FinalizeMetrics(total, input.elements(), importance.present(),
                                    options.objective == Objective::kWmse, seconds);
  return summary;
}

}  // namespace nvfp4::cpu
