#include "client/cli/path_checks.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

namespace nvfp4::cli {
namespace {

std::filesystem::path Resolved(const std::string& path) {
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

}  // namespace

bool SameFile(const std::string& a, const std::string& b) {
  std::error_code error;
  if (std::filesystem::exists(a, error) && std::filesystem::exists(b, error)) {
    return std::filesystem::equivalent(a, b, error);
  }
  return Resolved(a) == Resolved(b);
}

bool IsInsideDirectory(const std::string& path, const std::string& dir) {
  const std::filesystem::path p = Resolved(path);
  const std::filesystem::path d = Resolved(dir);
  // Component-wise prefix: "/a/bc" is not inside "/a/b".
  const auto mismatch = std::mismatch(d.begin(), d.end(), p.begin(), p.end());
  return mismatch.first == d.end();
}

}  // namespace nvfp4::cli
