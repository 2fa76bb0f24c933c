// Path comparisons for the nvfp4q commands' "an output naming an input" usage errors.
//
// What: whether two paths name the same file, and whether a path lies inside a directory,
// for paths that may not exist yet (a file about to be written). Both resolve `..`, `.` and
// the symlinks of the existing part of each path (std::filesystem::weakly_canonical).
// Thread-safety: stateless. Errors: none; a path that cannot be resolved compares by its text.
#ifndef NVFP4_CLIENT_CLI_PATH_CHECKS_H_
#define NVFP4_CLIENT_CLI_PATH_CHECKS_H_

#include <string>

namespace nvfp4::cli {

// True when `a` and `b` name the same file (existing or not).
bool SameFile(const std::string& a, const std::string& b);

// True when `path` is `dir` itself or lies anywhere below it.
bool IsInsideDirectory(const std::string& path, const std::string& dir);

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_PATH_CHECKS_H_
