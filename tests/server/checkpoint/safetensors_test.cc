// Tests for server/checkpoint/safetensors.h: the strict reader (ParseSafetensors,
// MappedSafetensors) against hand-built byte fixtures, one per check of the reference reader,
// and the streaming, crash-safe writer (SafetensorsWriter, WriteSafetensors).
#include "server/checkpoint/safetensors.h"

#include "server/checkpoint/content_hash.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tests/testing/files.h"

namespace nvfp4::checkpoint {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

// The name ParseSafetensors is given for in-memory fixtures; every message must start with it.
constexpr char kFile[] = "fixture.safetensors";

// ---------------------------------------------------------------------------------------------
// Helpers.

// A fresh, empty directory in the test temp dir that is unique to the running test.
std::string TestDir() {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir =
      std::filesystem::path(testing::TempDir()) /
      absl::StrCat("ckpt_st_", info->test_suite_name(), "_", info->name(), "_", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

using testing_files::ReadBytes;
using testing_files::WriteBytes;

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

// The 8-byte little-endian encoding of `n`.
std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// A file image: 8-byte little-endian header length + `header` (not padded) + `data`.
std::string Fixture(absl::string_view header, absl::string_view data) {
  return absl::StrCat(LengthPrefix(header.size()), header, data);
}

// One header entry: "name":{"dtype":..,"shape":[shape],"data_offsets":[begin,end]}.
std::string Entry(absl::string_view name, absl::string_view dtype, absl::string_view shape,
                  uint64_t begin, uint64_t end) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":[", shape,
                      "],\"data_offsets\":[", begin, ",", end, "]}");
}

// A header object from entries.
std::string Header(std::initializer_list<std::string> entries) {
  std::string out = "{";
  bool first = true;
  for (const std::string& entry : entries) {
    if (!first) out += ",";
    out += entry;
    first = false;
  }
  return out + "}";
}

absl::StatusOr<SafetensorsHeader> Parse(const std::string& bytes) {
  return ParseSafetensors(kFile, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// Expects ParseSafetensors to reject `bytes` with InvalidArgument "<kFile>: ..." containing
// every one of `needles`.
void ExpectRejected(const std::string& bytes, std::initializer_list<std::string_view> needles) {
  absl::StatusOr<SafetensorsHeader> header = Parse(bytes);
  ASSERT_FALSE(header.ok()) << "accepted a malformed file";
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument) << header.status();
  const std::string message(header.status().message());
  EXPECT_THAT(message, StartsWith(absl::StrCat(kFile, ": ")));
  for (const std::string_view needle : needles) EXPECT_THAT(message, HasSubstr(needle));
}

// Expects ParseSafetensors to accept `bytes`, returning the header.
SafetensorsHeader ExpectAccepted(const std::string& bytes) {
  absl::StatusOr<SafetensorsHeader> header = Parse(bytes);
  EXPECT_TRUE(header.ok()) << header.status();
  return header.ok() ? *std::move(header) : SafetensorsHeader();
}

template <typename T>
std::string AsBytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::string TensorBytes(const MappedSafetensors& file, const SafetensorsTensorInfo& tensor) {
  return std::string(reinterpret_cast<const char*>(file.data(tensor)), tensor.bytes());
}

std::string TmpPath(const std::string& path) {
  return absl::StrCat(path, ".tmp.", static_cast<long>(::getpid()));
}

// ---------------------------------------------------------------------------------------------
// dtypes.

TEST(SafetensorsDTypeTest, Bits) {
  EXPECT_EQ(SafetensorsDTypeBits("F4"), 4);
  EXPECT_EQ(SafetensorsDTypeBits("F6_E2M3"), 6);
  EXPECT_EQ(SafetensorsDTypeBits("F6_E3M2"), 6);
  EXPECT_EQ(SafetensorsDTypeBits("BOOL"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("U8"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("I8"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("F8_E4M3"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("F8_E5M2"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("F8_E8M0"), 8);
  EXPECT_EQ(SafetensorsDTypeBits("BF16"), 16);
  EXPECT_EQ(SafetensorsDTypeBits("F16"), 16);
  EXPECT_EQ(SafetensorsDTypeBits("I16"), 16);
  EXPECT_EQ(SafetensorsDTypeBits("U16"), 16);
  EXPECT_EQ(SafetensorsDTypeBits("F32"), 32);
  EXPECT_EQ(SafetensorsDTypeBits("I32"), 32);
  EXPECT_EQ(SafetensorsDTypeBits("U32"), 32);
  EXPECT_EQ(SafetensorsDTypeBits("F64"), 64);
  EXPECT_EQ(SafetensorsDTypeBits("I64"), 64);
  EXPECT_EQ(SafetensorsDTypeBits("U64"), 64);
  EXPECT_EQ(SafetensorsDTypeBits("C64"), 64);
  EXPECT_EQ(SafetensorsDTypeBits("f32"), std::nullopt);
  EXPECT_EQ(SafetensorsDTypeBits("F8"), std::nullopt);
  EXPECT_EQ(SafetensorsDTypeBits(""), std::nullopt);
  EXPECT_EQ(SafetensorsDTypeBits("F32 "), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Reader: accepted files.

TEST(SafetensorsReaderTest, AcceptsHandBuiltFileAndSortsByOffset) {
  // Tensors listed out of offset order; the reader sorts them by offset.
  const std::string text = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"\\u00e9\"}," +
                           Entry("b", "U8", "2", 4, 6) + "," + Entry("a", "F16", "2", 0, 4) + "}";
  const SafetensorsHeader header = ExpectAccepted(Fixture(text, "ABCDEF"));
  EXPECT_EQ(header.header_size, text.size());
  EXPECT_EQ(header.data_start, 8u + header.header_size);
  ASSERT_EQ(header.tensors.size(), 2u);
  EXPECT_EQ(header.tensors[0].name, "a");
  EXPECT_EQ(header.tensors[0].dtype, "F16");
  EXPECT_EQ(header.tensors[0].shape, std::vector<int64_t>({2}));
  EXPECT_EQ(header.tensors[0].begin, 0u);
  EXPECT_EQ(header.tensors[0].end, 4u);
  EXPECT_EQ(header.tensors[1].name, "b");
  EXPECT_EQ(header.tensors[1].begin, 4u);
  EXPECT_EQ(header.tensors[1].bytes(), 2u);
  EXPECT_EQ(header.Find("a"), &header.tensors[0]);
  EXPECT_EQ(header.Find("b"), &header.tensors[1]);
  EXPECT_EQ(header.Find("c"), nullptr);
  EXPECT_EQ(header.Find("__metadata__"), nullptr);
  EXPECT_EQ(header.metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "\xc3\xa9"}}));
}

TEST(SafetensorsReaderTest, AcceptsEmptyHeader) {
  const SafetensorsHeader header = ExpectAccepted(Fixture("{}", ""));
  EXPECT_TRUE(header.tensors.empty());
  EXPECT_TRUE(header.metadata.empty());
  EXPECT_EQ(header.data_start, 10u);
}

TEST(SafetensorsReaderTest, AcceptsZeroElementTensor) {
  const SafetensorsHeader header =
      ExpectAccepted(Fixture(Header({Entry("z", "F32", "0", 0, 0)}), ""));
  ASSERT_EQ(header.tensors.size(), 1u);
  EXPECT_EQ(header.tensors[0].shape, std::vector<int64_t>({0}));
  EXPECT_EQ(header.tensors[0].bytes(), 0u);
  EXPECT_EQ(header.tensors[0].elements(), 0);

  // Zero-byte tensors before, between and after real ones.
  const SafetensorsHeader mixed =
      ExpectAccepted(Fixture(Header({Entry("z0", "F32", "0", 0, 0), Entry("a", "U8", "2", 0, 2),
                                     Entry("z1", "BF16", "4,0", 2, 2), Entry("b", "U8", "1", 2, 3),
                                     Entry("z2", "U8", "0,3", 3, 3)}),
                             "abc"));
  ASSERT_EQ(mixed.tensors.size(), 5u);
  EXPECT_EQ(mixed.Find("b")->begin, 2u);
  EXPECT_EQ(mixed.Find("z2")->begin, 3u);
}

TEST(SafetensorsReaderTest, AcceptsScalarTensor) {
  const SafetensorsHeader header =
      ExpectAccepted(Fixture(Header({Entry("s", "F32", "", 0, 4)}), "abcd"));
  ASSERT_EQ(header.tensors.size(), 1u);
  EXPECT_TRUE(header.tensors[0].shape.empty());
  EXPECT_EQ(header.tensors[0].elements(), 1);
  EXPECT_EQ(header.tensors[0].bytes(), 4u);
}

TEST(SafetensorsReaderTest, AcceptsWhitespacePaddedHeader) {
  const std::string entry = Entry("t", "U8", "2", 0, 2);
  ExpectAccepted(Fixture("{" + entry + "}      ", "ab"));     // writer-style padding
  ExpectAccepted(Fixture("  \n\t{" + entry + "}", "ab"));     // leading whitespace
  ExpectAccepted(Fixture(" { " + entry + " } \r\n ", "ab"));  // both
  const SafetensorsHeader header = ExpectAccepted(Fixture("{" + entry + "}  ", "ab"));
  EXPECT_EQ(header.data_start, 8u + 2u + entry.size() + 2u);
}

TEST(SafetensorsReaderTest, AcceptsF4WithEvenElementCount) {
  const SafetensorsHeader header =
      ExpectAccepted(Fixture(Header({Entry("w", "F4", "2,3", 0, 3)}), "abc"));
  ASSERT_EQ(header.tensors.size(), 1u);
  EXPECT_EQ(header.tensors[0].elements(), 6);
  EXPECT_EQ(header.tensors[0].bytes(), 3u);
  // Sub-byte F6 types work the same way: 4 x 6 bits = 3 bytes.
  ExpectAccepted(Fixture(Header({Entry("w", "F6_E2M3", "4", 0, 3)}), "abc"));
}

// ---------------------------------------------------------------------------------------------
// Reader: one test per check of the reference reader.

// 1. The file must hold at least the 8-byte header length.
TEST(SafetensorsReaderTest, Check1RejectsFileShorterThan8Bytes) {
  ExpectRejected("", {"file is 0 bytes", "too small"});
  ExpectRejected("abc", {"file is 3 bytes", "too small"});
  ExpectRejected(std::string(7, '\0'), {"file is 7 bytes", "too small"});
}

// 2. The header length must not exceed 100,000,000 bytes.
TEST(SafetensorsReaderTest, Check2RejectsHeaderLengthOverLimit) {
  ExpectRejected(LengthPrefix(100'000'001) + "{}",
                 {"header length 100000001 exceeds the limit of 100000000 bytes"});
  // A length that would overflow 8 + N.
  ExpectRejected(LengthPrefix(~uint64_t{0}) + "{}", {"exceeds the limit"});
  // Exactly the limit passes check 2 (and then fails check 3 for this short file).
  ExpectRejected(LengthPrefix(100'000'000) + "{}", {"header length 100000000 runs past the end"});
}

// 3. 8 + N must not exceed the file size.
TEST(SafetensorsReaderTest, Check3RejectsHeaderPastEndOfFile) {
  ExpectRejected(LengthPrefix(3) + "{}", {"header length 3 runs past the end of the 10-byte file"});
  ExpectRejected(LengthPrefix(1), {"header length 1 runs past the end of the 8-byte file"});
  // 8 + N == size is fine.
  ExpectAccepted(LengthPrefix(2) + "{}");
}

// 4. The header must be valid UTF-8.
TEST(SafetensorsReaderTest, Check4RejectsHeaderNotUtf8) {
  const std::string data = "ab";
  // Invalid byte in a tensor name.
  ExpectRejected(Fixture(Header({Entry("t\xff", "U8", "2", 0, 2)}), data),
                 {"header is not valid UTF-8"});
  // Overlong encoding of '/', a UTF-16 surrogate, a truncated sequence, > U+10FFFF.
  for (const std::string& bad : {std::string("\xc0\xaf"), std::string("\xed\xa0\x80"),
                                 std::string("\xe2\x82"), std::string("\xf4\x90\x80\x80")}) {
    SCOPED_TRACE(bad);
    ExpectRejected(
        Fixture("{\"__metadata__\":{\"k\":\"" + bad + "\"}," + Entry("t", "U8", "2", 0, 2) + "}",
                data),
        {"header is not valid UTF-8"});
  }
  // Valid multi-byte UTF-8 in a tensor name is fine.
  const SafetensorsHeader header = ExpectAccepted(
      Fixture(Header({Entry("t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "U8", "2", 0, 2)}), data));
  EXPECT_NE(header.Find("t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), nullptr);
}

// 5a. The header must be JSON.
TEST(SafetensorsReaderTest, Check5RejectsHeaderNotJson) {
  ExpectRejected(Fixture("{\"t\":", ""), {"header is not valid JSON"});
  ExpectRejected(Fixture("", ""), {"header is not valid JSON"});
  ExpectRejected(Fixture("{} x", ""), {"header is not valid JSON"});
  ExpectRejected(Fixture("{}{}", ""), {"header is not valid JSON"});
  ExpectRejected(Fixture("{}/* comment */", ""), {"header is not valid JSON"});
  ExpectRejected(Fixture("{}\f", ""), {"header is not valid JSON"});  // not JSON whitespace
  ExpectRejected(Fixture(std::string("\0", 1), ""), {"NUL"});
}

// nlohmann::json's lexer treats a NUL byte as the end of input: without an explicit check a
// header like `{}\0xyz{"t":1}` would pass with its tail unchecked; the reference reader
// (serde_json) rejects it with "trailing characters".
TEST(SafetensorsReaderTest, Check5RejectsNulAfterJson) {
  ExpectRejected(Fixture(std::string("{}\0", 3), ""), {"header"});
  ExpectRejected(Fixture(std::string("{}\0\0\0\0\0\0", 8), ""), {"header"});
  ExpectRejected(Fixture(std::string("{}\0xyz{\"t\":1}", 13), ""), {"header"});
}

// nlohmann::json skips a leading UTF-8 byte order mark (EF BB BF); the reference reader
// (serde_json) rejects it ("expected value"): a BOM is not JSON whitespace.
TEST(SafetensorsReaderTest, Check5RejectsByteOrderMark) {
  ExpectRejected(Fixture("\xEF\xBB\xBF{}", ""), {"header"});
  ExpectRejected(Fixture("\xEF\xBB\xBF" + Header({Entry("t", "U8", "2", 0, 2)}), "ab"), {"header"});
}

// 5b. The header must be a JSON object, with object entries.
TEST(SafetensorsReaderTest, Check5RejectsHeaderNotObject) {
  ExpectRejected(Fixture("[1, 2]", ""), {"header must be a JSON object"});
  ExpectRejected(Fixture("\"text\"", ""), {"header must be a JSON object"});
  ExpectRejected(Fixture("null", ""), {"header must be a JSON object"});
  ExpectRejected(Fixture("{\"t\":[1]}", ""), {"tensor 't': header entry must be a JSON object"});
  ExpectRejected(Fixture("{\"__metadata__\":[]}", ""), {"'__metadata__' must be a JSON object"});
}

// 5c. Entries must have a known dtype and well-formed shape and data_offsets.
TEST(SafetensorsReaderTest, Check5RejectsUnknownDType) {
  ExpectRejected(Fixture(Header({Entry("t", "X9", "2", 0, 2)}), "ab"),
                 {"tensor 't': unknown dtype 'X9'"});
  ExpectRejected(Fixture(Header({Entry("t", "u8", "2", 0, 2)}), "ab"),
                 {"tensor 't': unknown dtype 'u8'"});
  ExpectRejected(Fixture("{\"t\":{\"dtype\":8,\"shape\":[2],\"data_offsets\":[0,2]}}", "ab"),
                 {"tensor 't': missing string 'dtype'"});
}

TEST(SafetensorsReaderTest, Check5RejectsMalformedEntry) {
  ExpectRejected(Fixture("{\"t\":{\"dtype\":\"U8\",\"data_offsets\":[0,2]}}", "ab"),
                 {"tensor 't': missing array 'shape'"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "-2", 0, 2)}), "ab"),
                 {"tensor 't': 'shape' must contain non-negative integers"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2.0", 0, 2)}), "ab"),
                 {"tensor 't': 'shape' must contain non-negative integers"});
  ExpectRejected(Fixture("{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1,2]}}", "ab"),
                 {"tensor 't': 'data_offsets' must be [begin, end]"});
  ExpectRejected(Fixture("{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-1,1]}}", "ab"),
                 {"tensor 't': 'data_offsets' must be [begin, end]"});
  ExpectRejected(Fixture("{\"t\":{\"dtype\":\"U8\",\"shape\":[2]}}", "ab"),
                 {"tensor 't': 'data_offsets' must be [begin, end]"});
  ExpectRejected(
      Fixture("{\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":1}}", "ab"),
      {"tensor 't': unexpected key 'x'"});
}

// 5d. "__metadata__" must map strings to strings.
TEST(SafetensorsReaderTest, Check5RejectsMetadataValueNotString) {
  ExpectRejected(Fixture("{\"__metadata__\":{\"k\":1}}", ""),
                 {"'__metadata__' value for 'k' must be a string"});
  ExpectRejected(Fixture("{\"__metadata__\":{\"ok\":\"v\",\"k\":{\"a\":\"b\"}}}", ""),
                 {"'__metadata__' value for 'k' must be a string"});
  ExpectRejected(Fixture("{\"__metadata__\":{\"k\":null}}", ""),
                 {"'__metadata__' value for 'k' must be a string"});
}

// 6a. Sorted by offset, tensors must be contiguous: no gap.
TEST(SafetensorsReaderTest, Check6RejectsGap) {
  ExpectRejected(
      Fixture(Header({Entry("a", "U8", "2", 0, 2), Entry("b", "U8", "2", 3, 5)}), "abcde"),
      {"tensor 'b'", "data_offsets [3, 5] do not continue the previous tensor, which ends at 2"});
  // Control: without the gap the file is fine.
  ExpectAccepted(
      Fixture(Header({Entry("a", "U8", "2", 0, 2), Entry("b", "U8", "2", 2, 4)}), "abcd"));
}

// 6b. No overlap.
TEST(SafetensorsReaderTest, Check6RejectsOverlap) {
  ExpectRejected(
      Fixture(Header({Entry("a", "U8", "4", 0, 4), Entry("b", "U8", "4", 2, 6)}), "abcdef"),
      {"tensor 'b'", "data_offsets [2, 6] do not continue the previous tensor, which ends at 4"});
  // One tensor nested inside another.
  ExpectRejected(Fixture(Header({Entry("outer", "U8", "8", 0, 8), Entry("inner", "U8", "2", 2, 4)}),
                         "abcdefgh"),
                 {"tensor 'inner'", "do not continue the previous tensor, which ends at 8"});
  // Reversed offsets [2, 1] after a tensor ending at 2.
  ExpectRejected(Fixture(Header({Entry("a", "U8", "2", 0, 2), Entry("b", "U8", "1", 2, 1)}), "ab"),
                 {"tensor 'b'", "data_offsets [2, 1] do not continue"});
}

// 6c. The first tensor starts at data offset 0.
TEST(SafetensorsReaderTest, Check6RejectsFirstTensorNotAtZero) {
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2", 1, 3)}), "abc"),
                 {"tensor 't'",
                  "data_offsets [1, 3] do not continue the previous tensor, which "
                  "ends at 0"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2", 2, 0)}), "ab"),
                 {"tensor 't'", "data_offsets [2, 0] do not continue"});
}

// 6d. The "JSON attack": many tensors claiming the same bytes.
TEST(SafetensorsReaderTest, Check6RejectsJsonAttack) {
  std::string entries;
  std::string honest;
  for (int i = 0; i < 10; ++i) {
    if (i > 0) {
      entries += ",";
      honest += ",";
    }
    entries += Entry(absl::StrCat("t", i), "U8", "16", 0, 16);
    honest += Entry(absl::StrCat("t", i), "U8", "16", 16 * i, 16 * i + 16);
  }
  ExpectRejected(Fixture("{" + entries + "}", std::string(16, 'x')),
                 {"tensor 't",
                  "data_offsets [0, 16] do not continue the previous tensor, which "
                  "ends at 16"});
  ExpectRejected(Fixture("{" + entries + "}", std::string(160, 'x')),
                 {"tensor 't", "do not continue"});
  // Control: the same ten tensors laid out one after another are fine.
  EXPECT_EQ(ExpectAccepted(Fixture("{" + honest + "}", std::string(160, 'x'))).tensors.size(), 10u);
}

// 7. Element and bit counts must not overflow 64 bits.
TEST(SafetensorsReaderTest, Check7RejectsCountOverflow) {
  // 2^32 * 2^32 elements.
  ExpectRejected(Fixture(Header({Entry("t", "U8", "4294967296,4294967296", 0, 0)}), ""),
                 {"tensor 't'", "shape [4294967296, 4294967296] overflows the element count"});
  // 2^62 F4 elements = 2^64 bits.
  ExpectRejected(Fixture(Header({Entry("t", "F4", "4611686018427387904", 0, 0)}), ""),
                 {"tensor 't'", "shape [4611686018427387904] overflows the bit count"});
  // 2^62 F32 elements; also an overflow that would wrap to a small value (2^61 x U8 = 2^64 bits
  // wraps to 0, matching offsets [0, 0]).
  ExpectRejected(Fixture(Header({Entry("t", "F32", "4611686018427387904", 0, 0)}), ""),
                 {"tensor 't'", "overflows the bit count"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2305843009213693952", 0, 0)}), ""),
                 {"tensor 't'", "overflows the bit count"});
  // Dimensions at or above 2^63 are rejected outright.
  ExpectRejected(Fixture(Header({Entry("t", "U8", "9223372036854775808", 0, 0)}), ""),
                 {"tensor 't'", "non-negative integers below 2^63"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "18446744073709551616", 0, 0)}), ""),
                 {"tensor 't'", "non-negative integers below 2^63"});
}

// 8. The bit count must be a multiple of 8.
TEST(SafetensorsReaderTest, Check8RejectsPartialByte) {
  ExpectRejected(Fixture(Header({Entry("w", "F4", "3", 0, 2)}), "ab"),
                 {"tensor 'w'", "F4 shape [3] is 12 bits, not a whole number of bytes"});
  ExpectRejected(Fixture(Header({Entry("w", "F4", "1", 0, 1)}), "a"),
                 {"tensor 'w'", "F4 shape [1] is 4 bits"});
  ExpectRejected(Fixture(Header({Entry("w", "F6_E3M2", "2", 0, 2)}), "ab"),
                 {"tensor 'w'", "F6_E3M2 shape [2] is 12 bits"});
}

// 9. end - begin must equal the byte size of dtype x shape.
TEST(SafetensorsReaderTest, Check9RejectsWrongByteSize) {
  ExpectRejected(Fixture(Header({Entry("t", "F32", "2", 0, 4)}), "abcd"),
                 {"tensor 't'", "data_offsets [0, 4] span 4 bytes but F32 [2] needs 8"});
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2", 0, 3)}), "abc"),
                 {"tensor 't'", "data_offsets [0, 3] span 3 bytes but U8 [2] needs 2"});
  ExpectRejected(
      Fixture(Header({Entry("a", "U8", "2", 0, 2), Entry("b", "F4", "2,2", 2, 5)}), "abcde"),
      {"tensor 'b'", "span 3 bytes but F4 [2, 2] needs 2"});
}

// 10a. No bytes may follow the last tensor.
TEST(SafetensorsReaderTest, Check10RejectsTrailingBytes) {
  ExpectRejected(Fixture(Header({Entry("t", "U8", "2", 0, 2)}), "abc"),
                 {"the tensors cover 2 data bytes but the file has 3 after the header"});
  ExpectRejected(Fixture("{}", "x"), {"the tensors cover 0 data bytes but the file has 1"});
}

// 10b. No bytes may be missing (file shorter than the header claims).
TEST(SafetensorsReaderTest, Check10RejectsMissingBytes) {
  const std::string header = Header({Entry("a", "U8", "2", 0, 2), Entry("b", "F32", "2", 2, 10)});
  ExpectRejected(Fixture(header, "abcdefghi"),
                 {"the tensors cover 10 data bytes but the file has 9 after the header",
                  absl::StrCat("expected ", 8 + header.size() + 10)});
  ExpectRejected(Fixture(header, ""), {"the tensors cover 10 data bytes but the file has 0"});
  ExpectAccepted(Fixture(header, "abcdefghij"));
}

TEST(SafetensorsReaderTest, RejectsDuplicateTensorNames) {
  const std::string entry = Entry("t", "U8", "2", 0, 2);
  ExpectRejected(Fixture("{" + entry + "," + entry + "}", "ab"), {"duplicate key 't'"});
  ExpectRejected(Fixture("{" + entry + "," + Entry("t", "U8", "2", 2, 4) + "}", "abcd"),
                 {"duplicate key 't'"});
  // Duplicates inside an entry or in __metadata__ are rejected too.
  ExpectRejected(
      Fixture("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
              "ab"),
      {"duplicate key 'dtype'"});
  ExpectRejected(Fixture("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", ""),
                 {"duplicate key 'k'"});
  ExpectRejected(Fixture("{\"__metadata__\":{},\"__metadata__\":{}}", ""),
                 {"duplicate key '__metadata__'"});
}

// ---------------------------------------------------------------------------------------------
// MappedSafetensors.

TEST(MappedSafetensorsTest, OpenMissingFileIsNotFound) {
  const std::string path = TestDir() + "/missing.safetensors";
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST(MappedSafetensorsTest, OpenDirectoryIsInvalidArgument) {
  const std::string dir = TestDir();
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(dir);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(dir));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("not a regular file"));
}

TEST(MappedSafetensorsTest, OpenEmptyFileIsInvalidArgument) {
  const std::string path = TestDir() + "/empty.safetensors";
  WriteBytes(path, "");
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("too small"));
}

TEST(MappedSafetensorsTest, OpenMalformedFileNamesPathAndTensor) {
  const std::string path = TestDir() + "/bad.safetensors";
  WriteBytes(path, Fixture(Header({Entry("w", "F32", "2", 0, 4)}), "abcd"));
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("tensor 'w'"));
}

TEST(MappedSafetensorsTest, MapsHandBuiltFileAndMoves) {
  const std::string path = TestDir() + "/hand.safetensors";
  const std::string bytes =
      Fixture(Header({Entry("b", "U8", "2", 4, 6), Entry("a", "F16", "2", 0, 4)}), "ABCDEF");
  WriteBytes(path, bytes);
  absl::StatusOr<MappedSafetensors> opened = MappedSafetensors::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->path(), path);
  EXPECT_EQ(opened->file_size(), bytes.size());

  MappedSafetensors file = *std::move(opened);  // move construction
  ASSERT_EQ(file.header().tensors.size(), 2u);
  EXPECT_EQ(TensorBytes(file, *file.header().Find("a")), "ABCD");
  EXPECT_EQ(TensorBytes(file, *file.header().Find("b")), "EF");

  absl::StatusOr<MappedSafetensors> other = MappedSafetensors::Open(path);
  ASSERT_TRUE(other.ok()) << other.status();
  *other = std::move(file);  // move assignment unmaps the old mapping, keeps the moved one
  EXPECT_EQ(other->path(), path);
  EXPECT_EQ(TensorBytes(*other, *other->header().Find("b")), "EF");
}

// ---------------------------------------------------------------------------------------------
// Writer.

TEST(SafetensorsWriterTest, RoundTrip) {
  const std::string dir = TestDir();
  const std::string path = dir + "/model.safetensors";
  const std::vector<uint8_t> packed = {0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC};
  const std::vector<uint8_t> scales = {0x38, 0x40, 0x44};
  const std::vector<float> global = {448.0f * 6.0f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC000, 0x0000, 0x7F80, 0x3F00};
  const std::vector<std::string> payloads = {AsBytes(packed), AsBytes(scales), AsBytes(global),
                                             AsBytes(bf16), ""};
  const std::vector<SafetensorsBlob> blobs = {
      {{"layer.weight", "F4", {3, 4}}, packed.data(), packed.size()},
      {{"layer.weight_scale", "F8_E4M3", {3, 1}}, scales.data(), scales.size()},
      {{"layer.weight_scale_2", "F32", {}}, global.data(), 4},
      {{"layer.bias", "BF16", {5}}, bf16.data(), 10},
      {{"empty", "F16", {0, 4}}, nullptr, 0},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"quant_method", "nvfp4 \"v1\""}};
  const absl::Status status = WriteSafetensors(path, blobs, metadata);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"model.safetensors"});

  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsHeader& header = file->header();
  EXPECT_EQ(header.data_start, 8 + header.header_size);
  EXPECT_EQ(header.data_start % 8, 0u);
  EXPECT_EQ(header.metadata, metadata);
  EXPECT_EQ(file->file_size(), header.data_start + 6u + 3u + 4u + 10u);
  EXPECT_EQ(ReadBytes(path).size(), file->file_size());

