#include "server/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_status.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace nvfp4::checkpoint {
namespace {

constexpr std::string_view kMetadataKey = "__metadata__";

// True if `s` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Byte size of dtype x shape (checks 7 and 8), or an error message.
absl::StatusOr<uint64_t> LayoutBytes(const std::string& dtype, const std::vector<int64_t>& shape) {
  const std::optional<int> bits = SafetensorsDTypeBits(dtype);
  if (!bits.has_value())
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "'"));
  uint64_t count = 1;
  for (const int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape ", ShapeString(shape)));
    }
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dim), &count)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(shape), " overflows the element count"));
    }
  }
  uint64_t total_bits;
  if (__builtin_mul_overflow(count, static_cast<uint64_t>(*bits), &total_bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeString(shape), " overflows the bit count"));
  }
  if (total_bits % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(dtype, " shape ", ShapeString(shape), " is ",
                                                   total_bits,
                                                   " bits, not a whole number of bytes"));
  }
  return total_bits / 8;
}

absl::StatusOr<SafetensorsTensorInfo> ParseTensorInfo(const std::string& name,
                                                      const nlohmann::json& value) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", what));
  };
  if (!value.is_object()) return invalid("header entry must be a JSON object");
  for (const auto& item : value.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      return invalid(absl::StrCat("unexpected key '", item.key(), "'"));
    }
  }
  SafetensorsTensorInfo info;
  info.name = name;
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) return invalid("missing string 'dtype'");
  info.dtype = dtype->get_ref<const std::string&>();
  if (!SafetensorsDTypeBits(info.dtype).has_value()) {
    return invalid(absl::StrCat("unknown dtype '", info.dtype, "'"));
  }
  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) return invalid("missing array 'shape'");
  for (const nlohmann::json& dim : *shape) {
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return invalid("'shape' must contain non-negative integers below 2^63");
    }
    info.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }
  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return invalid("'data_offsets' must be [begin, end] with non-negative integers");
  }
  info.begin = (*offsets)[0].get<uint64_t>();
  info.end = (*offsets)[1].get<uint64_t>();
  return info;
}

}  // namespace

