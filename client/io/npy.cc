#include "client/io/npy.h"

#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace nvfp4::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
// Headers written by NumPy are a few hundred bytes; anything this large is corrupt or hostile.
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 20;
// NumPy pads magic + version + length + header to a multiple of this.
constexpr size_t kHeaderAlignment = 64;

std::string ShapeString(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

// Hand-written parser for the Python dict literal in a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// Only the value forms NumPy emits for plain arrays are understood: quoted strings without
// escapes, True/False and tuples of non-negative integers.
class HeaderParser {
 public:
  struct Fields {
    std::string descr;
    bool fortran_order = false;
    std::vector<int64_t> shape;
  };

  explicit HeaderParser(std::string_view text) : text_(text) {}

  // Returns the three fields or a message describing the problem (without the path).
  absl::StatusOr<Fields> Parse() {
    Fields fields;
    bool have_descr = false, have_fortran = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Error("expected '{'");
    SkipSpace();
    while (!Consume('}')) {
      ASSIGN_OR_RETURN(std::string key, ParseString());
      SkipSpace();
      if (!Consume(':')) return Error(absl::StrCat("expected ':' after key '", key, "'"));
      SkipSpace();
      if (key == "descr") {
        if (have_descr) return Error("duplicate key 'descr'");
        if (Peek() == '[') {
          return absl::InvalidArgumentError("structured (record) dtypes are not supported");
        }
        ASSIGN_OR_RETURN(fields.descr, ParseString());
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) return Error("duplicate key 'fortran_order'");
        ASSIGN_OR_RETURN(fields.fortran_order, ParseBool());
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) return Error("duplicate key 'shape'");
        ASSIGN_OR_RETURN(fields.shape, ParseTuple());
        have_shape = true;
      } else {
        return Error(absl::StrCat("unexpected key '", key, "'"));
      }
      SkipSpace();
      if (Consume(',')) {
        SkipSpace();
      } else if (Peek() != '}') {
        return Error("expected ',' or '}'");
      }
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after '}'");
    if (!have_descr) return Error("missing key 'descr'");
    if (!have_fortran) return Error("missing key 'fortran_order'");
    if (!have_shape) return Error("missing key 'shape'");
    return fields;
  }

 private:
  static bool IsSpace(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  }
  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < text_.size() && IsSpace(text_[pos_])) ++pos_;
  }
  bool Consume(char c) {
    if (pos_ >= text_.size() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed header at offset ", pos_, ": ", what));
  }

  absl::StatusOr<std::string> ParseString() {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return Error("expected a quoted string");
    ++pos_;
    const size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') return Error("escape sequences in strings are not supported");
      if (text_[pos_] == '\n') return Error("unterminated string");
      ++pos_;
    }
    if (pos_ >= text_.size()) return Error("unterminated string");
    std::string value(text_.substr(start, pos_ - start));
    ++pos_;  // closing quote
    return value;
  }

  absl::StatusOr<bool> ParseBool() {
    if (ConsumeWord("True")) return true;
    if (ConsumeWord("False")) return false;
    return Error("expected True or False");
  }

  absl::StatusOr<int64_t> ParseDimension() {
    if (Peek() == '-') return Error("negative dimension in shape");
    if (!IsDigit(Peek())) return Error("expected a non-negative integer in shape");
    int64_t value = 0;
    while (IsDigit(Peek())) {
      if (__builtin_mul_overflow(value, int64_t{10}, &value) ||
          __builtin_add_overflow(value, int64_t{text_[pos_] - '0'}, &value)) {
        return Error("dimension in shape does not fit in 64 bits");
      }
      ++pos_;
    }
    if (Peek() == 'L' || Peek() == 'l') ++pos_;  // Python 2 long literal, e.g. (5L,)
    return value;
  }

  absl::StatusOr<std::vector<int64_t>> ParseTuple() {
    if (!Consume('(')) return Error("shape must be a tuple");
    std::vector<int64_t> dims;
    bool trailing_comma = false;
    SkipSpace();
    while (!Consume(')')) {
      ASSIGN_OR_RETURN(const int64_t dim, ParseDimension());
      dims.push_back(dim);
      SkipSpace();
      trailing_comma = Consume(',');
      if (trailing_comma) {
        SkipSpace();
      } else if (Peek() != ')') {
        return Error("expected ',' or ')' in shape");
      }
    }
    // In Python "(5)" is the integer 5, not a tuple.
    if (dims.size() == 1 && !trailing_comma) return Error("shape must be a tuple, e.g. (5,)");
    return dims;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<size_t> NpyDescrItemSize(std::string_view descr_view) {
  // Abseil here is built with its own string_view type; adapt once for StrCat.
  const absl::string_view descr(descr_view.data(), descr_view.size());
  const std::string quoted = absl::StrCat("'", descr, "'");
  if (descr.size() >= 2 && descr[1] == 'O') {
    return absl::InvalidArgumentError("object arrays are not supported");
  }
  if (descr.size() < 3) return absl::InvalidArgumentError(absl::StrCat("bad descr ", quoted));
  const char order = descr[0];
  const char kind = descr[1];
  if (order != '<' && order != '>' && order != '|' && order != '=') {
    return absl::InvalidArgumentError(
        absl::StrCat("bad descr ", quoted, ": missing byte-order character"));
  }
  size_t size = 0;
  for (const char c : descr.substr(2)) {
    if (c < '0' || c > '9' || size > 1000) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported dtype ", quoted));
    }
    size = size * 10 + static_cast<size_t>(c - '0');
  }
  bool known = false;
  switch (kind) {
    case 'b':
      known = size == 1;
      break;
    case 'i':
    case 'u':
      known = size == 1 || size == 2 || size == 4 || size == 8;
      break;
    case 'f':
      known = size == 2 || size == 4 || size == 8;
      break;
    case 'c':
      known = size == 8 || size == 16;
      break;
    default:
      break;
  }
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported dtype ", quoted, " (supported: b1, i1-i8, u1-u8, f2, f4, f8, c8, c16)"));
  }
  if (size > 1 && order == '>') {
    return absl::InvalidArgumentError(absl::StrCat("big-endian arrays are not supported (descr ",
                                                   quoted, "); convert with arr.astype('<",
                                                   descr.substr(1), "')"));
  }
  if (size > 1 && order != '<') {
    return absl::InvalidArgumentError(absl::StrCat(
        "descr ", quoted, " has an ambiguous byte order; multi-byte dtypes must start with '<'"));
  }
  return size;
}