  ASSERT_EQ(header.tensors.size(), blobs.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < blobs.size(); ++i) {
    SCOPED_TRACE(blobs[i].entry.name);
    const SafetensorsTensorInfo& tensor = header.tensors[i];
    EXPECT_EQ(tensor.name, blobs[i].entry.name);
    EXPECT_EQ(tensor.dtype, blobs[i].entry.dtype);
    EXPECT_EQ(tensor.shape, blobs[i].entry.shape);
    EXPECT_EQ(tensor.begin, offset);
    EXPECT_EQ(tensor.end, offset + blobs[i].size);
    EXPECT_EQ(TensorBytes(*file, tensor), payloads[i]);
    EXPECT_EQ(header.Find(blobs[i].entry.name), &tensor);
    offset = tensor.end;
  }
  EXPECT_EQ(header.Find("missing"), nullptr);

  // The header is JSON padded with spaces, with __metadata__ first and tensors in write order.
  const std::string bytes = ReadBytes(path);
  const std::string text = bytes.substr(8, header.header_size);
  EXPECT_THAT(text, StartsWith("{\"__metadata__\":{\"format\":\"pt\","));
  EXPECT_THAT(text, HasSubstr("\"layer.weight\":{\"dtype\":\"F4\",\"shape\":[3,4],"
                              "\"data_offsets\":[0,6]}"));
  EXPECT_THAT(text, HasSubstr("\"layer.weight_scale_2\":{\"dtype\":\"F32\",\"shape\":[],"
                              "\"data_offsets\":[9,13]}"));
  EXPECT_EQ(text.find_first_not_of(' ', text.find_last_of('}') + 1), std::string::npos);
}

