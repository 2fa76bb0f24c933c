// RowSource: the rows of an input tensor that arrive while an engine quantises it (a network
// upload), read where they landed instead of from one contiguous buffer.
//
// A service that keeps the received messages as they are (no copy into a tensor-sized buffer)
// hands the engine their memory in pieces. Pieces follow the bytes of the row-major tensor in
// order and may split it anywhere, even inside an element.
//
// Lifetime: the pieces of rows [begin, end) stay readable until the engine has reported `end`
// rows done (QuantizerBackend::QuantizeInto's rows_done) or QuantizeInto has returned; the
// source may release memory of rows reported done. Thread-safety: ReadRows is called by several
// engine threads at once.
#ifndef NVFP4_KERNELS_ROW_SOURCE_H_
#define NVFP4_KERNELS_ROW_SOURCE_H_

#include <cstddef>
#include <cstdint>

#include "absl/functional/function_ref.h"

namespace nvfp4 {

class RowSource {
 public:
  using PieceFn = absl::FunctionRef<void(const uint8_t* data, size_t bytes)>;

  virtual ~RowSource() = default;

  // Blocks until rows [0, end) have arrived, then calls `piece` for the bytes of rows
  // [begin, end), in order (the sizes add up to (end - begin) * row bytes). `piece` may run
  // under the source's lock: it must only note the pointers. Returns false, without calling
  // `piece`, when the rows never will arrive (upload failed, job cancelled).
  virtual bool ReadRows(int64_t begin, int64_t end, PieceFn piece) = 0;
};

}  // namespace nvfp4

#endif  // NVFP4_KERNELS_ROW_SOURCE_H_
