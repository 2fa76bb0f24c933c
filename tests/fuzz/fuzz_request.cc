// libFuzzer target: the request validators at the gRPC edge of nvfp4d. The same bytes are
// parsed as a nvfp4.v1.QuantizeTensorRequest (its header runs through api::SpecFromHeader, as
// in QuantizeTensor), as a bare TensorHeader (QuantizeTensorUnary's header) and as a
// QuantizeCheckpointRequest (api::CheckpointOptionsFromRequest, as in QuantizeCheckpoint).
// Raw bytes: Debian 12 ships no libprotobuf-mutator; the seeds (tests/fuzz/corpus/request) are
// serialized valid messages, so mutations stay close to the wire format.
//
// Invariants on every accepted spec:
//  - rows > 0, cols > 0, rows * cols <= 2^40 (checked in 128 bits), elements() == rows * cols;
//  - job_bytes() == input + importance + packed + scales + fake-quant outputs, recomputed here
//    in 128 bits, positive and without overflow; input/importance/dequantized byte counts agree;
//  - options are what the engine accepts: nvfp4::ValidateQuantizeRequest passes for the shape;
//  - HeaderFromSpec round-trips: SpecFromHeader(HeaderFromSpec(spec)) == spec.
// Accepted checkpoint options: non-empty paths, F in {256, 448}, shard_bytes > 0, and
// CheckpointRequestFromOptions round-trips. Rejections are always InvalidArgument.
// The chunk decoder the stream reactors use first (proto/chunk_wire.h), over the same bytes cut
// into slices at a data-derived point: when it reports a data or importance chunk, the
// generated parser accepts the message and finds exactly those bytes there.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include "kernels/quantized_tensor.h"
#include "kernels/validate.h"
#include "nvfp4/v1/quantizer.pb.h"
#include "proto/chunk_wire.h"
#include "proto/convert.h"

namespace {

using nvfp4::api::TensorSpec;
using Int128 = __int128;

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  fprintf(stderr, "fuzz_request invariant violated: %s (%s)\n", what, detail.c_str());
  abort();
}
#define CHECK_INV(cond, detail)       \
  do {                                \
    if (!(cond)) Fail(#cond, detail); \
  } while (0)

bool SameOptional(const std::optional<float>& a, const std::optional<float>& b) {
  if (a.has_value() != b.has_value()) return false;
  // Bitwise: -0.0 must survive the round trip as -0.0.
  return !a.has_value() || std::memcmp(&*a, &*b, sizeof(float)) == 0;
}

bool SameSpec(const TensorSpec& a, const TensorSpec& b) {
  return a.name == b.name && a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols &&
         a.options.method == b.options.method && a.options.objective == b.options.objective &&
         a.options.scale_max == b.options.scale_max &&
         SameOptional(a.options.amax, b.options.amax) &&
         SameOptional(a.options.global_scale, b.options.global_scale) &&
         a.options.want_dequantized == b.options.want_dequantized &&
         a.importance_layout == b.importance_layout && a.want_packed == b.want_packed &&
         a.want_dequantized == b.want_dequantized && a.dequantized_bf16 == b.dequantized_bf16;
}

void CheckHeader(const nvfp4::v1::TensorHeader& header) {
  absl::StatusOr<TensorSpec> spec = nvfp4::api::SpecFromHeader(header);
  if (!spec.ok()) {
    CHECK_INV(spec.status().code() == absl::StatusCode::kInvalidArgument, spec.status().ToString());
    return;
  }
  const TensorSpec& s = *spec;
  const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols);
  CHECK_INV(s.rows > 0 && s.cols > 0, shape);
  const Int128 elements = Int128{s.rows} * s.cols;
  CHECK_INV(elements <= (Int128{1} << 40), shape);
  CHECK_INV(s.elements() == elements, shape);
  CHECK_INV(s.name.size() <= 256, "name");
  CHECK_INV(s.options.scale_max == 256 || s.options.scale_max == 448, shape);
  CHECK_INV(s.want_packed || s.want_dequantized, "no output");
  CHECK_INV(s.options.want_dequantized == s.want_dequantized, "want_dequantized");
  CHECK_INV(s.options.cancelled == nullptr, "cancelled");

  // job_bytes(): every buffer the job holds, recomputed in 128 bits.
  const Int128 size = nvfp4::DTypeSize(s.dtype);
  const Int128 input = elements * size;
  const Int128 importance = s.importance_layout == nvfp4::ImportanceLayout::kPerColumn    ? s.cols
                            : s.importance_layout == nvfp4::ImportanceLayout::kPerElement ? elements
                                                                                          : 0;
  const Int128 padded = (Int128{s.cols} + 15) / 16 * 16;
  CHECK_INV(padded == nvfp4::PaddedCols(s.cols), shape);
  const Int128 encoded = Int128{s.rows} * padded / 2 + Int128{s.rows} * padded / 16;
  const Int128 dequantized = s.want_dequantized ? elements * (s.dequantized_bf16 ? 2 : 4) : 0;
  const Int128 fake_quant = s.want_dequantized ? elements * 4 : 0;  // bf16 converted in place
  const Int128 job = input + importance * 4 + encoded + fake_quant;
  CHECK_INV(job > 0 && job <= INT64_MAX, shape);
  CHECK_INV(s.input_bytes() == input, shape);
  CHECK_INV(s.importance_values() == importance, shape);
  CHECK_INV(s.dequantized_bytes() == dequantized, shape);
  CHECK_INV(s.job_bytes() == job, shape);
  CHECK_INV(s.output_bytes() == encoded + fake_quant, shape);
  CHECK_INV(s.job_bytes() >= s.input_bytes() + s.importance_values() * 4, shape);

  // What the server admits, the engine accepts (data pointers only need to be non-null).
  static const float kDummy = 0;
  nvfp4::TensorView view{s.dtype, s.rows, s.cols, &kDummy};
  nvfp4::ImportanceView importance_view{s.importance_layout, &kDummy,
                                        static_cast<int64_t>(importance)};
  const absl::Status valid = nvfp4::ValidateQuantizeRequest(view, importance_view, s.options);
  CHECK_INV(valid.ok(), valid.ToString());

  // The client's HeaderFromSpec sends back exactly this spec.
  const nvfp4::v1::TensorHeader back = nvfp4::api::HeaderFromSpec(s);
  absl::StatusOr<TensorSpec> again = nvfp4::api::SpecFromHeader(back);
  CHECK_INV(again.ok(), again.status().ToString());
  CHECK_INV(SameSpec(s, *again), back.ShortDebugString());
}