TEST(SafetensorsWriterTest, DataSectionIsEightByteAligned) {
  const std::string dir = TestDir();
  const std::vector<uint8_t> value = {7};
  // Names of every length mod 8 give every header length mod 8 before padding.
  for (int length = 1; length <= 16; ++length) {
    const std::string name(static_cast<size_t>(length), 'n');
    SCOPED_TRACE(name);
    const std::string path = absl::StrCat(dir, "/aligned", length, ".safetensors");
    ASSERT_TRUE(WriteSafetensors(path, {{{name, "U8", {1}}, value.data(), 1}}, {}).ok());
    absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ(file->header().data_start % 8, 0u);
    EXPECT_EQ(file->header().header_size % 8, 0u);
    ASSERT_EQ(file->header().tensors.size(), 1u);
    const uint8_t* data = file->data(file->header().tensors[0]);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(data) % 8, 0u);
    EXPECT_EQ(*data, 7);
  }
}

TEST(SafetensorsWriterTest, StreamsBytesAcrossTensors) {
  const std::string dir = TestDir();
  const std::string path = dir + "/stream.safetensors";
  const std::vector<SafetensorsEntry> entries = {
      {"a", "U8", {3}},       {"b", "F32", {2, 2}}, {"c", "F4", {2, 1}},
      {"d", "BF16", {40000}},  // 80000 bytes: larger than the writer's coalescing buffer
      {"e", "F8_E4M3", {5}},
  };
  std::string data(3 + 16 + 1 + 80000 + 5, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + 7) & 0xFF);

  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, entries, {{"k", "v"}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->entry_bytes(), (std::vector<uint64_t>{3, 16, 1, 80000, 5}));
  // Chunks that start and end mid-tensor, a zero-byte write and one large write.
  size_t pos = 0;
  for (const size_t chunk : {size_t{1}, size_t{5}, size_t{0}, size_t{13}, size_t{80002}}) {
    ASSERT_TRUE((*writer)->Write(data.data() + pos, chunk).ok());
    pos += chunk;
  }
  ASSERT_TRUE((*writer)->Write(data.data() + pos, data.size() - pos).ok());
  EXPECT_FALSE(std::filesystem::exists(path));  // nothing at the path before Commit
  const absl::Status commit = (*writer)->Commit();
  ASSERT_TRUE(commit.ok()) << commit;
  // The hash taken while writing (small coalesced writes and large direct ones) is the file's.
  const std::string streamed_hash = (*writer)->content_hash();
  writer->reset();
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"stream.safetensors"});
  absl::StatusOr<std::string> file_hash = HashFile(path);
  ASSERT_TRUE(file_hash.ok()) << file_hash.status();
  EXPECT_EQ(streamed_hash, *file_hash);
  EXPECT_EQ(streamed_hash.size(), 32u);

  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->header().metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  ASSERT_EQ(file->header().tensors.size(), entries.size());
  EXPECT_EQ(file->file_size(), file->header().data_start + data.size());
  const std::string all(reinterpret_cast<const char*>(file->data(file->header().tensors[0])),
                        data.size());
  EXPECT_EQ(all, data);
  EXPECT_EQ(TensorBytes(*file, *file->header().Find("e")), data.substr(data.size() - 5));
}

