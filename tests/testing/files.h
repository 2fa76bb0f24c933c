// Whole-file helpers for the GoogleTest suites: write (parent directories created; a failed
// write fails the test) and read back (empty when the file is missing). Header-only.
#ifndef NVFP4_TESTS_TESTING_FILES_H_
#define NVFP4_TESTS_TESTING_FILES_H_

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace nvfp4::testing_files {

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace nvfp4::testing_files

#endif  // NVFP4_TESTS_TESTING_FILES_H_
