#include "proto/chunk_wire.h"

#include <algorithm>
#include <cstring>

namespace nvfp4::api {
namespace {

constexpr uint32_t kWireTypeLengthDelimited = 2;

size_t PutVarint(uint64_t value, uint8_t* out) {
  size_t n = 0;
  while (value >= 0x80) {
    out[n++] = static_cast<uint8_t>(value | 0x80);
    value >>= 7;
  }
  out[n++] = static_cast<uint8_t>(value);
  return n;
}

// Reads bytes across slice boundaries (the prefix of a message may be split).
class SliceCursor {
 public:
  explicit SliceCursor(const std::vector<grpc::Slice>& slices) : slices_(slices) {}

  std::optional<uint64_t> Varint(int max_bytes) {
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; ++i) {
      const std::optional<uint8_t> byte = Next();
      if (!byte) return std::nullopt;
      value |= static_cast<uint64_t>(*byte & 0x7f) << (7 * i);
      if ((*byte & 0x80) == 0) return value;
    }
    return std::nullopt;
  }
  size_t slice() const { return slice_; }
  size_t offset() const { return offset_; }
  size_t consumed() const { return consumed_; }

 private:
  std::optional<uint8_t> Next() {
    while (slice_ < slices_.size() && offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
    }
    if (slice_ == slices_.size()) return std::nullopt;
    ++consumed_;
    return slices_[slice_].begin()[offset_++];
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0;
  size_t offset_ = 0;
  size_t consumed_ = 0;
};

}  // namespace

grpc::ByteBuffer SingleBytesFieldMessage(uint32_t field_number, grpc::Slice payload) {
  uint8_t prefix[16];
  size_t n = PutVarint((uint64_t{field_number} << 3) | kWireTypeLengthDelimited, prefix);
  n += PutVarint(payload.size(), prefix + n);
  grpc::Slice slices[2] = {grpc::Slice(prefix, n), std::move(payload)};
  return grpc::ByteBuffer(slices, slices[1].size() > 0 ? 2 : 1);
}

std::optional<BytesFieldView> AsSingleBytesField(const grpc::ByteBuffer& buffer) {
  BytesFieldView view;
  if (!buffer.Dump(&view.slices_).ok()) return std::nullopt;
  SliceCursor cursor(view.slices_);
  const std::optional<uint64_t> tag = cursor.Varint(5);
  if (!tag || (*tag & 7) != kWireTypeLengthDelimited || (*tag >> 3) == 0 ||
      (*tag >> 3) > 0x1fffffff) {
    return std::nullopt;
  }
  const std::optional<uint64_t> length = cursor.Varint(10);
  if (!length || *length != buffer.Length() - cursor.consumed()) return std::nullopt;
  view.field_number_ = static_cast<uint32_t>(*tag >> 3);
  view.size_ = static_cast<size_t>(*length);
  // Drop the slices before the payload so pieces start at slices_[0] + offset_.
  view.slices_.erase(view.slices_.begin(),
                     view.slices_.begin() + static_cast<std::ptrdiff_t>(cursor.slice()));
  view.offset_ = cursor.offset();
  return view;
}

BytesFieldView BytesFieldView::Copying(uint32_t field_number, const std::string& payload) {
  BytesFieldView view;
  view.field_number_ = field_number;
  view.size_ = payload.size();
  if (!payload.empty()) view.slices_.emplace_back(payload.data(), payload.size());
  return view;
}

void BytesFieldView::ForEachPiece(absl::FunctionRef<void(const uint8_t*, size_t)> piece) const {
  ForEachPieceIn(0, size_, piece);
}

void BytesFieldView::ForEachPieceIn(size_t begin, size_t end,
                                    absl::FunctionRef<void(const uint8_t*, size_t)> piece) const {
  // at: the payload offset where the current slice's bytes (after offset_ in the first) start.
  size_t at = 0;
  size_t skip = offset_;
  for (const grpc::Slice& slice : slices_) {
    if (at >= end) return;
    const size_t available = slice.size() - skip;
    const size_t from = std::max(at, begin), to = std::min(at + available, end);
    if (from < to) piece(slice.begin() + skip + (from - at), to - from);
    at += available;
    skip = 0;
  }
}

void BytesFieldView::CopyTo(uint8_t* dst) const {
  ForEachPiece([&dst](const uint8_t* data, size_t n) {
    std::memcpy(dst, data, n);
    dst += n;
  });
}

}  // namespace nvfp4::api