TEST(SafetensorsWriterTest, WritePastLayoutFails) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, {{"a", "U8", {2}}, {"b", "U8", {2}}}, {});
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::string bytes = "abcde";
  absl::Status status = (*writer)->Write(bytes.data(), 5);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  EXPECT_THAT(std::string(status.message()), HasSubstr("5 data bytes written, the layout holds 4"));
  // A rejected write consumes nothing: the exact remainder still fits, one more byte does not.
  ASSERT_TRUE((*writer)->Write(bytes.data(), 3).ok());
  status = (*writer)->Write(bytes.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  ASSERT_TRUE((*writer)->Write(bytes.data() + 3, 1).ok());
  status = (*writer)->Write(bytes.data(), 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  status = (*writer)->Commit();
  ASSERT_TRUE(status.ok()) << status;

  // A committed writer is closed.
  status = (*writer)->Write(bytes.data(), 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  status = (*writer)->Commit();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  writer->reset();

  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(TensorBytes(*file, *file->header().Find("a")), "ab");
  EXPECT_EQ(TensorBytes(*file, *file->header().Find("b")), "cd");
}

TEST(SafetensorsWriterTest, CommitWithMissingBytesFailsAndLeavesNoFile) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, {{"a", "F32", {1}}}, {});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("x", 1).ok());
  const absl::Status status = (*writer)->Commit();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  EXPECT_THAT(std::string(status.message()), HasSubstr("only 1 of 4 data bytes were written"));
  EXPECT_FALSE(std::filesystem::exists(path));
  writer->reset();
  EXPECT_THAT(ListDir(dir), IsEmpty());
}

