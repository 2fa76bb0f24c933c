#include "client/io/safetensors_writer.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace nvfp4::io {
namespace {

// Succeeds if `needle` occurs in `haystack`; the failure message shows both.
testing::AssertionResult Contains(absl::string_view haystack, absl::string_view needle) {
  if (absl::StrContains(haystack, needle)) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

// A fresh, empty directory in the test temp dir that is unique to the running test.
std::string TestDir() {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) /
                                    absl::StrCat("st_", info->test_suite_name(), "_", info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

// Builds a safetensors file from a raw header text (not padded) and data bytes.
std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xFF);
  }
  return out + header + data;
}

template <typename T>
std::string AsBytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::string TensorBytes(const SafetensorsFile& file, const SafetensorsTensorInfo& tensor) {
  return std::string(reinterpret_cast<const char*>(file.TensorData(tensor)),
                     tensor.end - tensor.begin);
}

TEST(SafetensorsWriterTest, DTypeSizes) {
  EXPECT_EQ(SafetensorsDTypeSize("U8"), 1u);
  EXPECT_EQ(SafetensorsDTypeSize("BOOL"), 1u);
  EXPECT_EQ(SafetensorsDTypeSize("F8_E4M3"), 1u);
  EXPECT_EQ(SafetensorsDTypeSize("F8_E5M2"), 1u);
  EXPECT_EQ(SafetensorsDTypeSize("BF16"), 2u);
  EXPECT_EQ(SafetensorsDTypeSize("F16"), 2u);
  EXPECT_EQ(SafetensorsDTypeSize("U16"), 2u);
  EXPECT_EQ(SafetensorsDTypeSize("F32"), 4u);
  EXPECT_EQ(SafetensorsDTypeSize("I32"), 4u);
  EXPECT_EQ(SafetensorsDTypeSize("F64"), 8u);
  EXPECT_EQ(SafetensorsDTypeSize("U64"), 8u);
  EXPECT_EQ(SafetensorsDTypeSize("f32"), std::nullopt);
  EXPECT_EQ(SafetensorsDTypeSize("F4"), std::nullopt);
}

TEST(SafetensorsWriterTest, RoundTrip) {
  const std::string dir = TestDir();
  const std::string path = dir + "/model.safetensors";
  const std::vector<uint8_t> packed = {0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC};
  const std::vector<uint8_t> scales = {0x38, 0x40, 0x44};
  const std::vector<float> global = {448.0f * 6.0f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC000, 0x0000, 0x7F80, 0x3F00};
  const std::vector<std::string> payloads = {AsBytes(packed), AsBytes(scales), AsBytes(global),
                                             AsBytes(bf16), ""};
  const std::vector<SafetensorsEntry> entries = {
      {"layer.weight", "U8", {2, 3}, packed.data(), packed.size()},
      {"layer.weight_scale", "F8_E4M3", {3, 1}, scales.data(), scales.size()},
      {"layer.weight_scale_2", "F32", {}, global.data(), 4},
      {"layer.bias", "BF16", {5}, bf16.data(), 10},
      {"empty", "F16", {0, 4}, nullptr, 0},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"quant_method", "nvfp4 \"v1\""}};
  absl::Status status = WriteSafetensors(path, entries, metadata);
  ASSERT_TRUE(status.ok()) << status;

  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsSimple(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->data_start, 8 + file->header_size);
  EXPECT_EQ(file->data_start % 8, 0u);
  EXPECT_EQ(file->metadata, metadata);
  EXPECT_EQ(file->data.size(), 6u + 3u + 4u + 10u);
  EXPECT_EQ(ReadBytes(path).size(), file->data_start + file->data.size());

  ASSERT_EQ(file->tensors.size(), entries.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    SCOPED_TRACE(entries[i].name);
    const SafetensorsTensorInfo& tensor = file->tensors[i];
    EXPECT_EQ(tensor.name, entries[i].name);
    EXPECT_EQ(tensor.dtype, entries[i].dtype);
    EXPECT_EQ(tensor.shape, entries[i].shape);
    EXPECT_EQ(tensor.begin, offset);
    EXPECT_EQ(tensor.end, offset + entries[i].bytes);
    EXPECT_EQ(TensorBytes(*file, tensor), payloads[i]);
    EXPECT_EQ(file->Find(entries[i].name), &tensor);
    offset = tensor.end;
  }
  EXPECT_EQ(file->Find("missing"), nullptr);

  // The header is JSON padded with spaces, with __metadata__ first and tensors in write order.
  const std::string bytes = ReadBytes(path);
  const std::string header = bytes.substr(8, file->header_size);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",", 0), 0u) << header;
  EXPECT_TRUE(Contains(header,
                       "\"layer.weight\":{\"dtype\":\"U8\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,6]}"));
  EXPECT_TRUE(Contains(header,
                       "\"layer.weight_scale_2\":{\"dtype\":\"F32\",\"shape\":[],"
                       "\"data_offsets\":[9,13]}"));
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);
}

