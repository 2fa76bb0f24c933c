#include "server/checkpoint/content_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "common/posix_file.h"
#include "common/status_macros.h"

namespace nvfp4::checkpoint {
namespace {

std::string Hex128(XXH128_hash_t h) {
  char text[33];
  std::snprintf(text, sizeof(text), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return text;
}

}  // namespace

struct ContentHasher::State {
  XXH3_state_t* xxh = XXH3_createState();
  ~State() { XXH3_freeState(xxh); }
};

ContentHasher::ContentHasher() : state_(std::make_unique<State>()) {
  XXH3_128bits_reset(state_->xxh);
}

ContentHasher::~ContentHasher() = default;

void ContentHasher::Update(const void* data, size_t size) {
  if (size > 0) XXH3_128bits_update(state_->xxh, data, size);
}

std::string ContentHasher::HexDigest() const { return Hex128(XXH3_128bits_digest(state_->xxh)); }

std::string HashBytes(const void* data, size_t size) { return Hex128(XXH3_128bits(data, size)); }

absl::StatusOr<std::string> HashFile(const std::string& path) {
  ASSIGN_OR_RETURN(io::internal::ReadOnlyFile file, io::internal::ReadOnlyFile::Open(path));
  const size_t size = static_cast<size_t>(file.size());
  // pread in 64 MiB pieces: bounded memory, no mapping of a file that may be replaced.
  ContentHasher hasher;
  std::vector<char> buffer(std::min<size_t>(size, size_t{64} << 20));
  for (size_t offset = 0; offset < size; offset += buffer.size()) {
    const size_t n = std::min(buffer.size(), size - offset);
    RETURN_IF_ERROR(file.ReadAt(offset, buffer.data(), n));
    hasher.Update(buffer.data(), n);
  }
  return hasher.HexDigest();
}

}  // namespace nvfp4::checkpoint