TEST(SafetensorsWriterTest, AbandonedWriterLeavesNoFile) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  {
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create(path, {{"a", "U8", {4}}}, {});
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("abcd", 4).ok());
    // While writing, only the temporary file exists.
    EXPECT_THAT(ListDir(dir), UnorderedElementsAre(TmpPath("out.safetensors")));
  }
  EXPECT_THAT(ListDir(dir), IsEmpty());
}

TEST(SafetensorsWriterTest, AbandonedWriterKeepsExistingFile) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  const std::vector<float> old_values = {1, 2};
  ASSERT_TRUE(WriteSafetensors(path, {{{"old", "F32", {2}}, old_values.data(), 8}}, {}).ok());
  const std::string old_bytes = ReadBytes(path);
  {
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create(path, {{"new", "U8", {4}}}, {});
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("ab", 2).ok());
    EXPECT_FALSE((*writer)->Commit().ok());
    EXPECT_EQ(ReadBytes(path), old_bytes);
  }
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"out.safetensors"});
  EXPECT_EQ(ReadBytes(path), old_bytes);
}

TEST(SafetensorsWriterTest, OverwriteLeavesOnlyTheNewFile) {
  const std::string dir = TestDir();
  const std::string path = dir + "/out.safetensors";
  const std::vector<float> a = {1, 2, 3, 4};
  ASSERT_TRUE(WriteSafetensors(path, {{{"a", "F32", {4}}, a.data(), 16}}, {{"k", "v"}}).ok());
  const std::vector<float> b = {5, 6};
  ASSERT_TRUE(WriteSafetensors(path, {{{"b", "F32", {1, 2}}, b.data(), 8}}, {}).ok());
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"out.safetensors"});

  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->header().tensors.size(), 1u);
  EXPECT_EQ(file->header().tensors[0].name, "b");
  EXPECT_TRUE(file->header().metadata.empty());
  EXPECT_EQ(TensorBytes(*file, file->header().tensors[0]), AsBytes(b));
  EXPECT_THAT(ReadBytes(path), Not(HasSubstr("__metadata__")));
}

