// RunCheckpointJob: one Hugging Face checkpoint in, one NVFP4 checkpoint out.
//
// What: opens the source (source_checkpoint.h), plans (checkpoint_plan.h), computes each fused
// group's amax in a first pass, then quantizes the planned tensors through `backend` (the CPU
// or CUDA engine embedded, or a remote nvfp4d) with up to `concurrency` tensors in flight while
// the shards are written in order (safetensors.h). Everything is written into a staging
// directory next to the output (`.<out name>.nvfp4-partial`), which is renamed to `out_dir`
// only when complete: a crash or cancellation never leaves a half-written checkpoint at
// `out_dir`. A journal in the staging directory records each finished shard with its content
// hash (XXH3-128) and the hash of the job's inputs and arguments; rerunning the same job skips
// the shards whose files still hash to the recorded value.
// Importance (WMSE) comes from a safetensors file of `<module>.importance` F32 [K] vectors;
// a module without one falls back to MSE (said in the report). Activation calibration
// (W4A4) comes from a JSON object {"<module>": activation amax, ...}; without it the output is
// weight-only (W4A16). See docs/checkpoints.md.
// Ownership: borrows `backend` and the callbacks for the duration of the call.
// Thread-safety: reentrant; `progress` is called from the calling thread only.
// Errors: InvalidArgument (bad inputs or options, naming the file/tensor), NotFound,
// FailedPrecondition (output exists and is not empty, source already quantized), Aborted
// (another job holds the output's staging directory), Cancelled
// (when *cancelled becomes true; the staging directory is kept for a resume), I/O statuses.
#ifndef NVFP4_SERVER_CHECKPOINT_CHECKPOINT_JOB_H_
#define NVFP4_SERVER_CHECKPOINT_CHECKPOINT_JOB_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/quantize_options.h"
#include "server/checkpoint/checkpoint_plan.h"
#include "server/checkpoint/checkpoint_report.h"
#include "server/checkpoint/path_policy.h"

namespace nvfp4::checkpoint {

struct CheckpointJobOptions {
  std::string model_dir;
  std::string out_dir;
  OutputFormat format = OutputFormat::kModelOpt;
  Method method = Method::kScaleSweep;
  Objective objective = Objective::kMse;
  int scale_max = 256;
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  std::string importance_path;           // safetensors of <module>.importance; wmse needs it, mse
                                         // only reports the WMSE figures
  std::string calibration_path;          // JSON {"<module>": activation amax}; makes it W4A4
  uint64_t shard_bytes = 5'000'000'000;  // "5GB" as Hugging Face and nvfp4q count it
  int concurrency = 1;  // tensors quantized at once (the engine also parallelises inside one)
  // Server-side jobs: every path read or written must pass this policy (default: anything).
  PathPolicy paths;
};

// Progress, reported from the calling thread.
struct CheckpointEvent {
  std::string phase = {};  // "plan", "amax", "quantize", "finalize", "done"
  int64_t done = 0;        // tensors finished (of `total`) in this phase
  int64_t total = 0;
  uint64_t bytes_done = 0;  // input bytes finished in the quantize phase
  uint64_t bytes_total = 0;
  const TensorReport* tensor = nullptr;  // the tensor just finished (quantize phase)
  std::string message = {};              // e.g. "resumed shard model-00001-of-00003.safetensors"
  bool warning = false;                  // the message is worth showing even to a quiet client
};
using CheckpointProgressFn = std::function<void(const CheckpointEvent&)>;

absl::StatusOr<CheckpointReport> RunCheckpointJob(const CheckpointJobOptions& options,
                                                  QuantizerBackend& backend,
                                                  const CheckpointProgressFn& progress,
                                                  const std::atomic<bool>* cancelled);

// The planner's options of a job (format, --include/--exclude, W4A4 when calibrated, shards).
PlanOptions PlanOptionsFor(const CheckpointJobOptions& options);

// FailedPrecondition when `source` is already quantized (a non-null quantization_config in
// its config.json): the job refuses it, and so does nvfp4q quantize --dry-run.
absl::Status CheckUnquantizedSource(const SourceCheckpoint& source);

// The staging directory used for `out_dir`.
std::string StagingDirFor(const std::string& out_dir);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_CHECKPOINT_JOB_H_
