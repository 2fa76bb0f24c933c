// PathPolicy: confines the files a server-side checkpoint job touches to allowed root
// directories.
//
// What: a path is allowed when its fully resolved form (realpath: symlinks followed, "." and
// ".." removed) lies strictly inside one of the resolved roots. For a path that does not exist
// yet (an output directory), the deepest existing ancestor is resolved and the remaining
// components must be plain names. So "..", absolute symlinks and relative symlinks that leave
// a root are all rejected, whichever component they hide in. An empty policy (no roots) allows
// everything: the embedded CLI runs with the user's own permissions.
// Thread-safety: immutable after Create.
// Errors: PermissionDenied naming the path and its resolved form; InvalidArgument for relative
// paths; NotFound for a required path that does not exist.
#ifndef NVFP4_SERVER_CHECKPOINT_PATH_POLICY_H_
#define NVFP4_SERVER_CHECKPOINT_PATH_POLICY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nvfp4::checkpoint {

class PathPolicy {
 public:
  PathPolicy() = default;  // allows everything
  // Each root must exist and be a directory.
  static absl::StatusOr<PathPolicy> Create(const std::vector<std::string>& roots);

  bool confined() const { return !roots_.empty(); }
  const std::vector<std::string>& roots() const { return roots_; }

  // The resolved path if `path` exists and is allowed.
  absl::StatusOr<std::string> CheckExisting(const std::string& path) const;
  // The resolved path if `path` (which may not exist yet) would be allowed.
  absl::StatusOr<std::string> CheckNew(const std::string& path) const;

 private:
  absl::Status CheckResolved(const std::string& path, const std::string& resolved) const;
  std::vector<std::string> roots_;  // resolved
};

}  // namespace nvfp4::checkpoint

#endif  // NVFP4_SERVER_CHECKPOINT_PATH_POLICY_H_