void CheckCheckpointRequest(const nvfp4::v1::QuantizeCheckpointRequest& request) {
  auto options = nvfp4::api::CheckpointOptionsFromRequest(request);
  if (!options.ok()) {
    CHECK_INV(options.status().code() == absl::StatusCode::kInvalidArgument,
              options.status().ToString());
    return;
  }
  CHECK_INV(!options->model_dir.empty() && !options->out_dir.empty(), "paths");
  CHECK_INV(options->model_dir == request.model_dir() && options->out_dir == request.out_dir(),
            "paths");
  CHECK_INV(options->scale_max == 256 || options->scale_max == 448, "scale_max");
  CHECK_INV(options->shard_bytes > 0, "shard_bytes");
  CHECK_INV(static_cast<int>(options->include.size()) == request.include_size() &&
                static_cast<int>(options->exclude.size()) == request.exclude_size(),
            "globs");
  const nvfp4::v1::QuantizeCheckpointRequest back =
      nvfp4::api::CheckpointRequestFromOptions(*options);
  auto again = nvfp4::api::CheckpointOptionsFromRequest(back);
  CHECK_INV(again.ok(), again.status().ToString());
  CHECK_INV(again->model_dir == options->model_dir && again->out_dir == options->out_dir &&
                again->format == options->format && again->method == options->method &&
                again->objective == options->objective && again->scale_max == options->scale_max &&
                again->include == options->include && again->exclude == options->exclude &&
                again->importance_path == options->importance_path &&
                again->calibration_path == options->calibration_path &&
                again->shard_bytes == options->shard_bytes,
            back.ShortDebugString());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in string fields makes protobuf log an error per input; parsing still fails.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

void CheckChunkDecoder(const uint8_t* data, size_t size,
                       const nvfp4::v1::QuantizeTensorRequest* parsed) {
  const size_t cut = size == 0 ? 0 : data[0] % (size + 1);
  grpc::Slice pieces[2] = {grpc::Slice(data, cut), grpc::Slice(data + cut, size - cut)};
  const std::optional<nvfp4::api::BytesFieldView> view =
      nvfp4::api::AsSingleBytesField(grpc::ByteBuffer(pieces, 2));
  if (!view) return;
  CHECK_INV(view->size() <= size, std::to_string(view->size()));
  const uint32_t field = view->field_number();
  if (field != nvfp4::v1::QuantizeTensorRequest::kDataFieldNumber &&
      field != nvfp4::v1::QuantizeTensorRequest::kImportanceFieldNumber) {
    return;
  }
  CHECK_INV(parsed != nullptr, "the generated parser refused a chunk the decoder took");
  const std::string& expected = field == nvfp4::v1::QuantizeTensorRequest::kDataFieldNumber
                                    ? parsed->data()
                                    : parsed->importance();
  CHECK_INV(static_cast<uint32_t>(parsed->payload_case()) == field, std::to_string(field));
  std::string got(view->size(), '\0');
  view->CopyTo(reinterpret_cast<uint8_t*>(got.data()));
  CHECK_INV(got == expected, std::to_string(got.size()));
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;  // headers are small; large inputs only slow the search
  const void* bytes = data;
  const int n = static_cast<int>(size);

  nvfp4::v1::QuantizeTensorRequest request;
  const bool parsed = request.ParseFromArray(bytes, n);
  if (parsed && request.has_header()) CheckHeader(request.header());
  CheckChunkDecoder(data, size, parsed ? &request : nullptr);

  nvfp4::v1::TensorHeader header;
  if (header.ParseFromArray(bytes, n)) CheckHeader(header);

  nvfp4::v1::QuantizeCheckpointRequest checkpoint;
  if (checkpoint.ParseFromArray(bytes, n)) CheckCheckpointRequest(checkpoint);
  return 0;
}
