// A stand-in for the CUDA runtime library (libcudart), for running the CUDA backend's host code
// (kernels/cuda/cuda_backend.cc), its GPU tests and its benchmark on a machine without a GPU.
// It defines, with the runtime's own declarations (cuda_runtime.h), the functions those
// programs call, for one simulated device:
//   - device memory is host heap memory, tracked by range, so cudaPointerGetAttributes tells
//     device, pinned host and ordinary host memory apart as the real runtime does; a copy or
//     memset that runs past the end of an allocation fails with cudaErrorIllegalAddress;
//   - every stream (created, legacy default, per-thread default) is a worker thread that runs
//     its operations (copies, memsets, host functions, the kernels of simulated_kernels.cc) in
//     order, asynchronously to the caller and to other streams, each after a random pause of
//     up to ~50 us, so a missing event, wait or synchronisation shows as wrong results, as on a
//     GPU, and more often. Events, cudaStreamWaitEvent and the synchronising calls have the
//     runtime's documented semantics (cudaMemcpy waits; cudaMemset does not; an async copy
//     from pageable memory reads its source before returning; into pageable memory it waits;
//     cudaFree and cudaFreeHost synchronise the device). The legacy stream's implicit
//     synchronisation with blocking streams is not modelled (the backend's streams are
//     non-blocking);
//   - the device has NVFP4_SIM_DEVICE_MEMORY_MIB MiB (default 2048): a cudaMalloc past it fails
//     with cudaErrorMemoryAllocation, and cudaMemGetInfo reports what is left;
//   - NVFP4_SIM_DEVICES=0 simulates a machine with no device (default 1; at most 8);
//   - a kernel fault (simulated::LoseContext) loses the current device's context: from then on
//     the calls that use the context return that error, as on a GPU, until cudaDeviceReset
//     (frees and destroys still release, so tests end without leaks);
//   - NVFP4_SIM_FAIL injects faults (simulated_runtime.h).
// Test-only: nothing outside tests/gpu links it. Thread-safe.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/gpu/simulated/simulated_runtime.h"

namespace {

enum class Kind { kDevice, kPinnedHost };

struct Allocation {
  size_t size;
  Kind kind;
};

size_t EnvSize(const char* name, size_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  return static_cast<size_t>(std::strtoull(value, nullptr, 10));
}

constexpr int kMaxDevices = 8;  // NVFP4_SIM_DEVICES is capped here

struct SimulatedDevice {
  std::mutex mu;
  std::map<uintptr_t, Allocation> allocations;  // by start address
  size_t device_bytes_used = 0;
  const size_t device_bytes_total = EnvSize("NVFP4_SIM_DEVICE_MEMORY_MIB", 2048) << 20;
  const int device_count =
      static_cast<int>(std::min<size_t>(EnvSize("NVFP4_SIM_DEVICES", 1), kMaxDevices));
};

SimulatedDevice& Device() {
  static SimulatedDevice* device = new SimulatedDevice;  // never destroyed: used until exit
  return *device;
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

// Per device: the error that lost its context, or cudaSuccess.
std::atomic<cudaError_t> lost_context[kMaxDevices];

cudaError_t Fail(cudaError_t error) {
  last_error = error;
  return error;
}

// The current device's lost-context error (recorded as the last error), or cudaSuccess.
cudaError_t Lost() {
  const cudaError_t lost = lost_context[current_device].load();
  return lost == cudaSuccess ? cudaSuccess : Fail(lost);
}

#define NVFP4_SIM_RETURN_IF_LOST()                                         \
  do {                                                                     \
    if (const cudaError_t lost = Lost(); lost != cudaSuccess) return lost; \
  } while (false)

// Where ptr lies in the runtime's allocations: its kind and how many bytes of the allocation
// start at ptr. Empty for memory the runtime did not allocate (pageable host memory).
struct Location {
  Kind kind;
  size_t bytes_to_end;
};

std::optional<Location> Locate(const void* ptr) {
  SimulatedDevice& d = Device();
  std::lock_guard<std::mutex> lock(d.mu);
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  auto it = d.allocations.upper_bound(p);
  if (it == d.allocations.begin()) return std::nullopt;
  --it;
  if (p >= it->first + it->second.size) return std::nullopt;
  return Location{it->second.kind, it->first + it->second.size - p};
}

cudaError_t Allocate(void** ptr, size_t size, Kind kind) {
  if (ptr == nullptr) return Fail(cudaErrorInvalidValue);
  SimulatedDevice& d = Device();
  if (d.device_count == 0) return Fail(cudaErrorNoDevice);
  std::lock_guard<std::mutex> lock(d.mu);
  if (kind == Kind::kDevice && size > d.device_bytes_total - d.device_bytes_used) {
    return Fail(cudaErrorMemoryAllocation);
  }
  // 256-byte aligned like the real allocators; at least one byte so every pointer is unique.
  void* p = ::operator new (size == 0 ? 1 : size, std::align_val_t{256}, std::nothrow);
  if (p == nullptr) return Fail(cudaErrorMemoryAllocation);
  d.allocations[reinterpret_cast<uintptr_t>(p)] = Allocation{size == 0 ? 1 : size, kind};
  if (kind == Kind::kDevice) d.device_bytes_used += size == 0 ? 1 : size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t Release(void* ptr, Kind kind) {
  if (ptr == nullptr) return cudaSuccess;
  SimulatedDevice& d = Device();
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == d.allocations.end() || it->second.kind != kind) return Fail(cudaErrorInvalidValue);
  if (kind == Kind::kDevice) d.device_bytes_used -= it->second.size;
  d.allocations.erase(it);
  ::operator delete (ptr, std::align_val_t{256});
  return cudaSuccess;
}

// A stream: one worker thread running the operations in order. The worker holds a reference
// to its stream until it has run everything enqueued before Stop(), so that destroying a stream
// returns at once, as cudaStreamDestroy does, while its work finishes.
class SimulatedStream : public std::enable_shared_from_this<SimulatedStream> {
 public:
  explicit SimulatedStream(uint32_t seed) : random_(seed) {}

  void Start() {
    std::thread([self = shared_from_this()] { self->Run(); }).detach();
  }

  // No more work will come; the worker ends after the queue is empty.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  void Enqueue(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
      ++enqueued_;
    }
    cv_.notify_all();
  }