TEST(SafetensorsWriterTest, EmptyFile) {
  const std::string path = TestDir() + "/empty.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {}, {}).ok());
  EXPECT_EQ(ReadBytes(path), Fixture("{}      ", ""));
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->header().tensors.empty());
  EXPECT_EQ(file->header().data_start, 16u);
  EXPECT_EQ(file->file_size(), 16u);
}

TEST(SafetensorsWriterTest, ScalarAndZeroElementTensorsRoundTrip) {
  const std::string path = TestDir() + "/small.safetensors";
  const std::vector<float> scalar = {3.5f};
  ASSERT_TRUE(WriteSafetensors(path,
                               {{{"z", "F32", {0}}, nullptr, 0},
                                {{"s", "F32", {}}, scalar.data(), 4},
                                {{"z2", "U8", {3, 0}}, nullptr, 0}},
                               {})
                  .ok());
  absl::StatusOr<MappedSafetensors> file = MappedSafetensors::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsTensorInfo* z = file->header().Find("z");
  const SafetensorsTensorInfo* s = file->header().Find("s");
  const SafetensorsTensorInfo* z2 = file->header().Find("z2");
  ASSERT_NE(z, nullptr);
  ASSERT_NE(s, nullptr);
  ASSERT_NE(z2, nullptr);
  EXPECT_EQ(z->bytes(), 0u);
  EXPECT_EQ(z->elements(), 0);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(TensorBytes(*file, *s), AsBytes(scalar));
  EXPECT_EQ(z2->begin, 4u);
  EXPECT_EQ(z2->bytes(), 0u);
}