size_t NpyArray::element_size() const {
  absl::StatusOr<size_t> size = NpyDescrItemSize(descr);
  return size.ok() ? *size : 0;
}

int64_t NpyArray::element_count() const {
  const std::optional<uint64_t> count = internal::CheckedByteCount(shape, 1);
  if (!count.has_value() || *count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return -1;
  }
  return static_cast<int64_t>(*count);
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  ASSIGN_OR_RETURN(internal::ReadOnlyFile file, internal::ReadOnlyFile::Open(path));
  const uint64_t file_size = file.size();
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };

  // Fixed prefix: magic (6), major, minor, then a 2-byte (v1) or 4-byte (v2, v3) length.
  unsigned char prefix[12];
  if (file_size < 10) {
    return invalid(absl::StrCat("file is ", file_size, " bytes, too small to be a .npy file"));
  }
  RETURN_IF_ERROR(file.ReadAt(0, prefix, 10));
  if (std::memcmp(prefix, kMagic, kMagicSize) != 0) {
    return invalid("not a .npy file (bad magic; expected \\x93NUMPY)");
  }
  const int major = prefix[6];
  const int minor = prefix[7];
  uint64_t header_len = 0;
  uint64_t header_start = 0;
  if (major == 1 && minor == 0) {
    header_len = uint64_t{prefix[8]} | (uint64_t{prefix[9]} << 8);
    header_start = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (file_size < 12) return invalid("file ends inside the header length field");
    RETURN_IF_ERROR(file.ReadAt(10, prefix + 10, 2));
    header_len = uint64_t{prefix[8]} | (uint64_t{prefix[9]} << 8) | (uint64_t{prefix[10]} << 16) |
                 (uint64_t{prefix[11]} << 24);
    header_start = 12;
  } else {
    return invalid(absl::StrCat("unsupported .npy format version ", major, ".", minor,
                                " (supported: 1.0, 2.0, 3.0)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return invalid(absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                kMaxHeaderBytes, " bytes"));
  }
  if (header_start + header_len > file_size) {
    return invalid(absl::StrCat("truncated header: header length is ", header_len,
                                " bytes but the file is only ", file_size, " bytes"));
  }
  std::string header(static_cast<size_t>(header_len), '\0');
  RETURN_IF_ERROR(file.ReadAt(header_start, header.data(), header.size()));

  absl::StatusOr<HeaderParser::Fields> fields = HeaderParser(header).Parse();
  if (!fields.ok()) return invalid(fields.status().message());
  if (fields->fortran_order) {
    return invalid("Fortran-order arrays are not supported; use np.ascontiguousarray");
  }
  absl::StatusOr<size_t> item_size = NpyDescrItemSize(fields->descr);
  if (!item_size.ok()) return invalid(item_size.status().message());

  const std::optional<uint64_t> data_bytes = internal::CheckedByteCount(fields->shape, *item_size);
  const uint64_t data_start = header_start + header_len;
  if (!data_bytes.has_value() || *data_bytes > std::numeric_limits<uint64_t>::max() - data_start) {
    return invalid(absl::StrCat("shape ", ShapeString(fields->shape), " with item size ",
                                *item_size, " overflows 64-bit byte count"));
  }
  const uint64_t expected_size = data_start + *data_bytes;
  if (file_size != expected_size) {
    return invalid(
        absl::StrCat(file_size < expected_size ? "truncated data" : "trailing data after the array",
                     ": shape ", ShapeString(fields->shape), " of '", fields->descr, "' needs ",
                     *data_bytes, " data bytes after a ", data_start, "-byte header (",
                     expected_size, " bytes total), but the file is ", file_size, " bytes"));
  }
  if (*data_bytes > std::numeric_limits<size_t>::max()) {
    return invalid("array is too large to load into memory");
  }

  NpyArray array;
  array.descr = std::move(fields->descr);
  array.shape = std::move(fields->shape);
  try {
    array.data.resize(static_cast<size_t>(*data_bytes));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": cannot allocate ", *data_bytes, " bytes for the array data"));
  }
  RETURN_IF_ERROR(file.ReadAt(data_start, array.data.data(), array.data.size()));
  return array;
}

absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot write .npy: ", what));
  };
  absl::StatusOr<size_t> item_size = NpyDescrItemSize(descr);
  if (!item_size.ok()) return invalid(item_size.status().message());
  for (const int64_t dim : shape) {
    if (dim < 0)
      return invalid(
          absl::StrCat("negative dimension in shape [", absl::StrJoin(shape, ", "), "]"));
  }
  const std::optional<uint64_t> expected = internal::CheckedByteCount(shape, *item_size);
  if (!expected.has_value()) {
    return invalid(absl::StrCat("shape ", ShapeString(shape), " overflows 64-bit byte count"));
  }
  if (*expected != bytes) {
    return invalid(absl::StrCat("shape ", ShapeString(shape), " of '", descr, "' needs ", *expected,
                                " bytes but ", bytes, " were given"));
  }
  if (data == nullptr && bytes > 0) return invalid("data is null");

  std::string header = absl::StrCat(
      "{'descr': '", descr, "', 'fortran_order': False, 'shape': ", ShapeString(shape), ", }");
  // Pad with spaces and a final newline so that the data starts on a 64-byte boundary.
  const size_t unpadded = 10 + header.size() + 1;
  const size_t padding = (kHeaderAlignment - unpadded % kHeaderAlignment) % kHeaderAlignment;
  header.append(padding, ' ');
  header.push_back('\n');
  if (header.size() > 0xFFFF) return invalid("header is too long for .npy format 1.0");

  std::string prefix(kMagic, kMagicSize);
  prefix.push_back('\x01');
  prefix.push_back('\x00');
  prefix.push_back(static_cast<char>(header.size() & 0xFF));
  prefix.push_back(static_cast<char>((header.size() >> 8) & 0xFF));
  prefix += header;
  return internal::WriteFileAtomically(path, {{prefix.data(), prefix.size()}, {data, bytes}});
}

absl::StatusOr<std::vector<uint8_t>> ReadRawFile(const std::string& path, size_t expected_bytes) {
  ASSIGN_OR_RETURN(internal::ReadOnlyFile file, internal::ReadOnlyFile::Open(path));
  if (file.size() != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": file is ", file.size(),
                                                   " bytes, expected ", expected_bytes, " bytes"));
  }
  std::vector<uint8_t> data;
  try {
    data.resize(expected_bytes);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": cannot allocate ", expected_bytes, " bytes"));
  }
  RETURN_IF_ERROR(file.ReadAt(0, data.data(), data.size()));
  return data;
}

absl::Status WriteRawFile(const std::string& path, const void* data, size_t bytes) {
  return internal::WriteFileAtomically(path, {{data, bytes}});
}

}  // namespace nvfp4::io