  // Waits for everything enqueued before the call.
  void Synchronize() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = enqueued_;
    cv_.wait(lock, [&] { return done_ >= target; });
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left
      std::function<void()> work = std::move(queue_.front());
      queue_.pop_front();
      const int pause_us = static_cast<int>(random_() % 64);
      lock.unlock();
      if (pause_us < 50) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
      work();
      work = nullptr;  // its captures (events, buffers) are released before the stream counts it
      lock.lock();
      ++done_;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t enqueued_ = 0;
  uint64_t done_ = 0;
  bool stopping_ = false;
  std::minstd_rand random_;
};

// Every live stream, for cudaDeviceSynchronize, which holds a reference to each while it waits
// (another thread may destroy one meanwhile; the last reference's destructor finishes it).
struct StreamRegistry {
  std::mutex mu;
  std::map<SimulatedStream*, std::shared_ptr<SimulatedStream>> streams;
  uint32_t next_seed = 1;
};

StreamRegistry& Streams() {
  static StreamRegistry* registry = new StreamRegistry;  // never destroyed: used until exit
  return *registry;
}

SimulatedStream* NewStream() {
  std::lock_guard<std::mutex> lock(Streams().mu);
  auto stream = std::make_shared<SimulatedStream>(Streams().next_seed++);
  stream->Start();
  SimulatedStream* handle = stream.get();
  Streams().streams.emplace(handle, std::move(stream));
  return handle;
}

// Forgets the stream and lets its worker end once the work enqueued so far has run.
void DestroyStream(SimulatedStream* stream) {
  std::shared_ptr<SimulatedStream> last;
  {
    std::lock_guard<std::mutex> lock(Streams().mu);
    auto it = Streams().streams.find(stream);
    if (it == Streams().streams.end()) return;
    last = std::move(it->second);
    Streams().streams.erase(it);
  }
  last->Stop();
}

// The per-thread default stream of the calling thread, created on first use.
struct PerThreadStream {
  SimulatedStream* stream = NewStream();
  ~PerThreadStream() { DestroyStream(stream); }
};

SimulatedStream* Resolve(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy) {
    static SimulatedStream* legacy = NewStream();  // lives until exit
    return legacy;
  }
  if (stream == cudaStreamPerThread) {
    thread_local PerThreadStream per_thread;
    return per_thread.stream;
  }
  return reinterpret_cast<SimulatedStream*>(stream);
}

void SynchronizeDevice() {
  std::vector<std::shared_ptr<SimulatedStream>> streams;
  {
    std::lock_guard<std::mutex> lock(Streams().mu);
    for (const auto& entry : Streams().streams) streams.push_back(entry.second);
  }
  for (const auto& s : streams) s->Synchronize();
}

