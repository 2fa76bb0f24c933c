// libFuzzer target: nvfp4::checkpoint::ParseSafetensors, the strict reader every checkpoint
// (local, remote and `nvfp4q verify`) goes through, fed arbitrary file images.
//
// Beyond "no crash, no sanitizer report", every accepted image must satisfy what callers rely
// on when they turn offsets into pointers (MappedSafetensors::data):
//  - data_start == 8 + header_size <= size, and the header is the 8-byte length prefix's value;
//  - tensors are sorted, contiguous from 0, begin <= end, and the last one ends exactly at the
//    end of the file: every tensor's bytes lie inside the image (each is touched, so ASan
//    checks the range);
//  - each tensor's byte count is its dtype bits x element count / 8 (computed here with
//    checked arithmetic), elements() agrees whenever the product fits int64, and names are
//    unique and found by Find();
//  - parsing is deterministic: the same bytes parse again to the same header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/checkpoint/safetensors.h"

namespace {

using nvfp4::checkpoint::ParseSafetensors;
using nvfp4::checkpoint::SafetensorsDTypeBits;
using nvfp4::checkpoint::SafetensorsHeader;
using nvfp4::checkpoint::SafetensorsTensorInfo;

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  fprintf(stderr, "fuzz_safetensors invariant violated: %s (%s)\n", what, detail.c_str());
  abort();
}
#define CHECK_INV(cond, detail)       \
  do {                                \
    if (!(cond)) Fail(#cond, detail); \
  } while (0)

// Element count with overflow detection: false when some prefix product leaves int64.
bool CheckedElements(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return false;
  }
  *out = n;
  return true;
}

bool SameHeader(const SafetensorsHeader& a, const SafetensorsHeader& b) {
  if (a.header_size != b.header_size || a.data_start != b.data_start || a.metadata != b.metadata ||
      a.tensors.size() != b.tensors.size()) {
    return false;
  }
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const SafetensorsTensorInfo& x = a.tensors[i];
    const SafetensorsTensorInfo& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin ||
        x.end != y.end) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exact-size heap block so ASan flags any read past the image.
  std::vector<uint8_t> image(data, data + size);
  const uint8_t* bytes = image.empty() ? nullptr : image.data();
  auto parsed = ParseSafetensors("fuzz.safetensors", bytes, size);
  if (!parsed.ok()) {
    CHECK_INV(parsed.status().code() == absl::StatusCode::kInvalidArgument,
              parsed.status().ToString());
    CHECK_INV(parsed.status().message().rfind("fuzz.safetensors: ", 0) == 0,
              std::string(parsed.status().message()));
    return 0;
  }
  const SafetensorsHeader& header = *parsed;
  CHECK_INV(size >= 8, std::to_string(size));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  CHECK_INV(header.header_size == n, std::to_string(n));
  CHECK_INV(header.data_start == 8 + n, std::to_string(header.data_start));
  CHECK_INV(header.data_start <= size, std::to_string(header.data_start));

  const uint64_t data_bytes = size - header.data_start;
  uint64_t covered = 0;
  std::set<std::string> names;
  uint8_t sink = 0;
  for (const SafetensorsTensorInfo& t : header.tensors) {
    CHECK_INV(t.begin == covered, t.name);
    CHECK_INV(t.begin <= t.end, t.name);
    CHECK_INV(t.end <= data_bytes, t.name);
    CHECK_INV(t.bytes() == t.end - t.begin, t.name);
    CHECK_INV(names.insert(t.name).second, t.name);
    CHECK_INV(header.Find(t.name) == &t, t.name);

    const std::optional<int> bits = SafetensorsDTypeBits(t.dtype);
    CHECK_INV(bits.has_value(), t.dtype);
    int64_t elements = 0;
    const bool fits = CheckedElements(t.shape, &elements);
    // The parser (like the reference) accepts 0-element shapes whose other dimensions multiply
    // past 2^63 before the zero, e.g. [2^62, 2, 0]; elements() must still answer 0 (it once
    // overflowed int64 there: found while writing this fuzzer).
    if (fits) {
      CHECK_INV(t.elements() == elements, t.name);
      const unsigned __int128 total_bits =
          static_cast<unsigned __int128>(static_cast<uint64_t>(elements)) *
          static_cast<unsigned>(*bits);
      CHECK_INV(total_bits % 8 == 0, t.name);
      CHECK_INV(total_bits / 8 == t.bytes(), t.name);
    } else {
      // The element count overflows int64, so the bytes can only match with a zero dimension.
      bool has_zero = false;
      for (const int64_t d : t.shape) has_zero |= d == 0;
      CHECK_INV(has_zero && t.bytes() == 0, t.name);
      CHECK_INV(t.elements() == 0, t.name);
    }
    // Touch the first and last byte of the tensor's range (what MappedSafetensors::data hands
    // out): ASan reports any escape from the image.
    if (t.bytes() > 0) {
      const uint8_t* p = bytes + header.data_start + t.begin;
      sink ^= p[0] ^ p[t.bytes() - 1];
    }
    covered = t.end;
  }
  CHECK_INV(covered == data_bytes, std::to_string(covered));
  CHECK_INV(header.Find("__metadata__") == nullptr, "__metadata__ is not a tensor");

  // Round trip: a canonical header rebuilt from what was accepted (as SafetensorsWriter would
  // lay it out), over the same data bytes, is accepted with the same tensors and metadata.
  nlohmann::json rebuilt = nlohmann::json::object();
  for (const SafetensorsTensorInfo& t : header.tensors) {
    rebuilt[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  if (!header.metadata.empty()) rebuilt["__metadata__"] = header.metadata;
  const std::string text = rebuilt.dump();  // throws (and so fails) on a non-UTF-8 name
  std::vector<uint8_t> copy(8 + text.size() + data_bytes);
  for (int i = 0; i < 8; ++i) copy[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  std::memcpy(copy.data() + 8, text.data(), text.size());
  if (data_bytes > 0)
    std::memcpy(copy.data() + 8 + text.size(), bytes + header.data_start, data_bytes);
  auto reparsed = ParseSafetensors("roundtrip.safetensors", copy.data(), copy.size());
  CHECK_INV(reparsed.ok(), reparsed.status().ToString());
  CHECK_INV(reparsed->metadata == header.metadata, "metadata");
  CHECK_INV(reparsed->tensors.size() == header.tensors.size(), "tensor count");
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const SafetensorsTensorInfo& x = header.tensors[i];
    const SafetensorsTensorInfo& y = reparsed->tensors[i];
    CHECK_INV(x.name == y.name && x.dtype == y.dtype && x.shape == y.shape && x.begin == y.begin &&
                  x.end == y.end,
              x.name);
  }

  // Deterministic: the same image parses to the same header.
  auto again = ParseSafetensors("fuzz.safetensors", bytes, size);
  CHECK_INV(again.ok() && SameHeader(header, *again), "reparse");
  asm volatile("" : : "r"(sink));
  return 0;
}