std::optional<int> SafetensorsDTypeBits(std::string_view dtype) {
  static constexpr std::pair<std::string_view, int> kBits[] = {
      {"BOOL", 8}, {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
      {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"I16", 16},
      {"U16", 16}, {"F16", 16},    {"BF16", 16},   {"I32", 32},    {"U32", 32},
      {"F32", 32}, {"C64", 64},    {"F64", 64},    {"I64", 64},    {"U64", 64},
  };
  for (const auto& [name, bits] : kBits) {
    if (name == dtype) return bits;
  }
  return std::nullopt;
}

int64_t SafetensorsTensorInfo::elements() const {
  // A zero dimension first: the reader (like the reference) accepts a 0-element shape whose
  // other dimensions multiply past 2^63, e.g. [2^62, 2, 0]. Any other accepted shape has at
  // most as many elements as its bytes, so the product fits.
  for (const int64_t d : shape) {
    if (d == 0) return 0;
  }
  uint64_t n = 1;
  for (const int64_t d : shape) n *= static_cast<uint64_t>(d);
  return static_cast<int64_t>(n);
}

const SafetensorsTensorInfo* SafetensorsHeader::Find(std::string_view name) const {
  const auto it = index_.find(absl::string_view(name.data(), name.size()));
  return it == index_.end() ? nullptr : &tensors[it->second];
}

absl::StatusOr<SafetensorsHeader> ParseSafetensors(std::string_view file_name_view,
                                                   const uint8_t* bytes, uint64_t size) {
  const absl::string_view file_name(file_name_view.data(), file_name_view.size());
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(file_name, ": ", what));
  };
  // 1.
  if (size < 8)
    return invalid(absl::StrCat("file is ", size, " bytes, too small to be safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  // 2.
  if (n > kSafetensorsMaxHeaderBytes) {
    return invalid(absl::StrCat("header length ", n, " exceeds the limit of ",
                                kSafetensorsMaxHeaderBytes, " bytes"));
  }
  // 3. (n <= 1e8, so 8 + n cannot overflow.)
  if (8 + n > size) {
    return invalid(
        absl::StrCat("header length ", n, " runs past the end of the ", size, "-byte file"));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(n));
  // 4.
  if (!IsValidUtf8(text)) return invalid("header is not valid UTF-8");
  // nlohmann::json stops at a NUL and skips a byte-order mark; the reference reader rejects
  // both (neither is JSON), so must we, or bytes after a NUL would go unchecked.
  if (text.find('\0') != std::string_view::npos) return invalid("header contains a NUL byte");
  if (text.substr(0, 3) == "\xEF\xBB\xBF") return invalid("header starts with a byte-order mark");
  // 5. JSON object; duplicate keys in any object are rejected (nlohmann would keep the last).
  SafetensorsHeader header;
  header.header_size = n;
  header.data_start = 8 + n;
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate_key;
  nlohmann::json json;
  try {
    auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event,
                        nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) {
        open_objects.emplace_back();
      } else if (event == Event::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == Event::key && parsed.is_string() && !open_objects.empty()) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second && duplicate_key.empty()) duplicate_key = key;
      }
      return true;
    };
    json = nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("cannot parse the header: ", e.what()));
  }
  if (json.is_discarded()) return invalid("header is not valid JSON");
  if (!json.is_object()) return invalid("header must be a JSON object");
  if (!duplicate_key.empty())
    return invalid(absl::StrCat("duplicate key '", duplicate_key, "' in the header"));
  for (const auto& item : json.items()) {
    if (item.key() == kMetadataKey) {
      if (!item.value().is_object()) return invalid("'__metadata__' must be a JSON object");
      for (const auto& meta : item.value().items()) {
        if (!meta.value().is_string()) {
          return invalid(
              absl::StrCat("'__metadata__' value for '", meta.key(), "' must be a string"));
        }
        header.metadata[meta.key()] = meta.value().get_ref<const std::string&>();
      }
      continue;
    }
    absl::StatusOr<SafetensorsTensorInfo> info = ParseTensorInfo(item.key(), item.value());
    if (!info.ok()) return invalid(info.status().message());
    header.tensors.push_back(*std::move(info));
  }
  // 6-9. Sorted by offsets, each tensor starts where the previous ended (no gaps, no overlap).
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t covered = 0;
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const SafetensorsTensorInfo& t = header.tensors[i];
    auto bad = [&](absl::string_view what) {
      return invalid(absl::StrCat("tensor '", t.name, "': ", what));
    };
    if (t.begin != covered || t.end < t.begin) {
      return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                              "] do not continue the previous tensor, which ends at ", covered,
                              " (offsets must be contiguous from 0, without gaps or overlap)"));
    }
    absl::StatusOr<uint64_t> expected = LayoutBytes(t.dtype, t.shape);
    if (!expected.ok()) return bad(expected.status().message());
    if (t.bytes() != *expected) {
      return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] span ", t.bytes(),
                              " bytes but ", t.dtype, " ", ShapeString(t.shape), " needs ",
                              *expected));
    }
    covered = t.end;
    header.index_.emplace(t.name, i);
  }
  // 10.
  if (covered != size - header.data_start) {
    return invalid(absl::StrCat("the tensors cover ", covered, " data bytes but the file has ",
                                size - header.data_start, " after the header (file size ", size,
                                ", expected ", header.data_start + covered, ")"));
  }
  return header;
}

// ---------------------------------------------------------------------------------------------

absl::StatusOr<MappedSafetensors> MappedSafetensors::Open(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return io::FileErrnoStatus(errno, path, "cannot open for reading");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io::FileErrnoStatus(err, path, "fstat failed");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  MappedSafetensors file;
  file.path_ = path;
  file.size_ = static_cast<uint64_t>(st.st_size);
  if (file.size_ > 0) {
    void* base = ::mmap(nullptr, file.size_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (base == MAP_FAILED) return io::FileErrnoStatus(err, path, "mmap failed");
    file.base_ = static_cast<const uint8_t*>(base);
    ::madvise(base, file.size_, MADV_SEQUENTIAL);
  } else {
    ::close(fd);
  }
  static const uint8_t kEmpty[1] = {0};
  ASSIGN_OR_RETURN(file.header_,
                   ParseSafetensors(path, file.base_ ? file.base_ : kEmpty, file.size_));
  return file;
}

MappedSafetensors::MappedSafetensors(MappedSafetensors&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      header_(std::move(other.header_)) {}

MappedSafetensors& MappedSafetensors::operator=(MappedSafetensors&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    header_ = std::move(other.header_);
  }
  return *this;
}

MappedSafetensors::~MappedSafetensors() { Unmap(); }

void MappedSafetensors::Unmap() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
  base_ = nullptr;
}

