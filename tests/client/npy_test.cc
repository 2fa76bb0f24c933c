#include "client/io/npy.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tests/testing/files.h"

namespace nvfp4::io {
namespace {

// Succeeds if `needle` occurs in `haystack`; the failure message shows both.
testing::AssertionResult Contains(absl::string_view haystack, absl::string_view needle) {
  if (absl::StrContains(haystack, needle)) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

// A path in the test temp dir that is unique to the running test.
std::string TestPath(absl::string_view suffix) {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(testing::TempDir(), "npy_", info->test_suite_name(), "_", info->name(), "_",
                      suffix);
}

using testing_files::ReadBytes;
using testing_files::WriteBytes;

template <typename T>
std::string AsBytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// Hand-builds a .npy file: magic, version (major.0), little-endian header length (2 bytes for
// v1, 4 bytes for v2/v3), `dict` padded with spaces and a trailing '\n' to a 64-byte boundary,
// then `data`.
std::string NpyFile(int major, const std::string& dict, const std::string& data) {
  const size_t length_bytes = major == 1 ? 2 : 4;
  const size_t prefix = 8 + length_bytes;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  for (size_t i = 0; i < length_bytes; ++i) {
    out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xFF));
  }
  return out + header + data;
}

// Round-trips `values` through WriteNpy/ReadNpy and checks every field.
template <typename T>
void ExpectRoundTrip(const std::string& descr, const std::vector<int64_t>& shape,
                     const std::vector<T>& values) {
  SCOPED_TRACE(absl::StrCat(descr, " rank ", shape.size(), " elements ", values.size()));
  const std::string path =
      TestPath(absl::StrCat(descr.substr(1), "_r", shape.size(), "_n", values.size(), ".npy"));
  ASSERT_TRUE(WriteNpy(path, descr, shape, values.data(), values.size() * sizeof(T)).ok());
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->descr, descr);
  EXPECT_EQ(array->shape, shape);
  EXPECT_EQ(array->element_size(), sizeof(T));
  EXPECT_EQ(array->element_count(), static_cast<int64_t>(values.size()));
  ASSERT_EQ(array->data.size(), values.size() * sizeof(T));
  EXPECT_EQ(std::string(array->data.begin(), array->data.end()), AsBytes(values));
  // Data starts on a 64-byte boundary, like files written by NumPy.
  EXPECT_EQ((ReadBytes(path).size() - array->data.size()) % 64, 0u);
}

TEST(NpyTest, RoundTripF32) {
  ExpectRoundTrip<float>("<f4", {}, {3.5f});
  ExpectRoundTrip<float>("<f4", {5}, {1, -2, 3.25f, 0, 1e30f});
  ExpectRoundTrip<float>("<f4", {2, 3}, {1, 2, 3, 4, 5, 6});
  ExpectRoundTrip<float>("<f4", {2, 1, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  ExpectRoundTrip<float>("<f4", {0}, {});
  ExpectRoundTrip<float>("<f4", {3, 0, 2}, {});
}

TEST(NpyTest, RoundTripF16) {
  ExpectRoundTrip<uint16_t>("<f2", {}, {0x3C00});
  ExpectRoundTrip<uint16_t>("<f2", {4}, {0x3C00, 0xBC00, 0x7BFF, 0x0001});
  ExpectRoundTrip<uint16_t>("<f2", {2, 2}, {1, 2, 3, 4});
}

TEST(NpyTest, RoundTripU8) {
  ExpectRoundTrip<uint8_t>("|u1", {}, {7});
  ExpectRoundTrip<uint8_t>("|u1", {3}, {0, 128, 255});
  std::vector<uint8_t> big(3 * 70);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 37);
  ExpectRoundTrip<uint8_t>("|u1", {3, 70}, big);
}

TEST(NpyTest, WrittenHeaderMatchesNumpyLayout) {
  // Byte-for-byte what np.save writes for np.arange(1, 7, dtype='<f4').reshape(2, 3).
  const std::string path = TestPath("a.npy");
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteNpy(path, "<f4", {2, 3}, values.data(), 24).ok());
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  header.resize(117, ' ');
  header.push_back('\n');
  EXPECT_EQ(ReadBytes(path),
            std::string("\x93NUMPY\x01\x00\x76\x00", 10) + header + AsBytes(values));

  ASSERT_TRUE(WriteNpy(path, "<f4", {5}, values.data(), 20).ok());
  EXPECT_TRUE(Contains(ReadBytes(path), "'shape': (5,), }"));
  ASSERT_TRUE(WriteNpy(path, "<f4", {}, values.data(), 4).ok());
  EXPECT_TRUE(Contains(ReadBytes(path), "'shape': (), }"));
}

