#include "server/checkpoint/path_policy.h"

#include <limits.h>
#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_status.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) {
    return io::FileErrnoStatus(errno, path, "cannot resolve");
  }
  return std::string(buffer);
}

}  // namespace

absl::StatusOr<PathPolicy> PathPolicy::Create(const std::vector<std::string>& roots) {
  PathPolicy policy;
  for (const std::string& root : roots) {
    absl::StatusOr<std::string> resolved = RealPath(root);
    std::error_code ec;
    if (!resolved.ok() || !fs::is_directory(*resolved, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed root ", root, " is not an existing directory"));
    }
    policy.roots_.push_back(*resolved);
  }
  return policy;
}

absl::Status PathPolicy::CheckResolved(const std::string& path, const std::string& resolved) const {
  if (roots_.empty()) return absl::OkStatus();
  for (const std::string& root : roots_) {
    const std::string prefix = root == "/" ? root : root + "/";
    if (absl::StartsWith(resolved, prefix) && resolved.size() > prefix.size()) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(path, " resolves to ", resolved,
                                                  ", which is outside the server's allowed roots"));
}

absl::StatusOr<std::string> PathPolicy::CheckExisting(const std::string& path) const {
  if (!path.empty() && path[0] != '/' && confined()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": server paths must be absolute"));
  }
  absl::StatusOr<std::string> resolved = RealPath(path);
  if (!resolved.ok()) {
    if (absl::IsNotFound(resolved.status())) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
    }
    return resolved.status();
  }
  if (absl::Status s = CheckResolved(path, *resolved); !s.ok()) return s;
  return *resolved;
}

absl::StatusOr<std::string> PathPolicy::CheckNew(const std::string& path) const {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  if (!confined()) return path;
  if (path[0] != '/' && confined()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": server paths must be absolute"));
  }
  // Split off components until an existing ancestor; the rest must be plain names.
  std::vector<std::string> tail;
  std::error_code ec;
  for (const auto& part : fs::path(path)) {
    if (part == "..") {
      return absl::PermissionDeniedError(absl::StrCat(path, ": '..' is not allowed"));
    }
  }
  fs::path probe = fs::path(path);
  if (!probe.has_filename()) probe = probe.parent_path();
  while (!probe.empty() && !fs::exists(fs::symlink_status(probe, ec))) {
    tail.push_back(probe.filename().string());
    probe = probe.parent_path();
  }
  if (probe.empty()) probe = ".";
  absl::StatusOr<std::string> resolved = RealPath(probe.string());
  if (!resolved.ok()) return resolved.status();
  std::string full = *resolved;
  for (auto it = tail.rbegin(); it != tail.rend(); ++it) {
    if (*it == "." || it->empty()) continue;
    full = full == "/" ? "/" + *it : full + "/" + *it;
  }
  if (absl::Status s = CheckResolved(path, full); !s.ok()) return s;
  return full;
}

}  // namespace nvfp4::checkpoint