// Expects SafetensorsWriter::Create to fail with InvalidArgument naming the path and containing
// `expected`, creating nothing.
void ExpectCreateRejected(const std::vector<SafetensorsEntry>& entries,
                          const std::map<std::string, std::string>& metadata,
                          const std::string& expected) {
  SCOPED_TRACE(expected);
  const std::string dir = TestDir();
  const std::string path = dir + "/bad.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path, entries, metadata);
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kInvalidArgument) << writer.status();
  EXPECT_THAT(std::string(writer.status().message()), StartsWith(path + ": "));
  EXPECT_THAT(std::string(writer.status().message()), HasSubstr(expected));
  EXPECT_THAT(ListDir(dir), IsEmpty());
}

TEST(SafetensorsWriterTest, RejectsDuplicateEmptyAndReservedNames) {
  ExpectCreateRejected({{"x", "U8", {2}}, {"y", "U8", {1}}, {"x", "U8", {2}}}, {},
                       "tensor 'x': duplicate tensor name");
  ExpectCreateRejected({{"", "U8", {2}}}, {}, "tensor names must not be empty");
  ExpectCreateRejected({{"__metadata__", "U8", {2}}}, {},
                       "tensor '__metadata__': the name is reserved");
  ExpectCreateRejected({{"bad\xff", "U8", {2}}}, {}, "the name is not valid UTF-8");
  ExpectCreateRejected({}, {{"k", "\xc0\x80"}}, "metadata entry 'k' is not valid UTF-8");
}

