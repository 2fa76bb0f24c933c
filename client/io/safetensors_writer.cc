#include "client/io/safetensors_writer.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <new>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/io/posix_file.h"
#include "common/status_macros.h"

namespace nvfp4::io {
namespace {

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

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

// Parses one tensor description from the header. `path` and `name` are only used in messages.
absl::StatusOr<SafetensorsTensorInfo> ParseTensorInfo(const std::string& path,
                                                      const std::string& name,
                                                      const nlohmann::json& value) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", what));
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
  const std::optional<size_t> item_size = SafetensorsDTypeSize(info.dtype);
  if (!item_size.has_value()) return invalid(absl::StrCat("unknown dtype '", info.dtype, "'"));

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) return invalid("missing array 'shape'");
  for (const nlohmann::json& dim : *shape) {
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return invalid("'shape' must contain non-negative integers");
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
  if (info.begin > info.end) {
    return invalid(absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] are reversed"));
  }
  const std::optional<uint64_t> expected = internal::CheckedByteCount(info.shape, *item_size);
  if (!expected.has_value()) {
    return invalid(absl::StrCat("shape ", ShapeString(info.shape), " overflows 64-bit byte count"));
  }
  if (info.end - info.begin != *expected) {
    return invalid(absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] span ",
                                info.end - info.begin, " bytes but ", info.dtype, " shape ",
                                ShapeString(info.shape), " needs ", *expected));
  }
  return info;
}

// Parses the JSON header into `file` (tensors unsorted). Rejects duplicate keys in any object,
// which nlohmann::json would otherwise silently collapse.
absl::Status ParseHeader(const std::string& path, const std::string& text, SafetensorsFile& file) {
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate_key;
  nlohmann::json header;
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
        if (!open_objects.back().insert(key).second && duplicate_key.empty()) {
          duplicate_key = key;
        }
      }
      return true;
    };
    header = nlohmann::json::parse(text.begin(), text.end(), callback,
                                   /*allow_exceptions=*/false);
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("cannot parse header: ", e.what()));
  }
  if (header.is_discarded()) return invalid("header is not valid JSON");
  if (!header.is_object()) return invalid("header must be a JSON object");
  if (!duplicate_key.empty()) {
    return invalid(absl::StrCat("duplicate key '", duplicate_key, "' in header"));
  }

  for (const auto& item : header.items()) {
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();
    if (key == kMetadataKey) {
      if (!value.is_object()) return invalid("'__metadata__' must be a JSON object");
      for (const auto& meta : value.items()) {
        if (!meta.value().is_string()) {
          return invalid(
              absl::StrCat("'__metadata__' value for '", meta.key(), "' must be a string"));
        }
        file.metadata[meta.key()] = meta.value().get_ref<const std::string&>();
      }
      continue;
    }
    ASSIGN_OR_RETURN(SafetensorsTensorInfo info, ParseTensorInfo(path, key, value));
    file.tensors.push_back(std::move(info));
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<size_t> SafetensorsDTypeSize(std::string_view dtype) {
  static constexpr std::pair<std::string_view, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
  };
  for (const auto& [name, size] : kSizes) {
    if (name == dtype) return size;
  }
  return std::nullopt;
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  for (const SafetensorsTensorInfo& tensor : tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                              const std::map<std::string, std::string>& metadata) {
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot write safetensors: ", what));
  };
  std::string header_text;
  std::vector<internal::ByteChunk> chunks;
  chunks.reserve(entries.size() + 1);
  chunks.push_back({nullptr, 0});  // Placeholder for length + header.
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
      auto invalid_tensor = [&](absl::string_view what) {
        return invalid(absl::StrCat("tensor '", entry.name, "': ", what));
      };
      if (entry.name.empty()) return invalid("tensor names must not be empty");
      if (entry.name == kMetadataKey) return invalid_tensor("the name is reserved");
      if (!IsValidUtf8(entry.name)) return invalid_tensor("the name is not valid UTF-8");
      if (!names.insert(entry.name).second) return invalid_tensor("duplicate tensor name");
      const std::optional<size_t> item_size = SafetensorsDTypeSize(entry.dtype);
      if (!item_size.has_value()) {
        return invalid_tensor(absl::StrCat("unknown dtype '", entry.dtype, "'"));
      }
      for (const int64_t dim : entry.shape) {
        if (dim < 0) {
          return invalid_tensor(
              absl::StrCat("negative dimension in shape ", ShapeString(entry.shape)));
        }
      }
      const std::optional<uint64_t> expected = internal::CheckedByteCount(entry.shape, *item_size);
      if (!expected.has_value()) {
        return invalid_tensor(
            absl::StrCat("shape ", ShapeString(entry.shape), " overflows 64-bit byte count"));
      }
      if (*expected != entry.bytes) {
        return invalid_tensor(absl::StrCat(entry.dtype, " shape ", ShapeString(entry.shape),
                                           " needs ", *expected, " bytes but ", entry.bytes,
                                           " were given"));
      }
      if (entry.data == nullptr && entry.bytes > 0) return invalid_tensor("data is null");
      uint64_t end;
      if (__builtin_add_overflow(offset, uint64_t{entry.bytes}, &end)) {
        return invalid_tensor("total data size overflows 64 bits");
      }
      nlohmann::ordered_json info = nlohmann::ordered_json::object();
      info["dtype"] = entry.dtype;
      info["shape"] = entry.shape;
      info["data_offsets"] = nlohmann::ordered_json::array({offset, end});
      header[entry.name] = std::move(info);
      chunks.push_back({entry.data, entry.bytes});
      offset = end;
    }
    header_text = header.dump();
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("cannot build header: ", e.what()));
  }

  // Pad with spaces so that 8 + header length is a multiple of 8.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string prefix(8, '\0');
  uint64_t header_len = header_text.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((header_len >> (8 * i)) & 0xFF);
  prefix += header_text;
  chunks[0] = {prefix.data(), prefix.size()};
  return internal::WriteFileAtomically(path, chunks);
}

