// Content hashes of checkpoint files (XXH3-128, hex): what the resume journal records for each
// finished shard. ContentHasher digests bytes as they stream by (the writer hashes a shard while
// writing it); HashFile reads a file back (resume checks a shard found on disk).
// Thread-safety: a ContentHasher is single-threaded; HashFile is reentrant.
// Errors: HashFile returns the file's I/O status.
#ifndef NVFP4_SERVER_CHECKPOINT_CONTENT_HASH_H_
#define NVFP4_SERVER_CHECKPOINT_CONTENT_HASH_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace nvfp4::checkpoint {

class ContentHasher {
 public:
  ContentHasher();
  ~ContentHasher();
  ContentHasher(const ContentHasher&) = delete;
  ContentHasher& operator=(const ContentHasher&) = delete;

  void Update(const void* data, size_t size);
  std::string HexDigest() const;  // of everything so far; 32 hex digits

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The hash of a whole data block, and of a file's bytes (read in 64 MiB pieces).
std::string HashBytes(const void* data, size_t size);
absl::StatusOr<std::string> HashFile(const std::string& path);

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_CONTENT_HASH_H_
