// SourceCheckpoint: a Hugging Face checkpoint directory opened for reading.
//
// What: finds the weights (model.safetensors.index.json and its shards, or every *.safetensors
// file in the directory), maps and validates every shard (safetensors.h), and checks the set of
// tensors: a name in two shards, an index entry missing from its shard, or a shard tensor the
// index does not list is InvalidArgument naming the tensor and the files. Also lists the other
// files to copy into the output (config, tokenizer, ... : everything except the safetensors
// weights, their index and other weight formats such as *.bin, see docs/checkpoints.md) and
// loads config.json when present.
// Ownership: owns the mappings; SourceTensor pointers stay valid while the object lives.
// Thread-safety: immutable after Open; safe to read from many threads.
// Errors: NotFound when the directory has no safetensors weights; InvalidArgument for a bad file.
#ifndef NVFP4_SERVER_CHECKPOINT_SOURCE_CHECKPOINT_H_
#define NVFP4_SERVER_CHECKPOINT_SOURCE_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/path_policy.h"
#include "server/checkpoint/safetensors.h"

namespace nvfp4::checkpoint {

struct SourceTensor {
  std::string name;
  const MappedSafetensors* file = nullptr;
  const SafetensorsTensorInfo* info = nullptr;

  const uint8_t* data() const { return file->data(*info); }
};

class SourceCheckpoint {
 public:
  // Every file read (index, shards, config, files to copy) must pass `paths`.
  static absl::StatusOr<std::unique_ptr<SourceCheckpoint>> Open(const std::string& dir,
                                                                const PathPolicy& paths = {});

  const std::string& dir() const { return dir_; }
  // Every tensor of every shard, sorted by name.
  const std::vector<SourceTensor>& tensors() const { return tensors_; }
  const SourceTensor* Find(std::string_view name) const;
  // Paths relative to dir() of the non-weight files to copy, sorted.
  const std::vector<std::string>& other_files() const { return other_files_; }
  // Paths relative to dir() of weight files in subdirectories (e.g. a sentence-transformers
  // `2_Dense/model.safetensors`), which are neither quantized nor copied; sorted.
  const std::vector<std::string>& skipped_subdirectory_weights() const {
    return skipped_subdirectory_weights_;
  }
  // config.json, or null when the directory has none.
  const nlohmann::ordered_json& config() const { return config_; }
  // Total size of the weight files in bytes.
  uint64_t weight_bytes() const { return weight_bytes_; }
  // Identifies the inputs for resuming: shard names, sizes, modification times and headers.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  SourceCheckpoint() = default;

  std::string dir_;
  std::vector<std::unique_ptr<MappedSafetensors>> files_;
  std::vector<SourceTensor> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
  std::vector<std::string> other_files_;
  std::vector<std::string> skipped_subdirectory_weights_;
  nlohmann::ordered_json config_;
  uint64_t weight_bytes_ = 0;
  std::string fingerprint_;
};

// True for file names that hold weights in another format and are not copied (*.bin, *.pt,
// *.pth, *.ckpt, *.h5, *.msgpack, *.onnx, *.gguf, *.ot, *.tflite, *.safetensors and the index).
bool IsWeightFileName(std::string_view file_name);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_SOURCE_CHECKPOINT_H_
