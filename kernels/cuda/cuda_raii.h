// Owning wrappers for CUDA runtime resources, and the mapping of cudaError_t to absl::Status.
//
// DeviceBuffer (cudaMalloc), PinnedBuffer (cudaHostAlloc), Stream (non-blocking
// cudaStreamCreateWithFlags) and Event (cudaEventCreateWithFlags): each owns one resource, is
// movable and not copyable, and releases it in its destructor (errors there are ignored: the
// runtime may already be shutting down). Create() allocates on the calling thread's current
// device and returns the error as a Status instead. Destroying a buffer that queued work still
// uses is the caller's bug: synchronise first. Not thread-safe per object.
//
// CudaStatus(error, what): OK for cudaSuccess; otherwise a Status whose message carries `what`,
// cudaGetErrorName and cudaGetErrorString, with code ResourceExhausted for
// cudaErrorMemoryAllocation, Unavailable when there is no usable device or driver, Internal for
// everything else. It also clears the runtime's (non-sticky) last error, so a handled failure
// is not reported again by a later cudaGetLastError. An error that loses the CUDA context (a
// kernel fault, an uncorrectable ECC error: every later call on the device fails until the
// process exits) is Unavailable, says so in the message and carries kContextLostPayload
// (IsContextLost).
// Internal to kernels/cuda and its tests.
#ifndef NVFP4_KERNELS_CUDA_CUDA_RAII_H_
#define NVFP4_KERNELS_CUDA_CUDA_RAII_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace nvfp4::cuda {

// The errors after which the context is unusable ("sticky": the CUDA runtime documents them as
// leaving the process in an inconsistent state that only ending the process clears), and the
// uncorrectable hardware errors (ECC, NVLink), after which the device's results are not trusted.
inline bool IsContextLostError(cudaError_t error) {
  switch (error) {
    case cudaErrorECCUncorrectable:
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorNvlinkUncorrectable:  // hardware, like ECC: not documented sticky, not trusted
    case cudaErrorMpsClientTerminated:
#if CUDART_VERSION >= 12080  // added by the 12.x toolkits (error containment, tensor memory)
    case cudaErrorContained:
    case cudaErrorExternalDevice:
    case cudaErrorTensorMemoryLeak:
#endif
      return true;
    default:
      return false;
  }
}

inline constexpr absl::string_view kContextLostPayload = "type.nvfp4/cuda.context_lost";

inline bool IsContextLost(const absl::Status& status) {
  return status.GetPayload(kContextLostPayload).has_value();
}

inline absl::Status CudaStatus(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear the non-sticky last error this failure recorded
  std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(error), ": ", cudaGetErrorString(error));
  if (IsContextLostError(error)) {
    // Unavailable: the request itself was fine, another engine or replica can take it.
    absl::Status status = absl::UnavailableError(
        absl::StrCat(message, " (the CUDA context is lost: restart the process)"));
    status.SetPayload(kContextLostPayload, absl::Cord(cudaGetErrorName(error)));
    return status;
  }
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(std::move(message));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorInvalidDevice:
      return absl::UnavailableError(std::move(message));
    default:
      return absl::InternalError(std::move(message));
  }
}

// RETURN_IF_ERROR for a cudaError_t expression; `what` names the operation.
#define NVFP4_CUDA_RETURN_IF_ERROR(expr, what) \
  RETURN_IF_ERROR(::nvfp4::cuda::CudaStatus((expr), (what)))

namespace internal {

struct DeviceMemoryPolicy {
  static cudaError_t Allocate(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
  static void Free(void* ptr) { cudaFree(ptr); }
  static constexpr const char* kWhat = "cudaMalloc";
};

struct PinnedMemoryPolicy {
  static cudaError_t Allocate(void** ptr, size_t bytes) {
    return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault);
  }
  static void Free(void* ptr) { cudaFreeHost(ptr); }
  static constexpr const char* kWhat = "cudaHostAlloc";
};

// Owning pointer + size for one allocation made through Policy.
template <typename Policy>
class CudaMemory {
 public:
  CudaMemory() = default;
  ~CudaMemory() { Reset(); }
  CudaMemory(CudaMemory&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  CudaMemory& operator=(CudaMemory&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;

  // bytes == 0 gives an empty buffer (null pointer).
  static absl::StatusOr<CudaMemory> Create(size_t bytes) {
    CudaMemory memory;
    if (bytes == 0) return memory;
    void* ptr = nullptr;
    RETURN_IF_ERROR(CudaStatus(Policy::Allocate(&ptr, bytes),
                               absl::StrCat(Policy::kWhat, " of ", bytes, " bytes")));
    memory.ptr_ = ptr;
    memory.bytes_ = bytes;
    return memory;
  }

  // Makes the buffer at least `bytes` large; the contents are not kept when it grows.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Reset();  // free first: lower peak usage
    ASSIGN_OR_RETURN(*this, Create(bytes));
    return absl::OkStatus();
  }

  void Reset() {
    if (ptr_ != nullptr) Policy::Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace internal

using DeviceBuffer = internal::CudaMemory<internal::DeviceMemoryPolicy>;
using PinnedBuffer = internal::CudaMemory<internal::PinnedMemoryPolicy>;

class Stream {
 public:
  Stream() = default;
  ~Stream() { Reset(); }
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept {
    if (this != &other) {
      Reset();
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // A non-blocking stream: it does not synchronise with the legacy default stream.
  static absl::StatusOr<Stream> Create() {
    Stream stream;
    NVFP4_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream.stream_, cudaStreamNonBlocking),
                               "cudaStreamCreateWithFlags");
    return stream;
  }

  void Reset() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  Event() = default;
  ~Event() { Reset(); }
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    if (this != &other) {
      Reset();
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // timing == false adds cudaEventDisableTiming (cheaper record/wait).
  static absl::StatusOr<Event> Create(bool timing) {
    Event event;
    NVFP4_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&event.event_, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreateWithFlags");
    return event;
  }

  void Reset() {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = nullptr;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace nvfp4::cuda

#endif  // NVFP4_KERNELS_CUDA_CUDA_RAII_H_