TEST(SafetensorsWriterTest, AtomicWriteLeavesNoTemporaryFile) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  const std::vector<float> a = {1, 2, 3, 4};
  ASSERT_TRUE(WriteSafetensors(path, {{"a", "F32", {4}, a.data(), 16}}, {}).ok());
  // Overwriting an existing file works and also leaves only the destination behind.
  const std::vector<float> b = {5, 6};
  ASSERT_TRUE(WriteSafetensors(path, {{"b", "F32", {1, 2}, b.data(), 8}}, {}).ok());
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"out.safetensors"});

  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsSimple(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), 1u);
  EXPECT_EQ(file->tensors[0].name, "b");
  EXPECT_TRUE(file->metadata.empty());
  EXPECT_EQ(TensorBytes(*file, file->tensors[0]), AsBytes(b));
  EXPECT_FALSE(Contains(ReadBytes(path), "__metadata__"));
}

TEST(SafetensorsWriterTest, EmptyFile) {
  const std::string path = TestDir() + "/empty.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {}, {}).ok());
  EXPECT_EQ(ReadBytes(path), SafetensorsBytes("{}      ", ""));
  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsSimple(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->tensors.empty());
  EXPECT_EQ(file->data_start, 16u);
}

// Expects WriteSafetensors to fail with InvalidArgument mentioning `expected`, creating nothing.
void ExpectWriteRejected(const std::vector<SafetensorsEntry>& entries,
                         const std::map<std::string, std::string>& metadata,
                         const std::string& expected) {
  SCOPED_TRACE(expected);
  const std::string dir = TestDir();
  const std::string path = dir + "/bad.safetensors";
  absl::Status status = WriteSafetensors(path, entries, metadata);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(Contains(status.message(), path));
  EXPECT_TRUE(Contains(status.message(), expected));
  EXPECT_TRUE(ListDir(dir).empty());
}

TEST(SafetensorsWriterTest, RejectsSizeMismatch) {
  const std::vector<float> values(6);
  ExpectWriteRejected({{"w", "F32", {2, 3}, values.data(), 20}}, {},
                      "tensor 'w': F32 shape [2, 3] needs 24 bytes but 20 were given");
  ExpectWriteRejected({{"w", "BF16", {2, 3}, values.data(), 24}}, {}, "tensor 'w'");
}

TEST(SafetensorsWriterTest, RejectsDuplicateAndReservedNames) {
  const std::vector<uint8_t> values(4);
  ExpectWriteRejected({{"x", "U8", {2}, values.data(), 2}, {"x", "U8", {2}, values.data() + 2, 2}},
                      {}, "tensor 'x': duplicate tensor name");
  ExpectWriteRejected({{"__metadata__", "U8", {2}, values.data(), 2}}, {},
                      "tensor '__metadata__': the name is reserved");
  ExpectWriteRejected({{"", "U8", {2}, values.data(), 2}}, {}, "must not be empty");
  ExpectWriteRejected({{"bad\xff", "U8", {2}, values.data(), 2}}, {}, "not valid UTF-8");
  ExpectWriteRejected({}, {{"k", "\xc0\x80"}}, "metadata entry 'k' is not valid UTF-8");
}