TEST(NpyTest, ReadsV1FixtureWithReorderedKeys) {
  const std::vector<float> values = {1.5f, -2, 0, 4, 8};
  const std::string path = TestPath("v1.npy");
  WriteBytes(path,
             NpyFile(1, "{'shape': (5,),'fortran_order' :False , 'descr':'<f4'}", AsBytes(values)));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->descr, "<f4");
  EXPECT_EQ(array->shape, std::vector<int64_t>{5});
  EXPECT_EQ(array->element_size(), 4u);
  EXPECT_EQ(array->element_count(), 5);
  EXPECT_EQ(std::string(array->data.begin(), array->data.end()), AsBytes(values));
}

TEST(NpyTest, ReadsV2FixtureWithDoubleQuotesAndSpacing) {
  const std::vector<uint16_t> values = {1, 2, 3, 4, 5, 6};
  const std::string path = TestPath("v2.npy");
  WriteBytes(path, NpyFile(2,
                           "{ \"fortran_order\": False,\n \"descr\": \"<f2\", "
                           "\"shape\": ( 2 , 3 , ) , }",
                           AsBytes(values)));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->descr, "<f2");
  EXPECT_EQ(array->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::string(array->data.begin(), array->data.end()), AsBytes(values));
}

TEST(NpyTest, ReadsV2FixtureWithLargeHeader) {
  // A header longer than 64 KiB can only be expressed in format 2.0 or later.
  std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
  dict.append(70000, ' ');
  const std::string path = TestPath("v2big.npy");
  WriteBytes(path, NpyFile(2, dict, "\x01\x02"));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->shape, std::vector<int64_t>{2});
  EXPECT_EQ(array->data, (std::vector<uint8_t>{1, 2}));
}

TEST(NpyTest, ReadsV3Fixture) {
  const std::vector<int32_t> values = {-1, 2, -3};
  const std::string path = TestPath("v3.npy");
  WriteBytes(path, NpyFile(3, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
                           AsBytes(values)));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->descr, "<i4");
  EXPECT_EQ(array->element_size(), 4u);
  EXPECT_EQ(std::string(array->data.begin(), array->data.end()), AsBytes(values));
}

