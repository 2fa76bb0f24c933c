// The part of the simulated CUDA runtime (simulated_cuda_runtime.cc) that the simulated kernels
// (simulated_kernels.cc) use: enqueueing work on a stream and checking what a kernel may touch.
// Test-only.
#ifndef NVFP4_TESTS_GPU_SIMULATED_SIMULATED_RUNTIME_H_
#define NVFP4_TESTS_GPU_SIMULATED_SIMULATED_RUNTIME_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

namespace nvfp4::simulated {

// Runs `work` on the stream's worker thread after everything enqueued on the stream before it,
// as a kernel launch would run. Thread-safe.
void Enqueue(cudaStream_t stream, std::function<void()> work);

// Whether a kernel may touch all of [ptr, ptr + bytes): it lies inside one allocation of device
// memory or of pinned host memory (mapped into the device's address space under unified
// addressing). True when bytes == 0. Thread-safe.
bool DeviceAccessible(const void* ptr, size_t bytes);

// Fault injection: whether the comma-separated list in NVFP4_SIM_FAIL names `what`:
//   "occupancy"    the occupancy query that loads the kernels' module fails (out of memory);
//   "kernel_fault" the quantize kernel faults (illegal address), losing the context.
bool Injected(const char* what);

// cudaErrorMemoryAllocation when Injected(what), else cudaSuccess. Also makes the failure the
// runtime's last error, as a failing call would.
cudaError_t FailureFor(const char* what);

// A kernel fault on the current device: its context is lost (later calls that use it return
// `error`) until cudaDeviceReset. Returns `error`.
cudaError_t LoseContext(cudaError_t error);

// The current device's lost-context error, or cudaSuccess (a launch checks it first).
cudaError_t LostContextError();

}  // namespace nvfp4::simulated

#endif  // NVFP4_TESTS_GPU_SIMULATED_SIMULATED_RUNTIME_H_