TEST(SafetensorsWriterTest, RejectsBadDTypeShapeAndData) {
  const std::vector<uint8_t> values(4);
  ExpectWriteRejected({{"t", "F4", {2}, values.data(), 1}}, {}, "tensor 't': unknown dtype 'F4'");
  ExpectWriteRejected({{"t", "U8", {-2}, values.data(), 2}}, {}, "negative dimension");
  ExpectWriteRejected({{"t", "U8", {2}, nullptr, 2}}, {}, "tensor 't': data is null");
  ExpectWriteRejected({{"t", "U64", {int64_t{1} << 40, int64_t{1} << 40}, values.data(), 0}}, {},
                      "overflows");
}

TEST(SafetensorsWriterTest, WriteToMissingDirectoryFails) {
  const std::string path = TestDir() + "/missing/out.safetensors";
  absl::Status status = WriteSafetensors(path, {}, {});
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), path));
}

// Writes `bytes` to a fresh file and expects ReadSafetensorsSimple to fail with InvalidArgument
// naming the file and mentioning `expected`.
void ExpectReadRejected(const std::string& bytes, const std::string& expected) {
  SCOPED_TRACE(expected);
  const std::string path = TestDir() + "/in.safetensors";
  WriteBytes(path, bytes);
  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsSimple(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_TRUE(Contains(file.status().message(), path));
  EXPECT_TRUE(Contains(file.status().message(), expected));
}

TEST(SafetensorsReaderTest, AcceptsHandBuiltFile) {
  const std::string path = TestDir() + "/hand.safetensors";
  // Tensors listed out of offset order; the reader sorts them by offset.
  WriteBytes(path,
             SafetensorsBytes("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
                              "\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                              "ABCDEF"));
  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsSimple(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), 2u);
  EXPECT_EQ(file->tensors[0].name, "a");
  EXPECT_EQ(file->tensors[1].name, "b");
  EXPECT_EQ(TensorBytes(*file, file->tensors[1]), "EF");
}

TEST(SafetensorsReaderTest, RejectsMalformedFiles) {
  const std::string u8x2 = "\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}";
  ExpectReadRejected("abc", "too small");
  ExpectReadRejected(std::string("\x00\xe1\xf5\x05\x00\x00\x00\x00", 8) + "{}",
                     "header length 100000000 runs past the end");
  ExpectReadRejected(std::string("\x01\xe1\xf5\x05\x00\x00\x00\x00", 8) + "{}",
                     "exceeds the limit of 100000000 bytes");
  ExpectReadRejected(SafetensorsBytes("{\"t\":", ""), "not valid JSON");
  ExpectReadRejected(SafetensorsBytes("[1, 2]", ""), "must be a JSON object");
  ExpectReadRejected(SafetensorsBytes("{" + u8x2 + "," + u8x2 + "}", "ab"), "duplicate key 't'");
  ExpectReadRejected(SafetensorsBytes("{" + u8x2 + "}", "a"), "data section is 1 bytes");
  ExpectReadRejected(SafetensorsBytes("{" + u8x2 + "}", "abc"), "data section is 3 bytes");
  ExpectReadRejected(
      SafetensorsBytes("{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", "abc"),
      "tensor 't' starts at data offset 1");
  ExpectReadRejected(
      SafetensorsBytes("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "abcd"),
      "tensor 't': data_offsets [0, 4] span 4 bytes but F32 shape [2] needs 8");
  ExpectReadRejected(
      SafetensorsBytes("{\"t\":{\"dtype\":\"X9\",\"shape\":[2],\"data_offsets\":[0,2]}}", "ab"),
      "unknown dtype 'X9'");
  ExpectReadRejected(
      SafetensorsBytes("{\"t\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", "ab"),
      "non-negative integers");
  ExpectReadRejected(
      SafetensorsBytes("{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,0]}}", "ab"),
      "reversed");
  ExpectReadRejected(SafetensorsBytes("{\"__metadata__\":{\"k\":1}}", ""), "must be a string");
}

}  // namespace
}  // namespace nvfp4::io