TEST(NpyTest, ReadsZeroDimensionalFixture) {
  const std::vector<double> values = {2.75};
  const std::string path = TestPath("scalar.npy");
  WriteBytes(
      path, NpyFile(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", AsBytes(values)));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_TRUE(array->shape.empty());
  EXPECT_EQ(array->element_count(), 1);
  EXPECT_EQ(array->element_size(), 8u);
  EXPECT_EQ(std::string(array->data.begin(), array->data.end()), AsBytes(values));
}

TEST(NpyTest, ReadsPython2LongDimensions) {
  const std::string path = TestPath("long.npy");
  WriteBytes(path,
             NpyFile(1, "{'descr': '<u1', 'fortran_order': False, 'shape': (2L, 1L), }", "ab"));
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->shape, (std::vector<int64_t>{2, 1}));
}

TEST(NpyTest, DescrItemSizes) {
  EXPECT_EQ(*NpyDescrItemSize("<f4"), 4u);
  EXPECT_EQ(*NpyDescrItemSize("<f2"), 2u);
  EXPECT_EQ(*NpyDescrItemSize("<f8"), 8u);
  EXPECT_EQ(*NpyDescrItemSize("|u1"), 1u);
  EXPECT_EQ(*NpyDescrItemSize("<u1"), 1u);
  EXPECT_EQ(*NpyDescrItemSize("|b1"), 1u);
  EXPECT_EQ(*NpyDescrItemSize("|i1"), 1u);
  EXPECT_EQ(*NpyDescrItemSize("<i4"), 4u);
  EXPECT_EQ(*NpyDescrItemSize("<u8"), 8u);
  EXPECT_EQ(*NpyDescrItemSize("<c16"), 16u);
  EXPECT_FALSE(NpyDescrItemSize(">f4").ok());
  EXPECT_FALSE(NpyDescrItemSize("|O").ok());
  EXPECT_FALSE(NpyDescrItemSize("<U10").ok());
  EXPECT_FALSE(NpyDescrItemSize("<M8[ns]").ok());
  EXPECT_FALSE(NpyDescrItemSize("<f3").ok());
  EXPECT_FALSE(NpyDescrItemSize("f4").ok());
  EXPECT_FALSE(NpyDescrItemSize("").ok());
}

// Writes `dict` + `data` as a v1 fixture and expects ReadNpy to fail with InvalidArgument, a
// message naming the file and containing `expected`.
void ExpectRejected(const std::string& name, const std::string& file_bytes,
                    const std::string& expected) {
  SCOPED_TRACE(name);
  const std::string path = TestPath(name);
  WriteBytes(path, file_bytes);
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_FALSE(array.ok());
  EXPECT_EQ(array.status().code(), absl::StatusCode::kInvalidArgument) << array.status();
  EXPECT_TRUE(Contains(array.status().message(), path));
  EXPECT_TRUE(Contains(array.status().message(), expected));
}

TEST(NpyTest, RejectsFortranOrder) {
  ExpectRejected("fortran.npy",
                 NpyFile(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                         std::string(16, '\0')),
                 "Fortran-order arrays are not supported; use np.ascontiguousarray");
}

TEST(NpyTest, RejectsBigEndian) {
  ExpectRejected(
      "be.npy",
      NpyFile(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", std::string(8, '\0')),
      "big-endian");
}

TEST(NpyTest, RejectsObjectAndStructuredArrays) {
  ExpectRejected(
      "object.npy",
      NpyFile(1, "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0')),
      "object arrays are not supported");
  ExpectRejected("record.npy",
                 NpyFile(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                         std::string(4, '\0')),
                 "structured");
}

TEST(NpyTest, RejectsTruncatedData) {
  ExpectRejected("truncated.npy",
                 NpyFile(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
                         std::string(19, '\0')),
                 "truncated data");
}

TEST(NpyTest, RejectsTrailingData) {
  ExpectRejected("trailing.npy",
                 NpyFile(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
                         std::string(21, '\0')),
                 "trailing data");
}

TEST(NpyTest, RejectsBadMagicAndVersion) {
  std::string bytes = NpyFile(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), }", "x");
  std::string bad_magic = bytes;
  bad_magic[1] = 'M';
  ExpectRejected("magic.npy", bad_magic, "bad magic");
  ExpectRejected("short.npy", "\x93NUM", "too small");
  std::string bad_version = bytes;
  bad_version[6] = 4;
  ExpectRejected("version.npy", bad_version, "unsupported .npy format version 4.0");
}

TEST(NpyTest, RejectsTruncatedHeader) {
  std::string bytes = NpyFile(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), }", "");
  ExpectRejected("header.npy", bytes.substr(0, 40), "truncated header");
}

TEST(NpyTest, RejectsMalformedHeaders) {
  const struct {
    const char* name;
    const char* dict;
    const char* expected;
  } kCases[] = {
      {"missing_shape.npy", "{'descr': '|u1', 'fortran_order': False}", "missing key 'shape'"},
      {"extra_key.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), 'x': 1}",
       "unexpected key 'x'"},
      {"dup_key.npy", "{'descr': '|u1', 'descr': '|u1', 'fortran_order': False, 'shape': (1,)}",
       "duplicate key 'descr'"},
      {"not_tuple.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': (1)}",
       "shape must be a tuple"},
      {"list_shape.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': [1]}",
       "shape must be a tuple"},
      {"negative.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': (-1,)}",
       "negative dimension"},
      {"bad_bool.npy", "{'descr': '|u1', 'fortran_order': 0, 'shape': (1,)}",
       "expected True or False"},
      {"no_brace.npy", "'descr': '|u1'", "expected '{'"},
      {"garbage.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': (1,)} x",
       "unexpected text after '}'"},
      {"unterminated.npy", "{'descr': '|u1, 'fortran_order': False, 'shape': (1,)}",
       "malformed header"},
  };
  for (const auto& c : kCases) ExpectRejected(c.name, NpyFile(1, c.dict, "x"), c.expected);
}

TEST(NpyTest, RejectsShapeOverflow) {
  ExpectRejected("overflow.npy",
                 NpyFile(1,
                         "{'descr': '<f4', 'fortran_order': False, "
                         "'shape': (4294967296, 4294967296, 16), }",
                         ""),
                 "overflows");
  ExpectRejected("huge_dim.npy",
                 NpyFile(1,
                         "{'descr': '<f4', 'fortran_order': False, "
                         "'shape': (99999999999999999999,), }",
                         ""),
                 "does not fit in 64 bits");
}

TEST(NpyTest, MissingFileIsNotFound) {
  const std::string path = TestPath("does_not_exist.npy");
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_FALSE(array.ok());
  EXPECT_EQ(array.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(array.status().message(), path));
}

TEST(NpyTest, DirectoryIsRejected) {
  absl::StatusOr<NpyArray> array = ReadNpy(testing::TempDir());
  ASSERT_FALSE(array.ok());
  EXPECT_TRUE(Contains(array.status().message(), testing::TempDir()));
}

TEST(NpyTest, WriteRejectsInvalidArguments) {
  const std::string path = TestPath("w.npy");
  const std::vector<float> values(6);
  absl::Status status = WriteNpy(path, "<f4", {2, 3}, values.data(), 20);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), path));
  EXPECT_TRUE(Contains(status.message(), "needs 24 bytes but 20 were given"));
  EXPECT_EQ(WriteNpy(path, ">f4", {6}, values.data(), 24).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteNpy(path, "<f4", {-1}, values.data(), 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteNpy(path, "<f4", {6}, nullptr, 24).code(), absl::StatusCode::kInvalidArgument);
  // Nothing was created by the failed writes.
  EXPECT_FALSE(std::ifstream(path).good());
}

TEST(NpyTest, WriteToMissingDirectoryFails) {
  const std::string path = TestPath("no_such_dir/a.npy");
  const uint8_t value = 1;
  absl::Status status = WriteNpy(path, "|u1", {1}, &value, 1);
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), path));
}

TEST(NpyTest, ReadRawFile) {
  const std::string path = TestPath("raw.bin");
  WriteBytes(path, std::string("\x01\x02\x03\x04", 4));
  absl::StatusOr<std::vector<uint8_t>> data = ReadRawFile(path, 4);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, (std::vector<uint8_t>{1, 2, 3, 4}));

  absl::StatusOr<std::vector<uint8_t>> wrong = ReadRawFile(path, 6);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(wrong.status().message(), path));
  EXPECT_TRUE(Contains(wrong.status().message(), "file is 4 bytes, expected 6 bytes"));

  const std::string empty = TestPath("empty.bin");
  WriteBytes(empty, "");
  absl::StatusOr<std::vector<uint8_t>> none = ReadRawFile(empty, 0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(ReadRawFile(TestPath("missing.bin"), 0).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace nvfp4::io