// An event: its records are numbered; a wait (cudaStreamWaitEvent, cudaEventSynchronize) is for
// the latest record at the time of the call, whatever records follow, and records on different
// streams may complete in any order, so completion is kept per record.
struct SimulatedEvent {
  std::mutex mu;  // guards the fields below
  std::condition_variable cv;
  uint64_t recorded = 0;                                           // records issued
  std::map<uint64_t, std::chrono::steady_clock::time_point> done;  // completed records
  bool timing = true;

  uint64_t LatestRecord() {
    std::lock_guard<std::mutex> lock(mu);
    return recorded;
  }

  void WaitFor(uint64_t record) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return record == 0 || done.count(record) != 0; });
  }
};

// Events are shared by their handle and by the stream operations that record or wait on them:
// cudaEventDestroy returns at once and the event lives until the last of those has run.
struct EventRegistry {
  std::mutex mu;
  std::map<SimulatedEvent*, std::shared_ptr<SimulatedEvent>> events;
};

EventRegistry& Events() {
  static EventRegistry* registry = new EventRegistry;  // never destroyed: used until exit
  return *registry;
}

std::shared_ptr<SimulatedEvent> FindEvent(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(Events().mu);
  auto it = Events().events.find(reinterpret_cast<SimulatedEvent*>(event));
  return it == Events().events.end() ? nullptr : it->second;
}