TEST(SafetensorsWriterTest, RejectsBadDTypeAndShape) {
  ExpectCreateRejected({{"t", "X9", {2}}}, {}, "tensor 't': unknown dtype 'X9'");
  ExpectCreateRejected({{"t", "U8", {-2}}}, {}, "tensor 't': negative dimension in shape [-2]");
  ExpectCreateRejected({{"t", "F4", {3}}}, {}, "tensor 't': F4 shape [3] is 12 bits");
  ExpectCreateRejected({{"t", "U64", {int64_t{1} << 40, int64_t{1} << 40}}}, {},
                       "tensor 't': shape [1099511627776, 1099511627776] overflows");
  // Each tensor fits (2^60 bytes, 2^63 bits) but 16 of them do not.
  std::vector<SafetensorsEntry> huge;
  for (int i = 0; i < 16; ++i) huge.push_back({absl::StrCat("t", i), "U8", {int64_t{1} << 60}});
  ExpectCreateRejected(huge, {}, "tensor 't15': total size overflows 64 bits");
}

TEST(SafetensorsWriterTest, WriteSafetensorsRejectsWrongBlobSize) {
  const std::vector<float> values(6);
  for (const auto& [blob, expected] : std::vector<std::pair<SafetensorsBlob, std::string>>{
           {{{"w", "F32", {2, 3}}, values.data(), 20},
            "tensor 'w': F32 [2, 3] needs 24 bytes but 20 were given"},
           {{{"w", "BF16", {2, 3}}, values.data(), 24},
            "tensor 'w': BF16 [2, 3] needs 12 bytes but 24 were given"},
           {{{"w", "F4", {4}}, values.data(), 0}, "tensor 'w': F4 [4] needs 2 bytes but 0"},
           {{{"w", "U8", {2}}, nullptr, 2}, "tensor 'w': data is null"},
       }) {
    SCOPED_TRACE(expected);
    const std::string dir = TestDir();
    const std::string path = dir + "/bad.safetensors";
    const std::vector<float> ok = {1};
    const absl::Status status =
        WriteSafetensors(path, {{{"first", "F32", {1}}, ok.data(), 4}, blob}, {});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), StartsWith(path + ": "));
    EXPECT_THAT(std::string(status.message()), HasSubstr(expected));
    EXPECT_THAT(ListDir(dir), IsEmpty());
  }
}

TEST(SafetensorsWriterTest, WriteToMissingDirectoryFails) {
  const std::string path = TestDir() + "/missing/out.safetensors";
  const absl::Status status = WriteSafetensors(path, {}, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
}

}  // namespace
}  // namespace nvfp4::checkpoint
