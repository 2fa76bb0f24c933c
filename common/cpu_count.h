// UsableCpuCount: how many CPUs this process may actually run on, for default thread counts.
//
// Why: std::thread::hardware_concurrency() counts the machine's CPUs, not the process's share.
// A Kubernetes pod limited to 8 CPUs on a 128-core node would start 128 engine threads, which
// the CFS quota then throttles in turn (each thread runs for a slice, all wait for the next
// period), and a process pinned by taskset or a cpuset would oversubscribe its cores. The count
// is the smallest of: the CPUs in the affinity mask (sched_getaffinity), and the cgroup CPU
// quota rounded up (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), at
// least 1. An explicit --threads still wins wherever it is offered.
// Thread-safety: stateless (reads /proc-like files on each call; call it once at start-up).
// Errors: none; unreadable or malformed files mean "no limit from there".
#ifndef NVFP4_COMMON_CPU_COUNT_H_
#define NVFP4_COMMON_CPU_COUNT_H_

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

namespace nvfp4 {

// CPUs granted by a cgroup v2 `cpu.max` line ("<quota> <period>", or "max <period>"): quota /
// period, or nullopt when unlimited or malformed.
inline std::optional<double> CgroupV2CpuLimit(const std::string& cpu_max) {
  std::istringstream in(cpu_max);
  std::string quota;
  double period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return std::nullopt;
  char* end = nullptr;
  const double q = std::strtod(quota.c_str(), &end);
  if (end == quota.c_str() || *end != '\0' || !(q > 0)) return std::nullopt;
  return q / period;
}

// CPUs granted by cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` (quota -1: unlimited).
inline std::optional<double> CgroupV1CpuLimit(const std::string& quota_us,
                                              const std::string& period_us) {
  double quota = 0, period = 0;
  if (!(std::istringstream(quota_us) >> quota) || !(std::istringstream(period_us) >> period) ||
      quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return quota / period;
}

// The thread count for `cpus` CPUs granted (a fraction rounds up: 1.5 CPUs can keep 2 threads
// partly busy), bounded by `affinity` CPUs; at least 1.
inline int ThreadsForCpuLimit(std::optional<double> cpus, int affinity) {
  int threads = std::max(1, affinity);
  if (cpus.has_value()) threads = std::min(threads, static_cast<int>(std::ceil(*cpus - 1e-9)));
  return std::max(1, threads);
}

inline int UsableCpuCount() {
  int affinity = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) affinity = CPU_COUNT(&set);
  const auto read = [](const char* path) {
    std::ifstream file(path);
    std::string text;
    std::getline(file, text);
    return text;
  };
  std::optional<double> cpus = CgroupV2CpuLimit(read("/sys/fs/cgroup/cpu.max"));
  if (!cpus.has_value()) {
    cpus = CgroupV1CpuLimit(read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                            read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  }
  return ThreadsForCpuLimit(cpus, affinity);
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_CPU_COUNT_H_