// A range that starts in a tracked allocation must end in it: a real copy or memset past the
// end of device memory faults (cudaErrorIllegalAddress); here it is reported before it happens.
cudaError_t CheckRange(const void* ptr, size_t count) {
  if (count == 0) return cudaSuccess;
  if (ptr == nullptr) return Fail(cudaErrorInvalidValue);
  const std::optional<Location> at = Locate(ptr);
  if (at.has_value() && count > at->bytes_to_end) return Fail(cudaErrorIllegalAddress);
  return cudaSuccess;
}

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = Device().device_count;
  return Device().device_count == 0 ? Fail(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= Device().device_count) return Fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= Device().device_count) return Fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::strncpy(prop->name, "simulated CUDA device (host memory)", sizeof(prop->name) - 1);
  prop->totalGlobalMem = Device().device_bytes_total;
  prop->multiProcessorCount = 4;
  prop->major = 9;
  prop->minor = 0;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  if (const cudaError_t lost = lost_context[current_device].load(); lost != cudaSuccess) {
    return lost;  // sticky: not cleared
  }
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaDeviceReset(void) {
  lost_context[current_device].store(cudaSuccess);
  last_error = cudaSuccess;
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    default:
      return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorMemoryAllocation:
      return "out of memory (simulated device)";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected (simulated)";
    default:
      return "simulated CUDA runtime error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  NVFP4_SIM_RETURN_IF_LOST();
  return Allocate(ptr, size, Kind::kDevice);
}
cudaError_t cudaFree(void* ptr) {
  SynchronizeDevice();
  return Release(ptr, Kind::kDevice);
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  NVFP4_SIM_RETURN_IF_LOST();
  return Allocate(ptr, size, Kind::kPinnedHost);
}
cudaError_t cudaFreeHost(void* ptr) {
  SynchronizeDevice();
  return Release(ptr, Kind::kPinnedHost);
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  NVFP4_SIM_RETURN_IF_LOST();
  SimulatedDevice& d = Device();
  std::lock_guard<std::mutex> lock(d.mu);
  *free_bytes = d.device_bytes_total - d.device_bytes_used;
  *total_bytes = d.device_bytes_total;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  NVFP4_SIM_RETURN_IF_LOST();
  std::memset(attributes, 0, sizeof(*attributes));
  attributes->type = cudaMemoryTypeUnregistered;
  attributes->device = -2;
  if (const std::optional<Location> at = Locate(ptr)) {
    attributes->type = at->kind == Kind::kDevice ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
    attributes->device = 0;
    attributes->devicePointer = const_cast<void*>(ptr);
    if (at->kind == Kind::kPinnedHost) attributes->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (const cudaError_t e = CheckRange(dst, count); e != cudaSuccess) return e;
  if (const cudaError_t e = CheckRange(src, count); e != cudaSuccess) return e;
  SimulatedStream* legacy = Resolve(cudaStreamLegacy);
  legacy->Enqueue([=] { std::memmove(dst, src, count); });
  legacy->Synchronize();
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind,
                            cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (const cudaError_t e = CheckRange(dst, count); e != cudaSuccess) return e;
  if (const cudaError_t e = CheckRange(src, count); e != cudaSuccess) return e;
  SimulatedStream* s = Resolve(stream);
  if (count != 0 && !Locate(src).has_value()) {
    // From pageable memory: the runtime stages the source before returning.
    auto staged = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(src),
                                                         static_cast<const uint8_t*>(src) + count);
    s->Enqueue([=] { std::memcpy(dst, staged->data(), count); });
    return cudaSuccess;
  }
  s->Enqueue([=] { std::memmove(dst, src, count); });
  if (count != 0 && !Locate(dst).has_value()) s->Synchronize();  // into pageable memory
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  NVFP4_SIM_RETURN_IF_LOST();
  return cudaMemsetAsync(ptr, value, count, cudaStreamLegacy);
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  if (const cudaError_t e = CheckRange(ptr, count); e != cudaSuccess) return e;
  Resolve(stream)->Enqueue([=] { std::memset(ptr, value, count); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  NVFP4_SIM_RETURN_IF_LOST();
  *stream = reinterpret_cast<cudaStream_t>(NewStream());
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  DestroyStream(Resolve(stream));
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  Resolve(stream)->Synchronize();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  NVFP4_SIM_RETURN_IF_LOST();
  SynchronizeDevice();
  return cudaSuccess;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  NVFP4_SIM_RETURN_IF_LOST();
  Resolve(stream)->Enqueue([=] { fn(user_data); });
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  NVFP4_SIM_RETURN_IF_LOST();
  auto e = std::make_shared<SimulatedEvent>();
  e->timing = (flags & cudaEventDisableTiming) == 0;
  *event = reinterpret_cast<cudaEvent_t>(e.get());
  std::lock_guard<std::mutex> lock(Events().mu);
  Events().events.emplace(e.get(), std::move(e));
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(Events().mu);
  return Events().events.erase(reinterpret_cast<SimulatedEvent*>(event)) == 1
             ? cudaSuccess
             : Fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  NVFP4_SIM_RETURN_IF_LOST();
  std::shared_ptr<SimulatedEvent> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t record;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    record = ++e->recorded;
  }
  Resolve(stream)->Enqueue([e, record] {
    std::lock_guard<std::mutex> lock(e->mu);  // notified under the lock: e outlives the call
    e->done[record] = std::chrono::steady_clock::now();
    e->cv.notify_all();
  });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  NVFP4_SIM_RETURN_IF_LOST();
  std::shared_ptr<SimulatedEvent> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  e->WaitFor(e->LatestRecord());
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  NVFP4_SIM_RETURN_IF_LOST();
  std::shared_ptr<SimulatedEvent> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  Resolve(stream)->Enqueue([e, record = e->LatestRecord()] { e->WaitFor(record); });
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  NVFP4_SIM_RETURN_IF_LOST();
  std::shared_ptr<SimulatedEvent> a = FindEvent(start);
  std::shared_ptr<SimulatedEvent> b = FindEvent(end);
  if (a == nullptr || b == nullptr || !a->timing || !b->timing) {
    return Fail(cudaErrorInvalidResourceHandle);
  }
  if (a == b) {
    *ms = 0.0f;
    return cudaSuccess;
  }
  std::scoped_lock lock(a->mu, b->mu);
  const auto from = a->done.find(a->recorded);
  const auto to = b->done.find(b->recorded);
  if (from == a->done.end() || to == b->done.end()) return Fail(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(to->second - from->second).count();
  return cudaSuccess;
}

}  // extern "C"

namespace nvfp4::simulated {

void Enqueue(cudaStream_t stream, std::function<void()> work) {
  Resolve(stream)->Enqueue(std::move(work));
}

bool DeviceAccessible(const void* ptr, size_t bytes) {
  if (bytes == 0) return true;
  const std::optional<Location> at = Locate(ptr);
  return at.has_value() && bytes <= at->bytes_to_end;
}

bool Injected(const char* what) {
  const char* list = std::getenv("NVFP4_SIM_FAIL");
  if (list == nullptr) return false;
  const std::string names = std::string(",") + list + ",";
  return names.find(std::string(",") + what + ",") != std::string::npos;
}

cudaError_t FailureFor(const char* what) {
  return Injected(what) ? Fail(cudaErrorMemoryAllocation) : cudaSuccess;
}

cudaError_t LoseContext(cudaError_t error) {
  cudaError_t expected = cudaSuccess;
  lost_context[current_device].compare_exchange_strong(expected, error);
  return Fail(error);
}

cudaError_t LostContextError() { return Lost(); }

}  // namespace nvfp4::simulated