// ---------------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata) {
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot write safetensors: ", what));
  };
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  std::string header_text;
  try {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [key, value] : metadata) {
        if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
          return invalid(absl::StrCat("metadata entry '", key, "' is not valid UTF-8"));
        }
        meta[key] = value;
      }
      header[std::string(kMetadataKey)] = std::move(meta);
    }
    std::set<std::string_view> names;
    uint64_t offset = 0;
    for (const SafetensorsEntry& entry : entries) {
      auto bad = [&](absl::string_view what) {
        return invalid(absl::StrCat("tensor '", entry.name, "': ", what));
      };
      if (entry.name.empty()) return invalid("tensor names must not be empty");
      if (entry.name == kMetadataKey) return bad("the name is reserved");
      if (!IsValidUtf8(entry.name)) return bad("the name is not valid UTF-8");
      if (!names.insert(entry.name).second) return bad("duplicate tensor name");
      absl::StatusOr<uint64_t> bytes = LayoutBytes(entry.dtype, entry.shape);
      if (!bytes.ok()) return bad(bytes.status().message());
      uint64_t end;
      if (__builtin_add_overflow(offset, *bytes, &end)) return bad("total size overflows 64 bits");
      nlohmann::ordered_json info = nlohmann::ordered_json::object();
      info["dtype"] = entry.dtype;
      info["shape"] = entry.shape;
      info["data_offsets"] = nlohmann::ordered_json::array({offset, end});
      header[entry.name] = std::move(info);
      writer->entry_bytes_.push_back(*bytes);
      offset = end;
    }
    writer->data_bytes_ = offset;
    header_text = header.dump();
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("cannot build the header: ", e.what()));
  }
  // Pad with spaces so the data section starts on an 8-byte boundary.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  if (header_text.size() > kSafetensorsMaxHeaderBytes) return invalid("the header is too large");

  writer->tmp_path_ = absl::StrCat(path, ".tmp.", static_cast<long>(::getpid()));
  do {
    writer->fd_ = ::open(writer->tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (writer->fd_ < 0 && errno == EINTR);
  if (writer->fd_ < 0) {
    return io::FileErrnoStatus(errno, writer->tmp_path_, "cannot create temporary file");
  }
  std::string prefix(8, '\0');
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  prefix += header_text;
  writer->hasher_.Update(prefix.data(), prefix.size());
  RETURN_IF_ERROR(
      io::internal::WriteAll(writer->fd_, prefix.data(), prefix.size(), writer->tmp_path_));
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_path_.empty()) ::unlink(tmp_path_.c_str());
}

absl::Status SafetensorsWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  hasher_.Update(buffer_.data(), buffer_.size());
  absl::Status status = io::internal::WriteAll(fd_, buffer_.data(), buffer_.size(), tmp_path_);
  buffer_.clear();
  return status;
}

absl::Status SafetensorsWriter::Write(const void* data, size_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  if (size > data_bytes_ - written_) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": ", written_ + size, " data bytes written, the layout holds ", data_bytes_));
  }
  written_ += size;
  constexpr size_t kCoalesce = 1 << 16;
  if (size < kCoalesce) {
    buffer_.append(static_cast<const char*>(data), size);
    return buffer_.size() >= kCoalesce ? Flush() : absl::OkStatus();
  }
  RETURN_IF_ERROR(Flush());
  hasher_.Update(data, size);
  return io::internal::WriteAll(fd_, data, size, tmp_path_);
}

absl::Status SafetensorsWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  if (written_ != data_bytes_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": only ", written_, " of ", data_bytes_, " data bytes were written"));
  }
  RETURN_IF_ERROR(Flush());
  if (::fsync(fd_) != 0) return io::FileErrnoStatus(errno, tmp_path_, "fsync failed");
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return io::FileErrnoStatus(errno, tmp_path_, "close failed");
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return io::FileErrnoStatus(errno, path_, absl::StrCat("cannot rename ", tmp_path_, " to it"));
  }
  committed_ = true;
  io::internal::SyncParentDirectory(path_);
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsBlob>& blobs,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  entries.reserve(blobs.size());
  for (const SafetensorsBlob& blob : blobs) entries.push_back(blob.entry);
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, entries, metadata));
  for (size_t i = 0; i < blobs.size(); ++i) {
    if (blobs[i].size != writer->entry_bytes()[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": cannot write safetensors: tensor '", blobs[i].entry.name,
          "': ", blobs[i].entry.dtype, " ", ShapeString(blobs[i].entry.shape), " needs ",
          writer->entry_bytes()[i], " bytes but ", blobs[i].size, " were given"));
    }
    if (blobs[i].size > 0 && blobs[i].data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", blobs[i].entry.name, "': data is null"));
    }
    RETURN_IF_ERROR(writer->Write(blobs[i].data, blobs[i].size));
  }
  return writer->Commit();
}

}  // namespace nvfp4::checkpoint
