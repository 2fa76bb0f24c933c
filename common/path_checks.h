// Path comparisons for "an output naming an input" checks (nvfp4q's usage errors, the
// checkpoint job's output-inside-the-model refusal).
//
// What: whether two paths name the same file, and whether a path lies inside a directory,
// for paths that may not exist yet (a file about to be written). Both resolve `..`, `.` and
// the symlinks of the existing part of each path (std::filesystem::weakly_canonical).
// Thread-safety: stateless. Errors: none; a path that cannot be resolved compares by its
// lexically normalised text.
#ifndef NVFP4_COMMON_PATH_CHECKS_H_
#define NVFP4_COMMON_PATH_CHECKS_H_

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>

namespace nvfp4 {

namespace path_checks_internal {

inline std::filesystem::path Resolved(const std::string& path) {
  std::error_code error;
  std::filesystem::path resolved = std::filesystem::absolute(path, error);
  if (error) {
    resolved = std::filesystem::path(path).lexically_normal();
  } else if (std::filesystem::path canonical = std::filesystem::weakly_canonical(resolved, error);
             !error) {
    resolved = canonical;
  } else {
    resolved = resolved.lexically_normal();
  }
  // "dir/" keeps an empty last element: drop it so that it equals "dir".
  if (!resolved.has_filename() && resolved.has_parent_path()) resolved = resolved.parent_path();
  return resolved;
}

}  // namespace path_checks_internal

// True when `a` and `b` name the same file (existing or not).
inline bool SameFile(const std::string& a, const std::string& b) {
  std::error_code error;
  if (std::filesystem::exists(a, error) && std::filesystem::exists(b, error)) {
    return std::filesystem::equivalent(a, b, error);
  }
  return path_checks_internal::Resolved(a) == path_checks_internal::Resolved(b);
}

// True when `path` is `dir` itself or lies anywhere below it (component-wise: "/a/bc" is not
// inside "/a/b").
inline bool IsInsideDirectory(const std::string& path, const std::string& dir) {
  const std::filesystem::path p = path_checks_internal::Resolved(path);
  const std::filesystem::path d = path_checks_internal::Resolved(dir);
  return std::mismatch(d.begin(), d.end(), p.begin(), p.end()).first == d.end();
}

}  // namespace nvfp4

#endif  // NVFP4_COMMON_PATH_CHECKS_H_