absl::StatusOr<SafetensorsFile> ReadSafetensorsSimple(const std::string& path) {
  ASSIGN_OR_RETURN(internal::ReadOnlyFile input, internal::ReadOnlyFile::Open(path));
  auto invalid = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  const uint64_t file_size = input.size();
  if (file_size < 8) {
    return invalid(absl::StrCat("file is ", file_size, " bytes, too small to be safetensors"));
  }
  unsigned char length_bytes[8];
  RETURN_IF_ERROR(input.ReadAt(0, length_bytes, sizeof(length_bytes)));
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxHeaderBytes) {
    return invalid(absl::StrCat("header length ", header_size, " exceeds the limit of ",
                                kMaxHeaderBytes, " bytes"));
  }
  if (header_size > file_size - 8) {
    return invalid(absl::StrCat("header length ", header_size, " runs past the end of the ",
                                file_size, "-byte file"));
  }

  SafetensorsFile file;
  file.header_size = header_size;
  file.data_start = 8 + header_size;
  const uint64_t data_size = file_size - file.data_start;
  try {
    std::string header_text(static_cast<size_t>(header_size), '\0');
    RETURN_IF_ERROR(input.ReadAt(8, header_text.data(), header_text.size()));
    RETURN_IF_ERROR(ParseHeader(path, header_text, file));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": out of memory reading the file"));
  }

  std::stable_sort(file.tensors.begin(), file.tensors.end(),
                   [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t covered = 0;
  for (const SafetensorsTensorInfo& tensor : file.tensors) {
    if (tensor.begin != covered) {
      return invalid(absl::StrCat("tensor '", tensor.name, "' starts at data offset ", tensor.begin,
                                  " but the previous tensor ends at ", covered,
                                  " (offsets must be contiguous from 0)"));
    }
    covered = tensor.end;
  }
  if (covered != data_size) {
    return invalid(absl::StrCat("data section is ", data_size, " bytes but the tensors cover ",
                                covered, " bytes (file size ", file_size, ", expected ",
                                file.data_start + covered, ")"));
  }
  try {
    file.data.resize(static_cast<size_t>(data_size));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": cannot allocate ", data_size, " bytes for the data section"));
  }
  RETURN_IF_ERROR(input.ReadAt(file.data_start, file.data.data(), file.data.size()));
  return file;
}

}  // namespace nvfp4::io
