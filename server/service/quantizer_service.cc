#include "server/service/quantizer_service.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <new>
#include <optional>
#include <utility>

#include "absl/base/casts.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "common/streaming_copy.h"
#include "common/version.h"
#include "proto/chunk_wire.h"
#include "proto/convert.h"
#include "server/service/call_status.h"
#include "server/service/checkpoint_rpc.h"
#include "server/service/tensor_job.h"

namespace nvfp4::server {
namespace {

using StreamRequest = v1::QuantizeTensorRequest;
using StreamResponse = v1::QuantizeTensorResponse;

// A result chunk message is one bytes field: a tag byte and a length varint of at most 5 bytes.
constexpr size_t kResultChunkFramingBytes = 16;

absl::Status CheckDeadline(const grpc::CallbackServerContext& context) {
  if (context.deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("the call's deadline passed before the job was admitted");
  }
  return absl::OkStatus();
}

// Admits a tensor job and allocates its (uninitialised) input and output buffers; no data
// buffer when the data is streamed (the reactor holds the received chunks).
absl::Status AdmitTensorJob(QuantizerService& service, const api::TensorSpec& spec, bool streamed,
                            std::shared_ptr<Job>* job,
                            std::shared_ptr<Scheduler::Admission>* admission, TensorJobInput* input,
                            std::shared_ptr<TensorJobOutput>* output) {
  *job = service.jobs()->Create(v1::JOB_KIND_TENSOR, spec.name, spec.elements(), spec.request_id);
  absl::StatusOr<std::shared_ptr<Scheduler::Admission>> admitted =
      service.scheduler()->Admit(*job, service.ReservedBytes(spec, streamed));
  if (!admitted.ok()) {
    // Refused: no job id reached the client, so no record is kept (job stays null).
    (*job)->MarkFinished(admitted.status(), std::nullopt, "");
    service.jobs()->Forget((*job)->id());
    job->reset();
    return admitted.status();
  }
  *admission = std::move(*admitted);
  input->spec = spec;
  try {
    if (!streamed) {
      input->data = service.buffer_pool()->Acquire(static_cast<size_t>(spec.input_bytes()));
    }
    input->importance =
        service.buffer_pool()->Acquire(static_cast<size_t>(spec.importance_values()) * 4);
    *output =
        std::make_shared<TensorJobOutput>(AcquireTensorJobOutput(*service.buffer_pool(), spec));
  } catch (const std::bad_alloc&) {
    const absl::Status status =
        absl::ResourceExhaustedError("out of memory for the job's input and output buffers");
    // A refusal like the admission's: its id never reached the client, so no record.
    (*job)->MarkFinished(status, std::nullopt, "");
    service.jobs()->Forget((*job)->id());
    job->reset();
    admission->reset();
    *input = {};
    return status;
  }
  return absl::OkStatus();
}

void RecordSuccess(QuantizerService& service, const api::TensorSpec& spec,
                   const TensorJobOutput& out, Job& job) {
  job.MarkFinished(absl::OkStatus(), out.summary.metrics, out.backend);
  if (ServerMetrics* m = service.metrics()) {
    m->TensorQuantized(static_cast<double>(spec.elements()),
                       static_cast<double>(spec.input_bytes() + spec.importance_values() * 4),
                       static_cast<double>(ResultBytes(spec)), out.summary.metrics.nmse,
                       ObjectiveGain(out.summary.metrics));
  }
}

// ---------------------------------------------------------------------------------------------
// Streaming tensor job. All state is guarded by mu_; gRPC operations (StartRead, StartWrite,
// Finish) are issued outside the lock, and Finish only once neither a read nor a write is in
// flight, as the last action of the method that issues it.
//
// Messages are raw (grpc::ByteBuffer): data and importance chunks are copied from the received
// slices straight into the job's buffers, and result chunks go out as slices of the job's
// output, with no protobuf copy in between (proto/chunk_wire.h). Other messages go through the
// generated code.
//
// Early results: when the header gives amax (so g and amax are known before the job runs), the
// result header and the packed chunks go out as the engine finishes rows (its rows_done
// reports), overlapping the download with the quantisation; scales, dequantized and metrics
// follow when the job is done. Otherwise all results go out after the job.
class TensorStreamReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
      public QuantizerService::WatchedUpload {
 public:
  TensorStreamReactor(QuantizerService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), start_(absl::Now()) {
    const absl::Status auth = service_->Authenticate(*context);
    {
      absl::MutexLock lock(&mu_);
      last_message_ = start_;
      if (!auth.ok()) {
        SetFinalLocked(auth);
      } else {
        read_in_flight_ = true;
      }
      // The constructor may issue its first operation directly (reactions and OnDone come
      // after it returns).
      if (read_in_flight_) {
        StartRead(&request_);
      } else {
        finished_ = true;
        Finish(api::ToGrpcStatus(*final_status_));
      }
    }
    // Last, without this call's lock (the watch list's comes first): nothing after it can throw
    // and leave a deleted call in the watch list.
    service_->WatchUpload(this);
  }

  void OnReadDone(bool ok) override {
    bool read_again = false;
    bool submit = false;
    {
      absl::MutexLock lock(&mu_);
      read_in_flight_ = false;
      if (ok) last_message_ = absl::Now();
      if (!ok) {
        if (phase_ != Phase::kDone && !final_status_) {
          SetFinalLocked(context_->IsCancelled()
                             ? ClientEndedCall(*context_)
                             : absl::InvalidArgumentError(absl::StrCat(
                                   "the request stream ended early: ", ProgressLocked())));
        }
      } else if (!final_status_ && !submitted_ && job_ && job_->cancel_requested()) {
        // CancelJob while the tensor is still arriving: stop reading (CancelJob's own sweep
        // skips a call busy with a chunk, as this one was).
        SetFinalLocked(CancelledWhileUploadingLocked());
      } else if (!final_status_) {
        const absl::Status status = HandleMessageLocked(&submit);
        if (!status.ok()) {
          SetFinalLocked(status);
        } else if (phase_ == Phase::kData && streaming_ &&
                   held_bytes_ > service_->options().stream_window_bytes &&
                   requested_data_ <= received_data_) {
          // Flow control: enough data is waiting for the engine, which is not waiting for
          // more. gRPC stops the client once its window fills; ResumeReadLocked restarts.
          read_paused_ = true;
        } else if (phase_ != Phase::kDone) {
          read_again = true;
          read_in_flight_ = true;
        }
      }
    }
    if (submit) Submit();
    if (read_again) StartRead(&request_);
    mu_.Lock();
    PumpAndUnlock();
  }

  void OnWriteDone(bool ok) override {
    mu_.Lock();
    write_in_flight_ = false;
    if (!ok) {
      // The client is gone: nothing more can be delivered.
      DropResultsLocked();
      if (!final_status_) SetFinalLocked(absl::CancelledError("the client stopped reading"));
    }
    PumpAndUnlock();
  }

  void OnCancel() override {
    std::shared_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      job = job_;
      cancel_sent_ = true;
      DropResultsLocked();
      if (phase_ != Phase::kDone && !final_status_) SetFinalLocked(ClientEndedCall(*context_));
    }
    if (job) {
      job->RequestCancel();
      service_->scheduler()->CancelQueued(*job);  // may call OnJobDone here
    }
    mu_.Lock();
    PumpAndUnlock();
  }

  // Nothing is held any more: chunks are only held once the job is submitted, and every
  // submitted job reports (OnJobDone releases them) before the call can finish.
  void OnDone() override {
    service_->UnwatchUpload(this);
    delete this;
  }

  bool ExpireIfStalledOrCancelled(absl::Time now, absl::Duration idle) override {
    // A call whose lock is busy is handling a message (progress) or finishing: not idle. The
    // sweep never waits for a chunk copy or an admission with the watch list locked.
    if (!mu_.TryLock()) return false;
    // A call that never sends its header holds no job, but it holds a call slot and a drain
    // waits for it: it expires like a stalled upload.
    const bool receiving = !final_status_ && !submitted_;
    // A job cancelled (CancelJob) before its tensor is complete is never submitted, so nothing
    // else would end its call before the client's next chunk.
    const bool cancelled = receiving && job_ && job_->cancel_requested();
    const bool idle_upload = receiving && !cancelled && now - last_message_ > idle;
    if (cancelled) {
      SetFinalLocked(CancelledWhileUploadingLocked());
    } else if (idle_upload) {
      SetFinalLocked(absl::DeadlineExceededError(absl::StrCat(
          "no tensor data for ", absl::FormatDuration(idle), " (", ProgressLocked(), ")")));
    }
    // PumpAndUnlock does not finish the call (and so delete it) meanwhile.
    if (cancelled || idle_upload) expiring_ = true;
    mu_.Unlock();
    return cancelled || idle_upload;
  }

  void EndExpired() override {
    // The job was never submitted: nothing else reads its buffers. They go back to the pool
    // before the reservation that covers them is released.
    std::shared_ptr<Scheduler::Admission> admission;
    TensorJobInput input;
    std::shared_ptr<TensorJobOutput> output;
    {
      absl::MutexLock lock(&mu_);
      admission = std::move(admission_);
      input = std::move(input_);
      output = std::move(engine_output_);
    }
    input = {};
    output.reset();
    admission.reset();
    context_->TryCancel();  // ends the read waiting for data that does not come
    mu_.Lock();
    expiring_ = false;
    PumpAndUnlock();
  }

 private:
  // Reading progress. A job is submitted when its data is complete, or, when its global scale
  // is known from the header (amax or global_scale), as soon as the importance is complete, so
  // the engine quantises rows while later ones still arrive.
  enum class Phase { kHeader, kImportance, kData, kDone };
  enum class Section { kResult, kPacked, kScales, kDequantized, kMetrics, kEnd };

  std::string ProgressLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (phase_ == Phase::kHeader) return "no header";
    return absl::StrCat(received_importance_, " of ", input_.spec.importance_values() * 4,
                        " importance bytes and ", received_data_, " of ", input_.spec.input_bytes(),
                        " data bytes received");
  }

  // Validates and stores one request message; *submit when the input is complete.
  absl::Status HandleMessageLocked(bool* submit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // A byte chunk is taken from its slices; anything else is parsed.
    std::optional<api::BytesFieldView> chunk = api::AsSingleBytesField(request_);
    uint32_t field = 0;
    if (chunk && (chunk->field_number() == StreamRequest::kDataFieldNumber ||
                  chunk->field_number() == StreamRequest::kImportanceFieldNumber)) {
      field = chunk->field_number();
    } else {
      chunk.reset();
      message_.Clear();
      if (!grpc::SerializationTraits<StreamRequest>::Deserialize(&request_, &message_).ok()) {
        return absl::InvalidArgumentError(
            "a request message is not a valid nvfp4.v1.QuantizeTensorRequest");
      }
      field = static_cast<uint32_t>(message_.payload_case());  // oneof cases are field numbers
    }
    const std::string* parsed_bytes = field == StreamRequest::kDataFieldNumber ? &message_.data()
                                      : field == StreamRequest::kImportanceFieldNumber
                                          ? &message_.importance()
                                          : nullptr;
    const size_t chunk_size = chunk ? chunk->size() : parsed_bytes ? parsed_bytes->size() : 0;
    // The engine reads the chunk later (or it is the last one and the engine starts from the
    // beginning): keep it out of the caches the engine is using.
    auto copy_chunk = [&](uint8_t* dst) {
      if (chunk) {
        chunk->ForEachPiece([&dst](const uint8_t* data, size_t n) {
          CopyBypassingCache(dst, data, n);
          dst += n;
        });
      } else {
        CopyBypassingCache(dst, parsed_bytes->data(), parsed_bytes->size());
      }
    };
    switch (phase_) {
      case Phase::kHeader: {
        if (field != StreamRequest::kHeaderFieldNumber) {
          return absl::InvalidArgumentError("the first message must carry the header");
        }
        absl::StatusOr<api::TensorSpec> spec = api::SpecFromHeader(message_.header());
        if (!spec.ok()) return spec.status();
        const absl::Status deadline = CheckDeadline(*context_);
        if (!deadline.ok()) return deadline;
        streaming_ = KnownGlobalScale(spec->options).has_value();
        const absl::Status admitted =
            AdmitTensorJob(*service_, *spec, streaming_, &job_, &admission_, &input_, &output_);
        if (!admitted.ok()) return admitted;
        engine_output_ = output_;
        row_bytes_ = spec->row_bytes();
        StreamResponse accepted;
        accepted.mutable_accepted()->set_job_id(job_->id());
        accepted.mutable_accepted()->set_queue_position(
            static_cast<uint32_t>(admission_->queue_position()));
        outbox_.push_back(SerializeResponse(accepted));
        phase_ = input_.spec.importance_values() > 0 ? Phase::kImportance : Phase::kData;
        if (streaming_ && input_.spec.want_packed) announced_ = AnnouncedScales(input_.spec);
        // Without early results, row reports only release held chunks (release_rows_).
        if (!announced_) wake_rows_.store(std::numeric_limits<int64_t>::max());
        if (streaming_ && phase_ == Phase::kData) *submit = SubmitOnceLocked();
        return absl::OkStatus();
      }
      case Phase::kImportance: {
        if (field != StreamRequest::kImportanceFieldNumber) {
          return absl::InvalidArgumentError(
              "expected importance chunks (header.importance_layout is set) before the data");
        }
        const int64_t total = input_.spec.importance_values() * 4;
        RETURN_IF_ERROR(CheckChunk("importance", chunk_size, received_importance_, total));
        copy_chunk(input_.importance.data() + received_importance_);
        received_importance_ += static_cast<int64_t>(chunk_size);
        if (received_importance_ == total) {
          phase_ = Phase::kData;
          if (streaming_) *submit = SubmitOnceLocked();
        }
        return absl::OkStatus();
      }
      case Phase::kData: {
        if (field != StreamRequest::kDataFieldNumber) {
          return absl::InvalidArgumentError(field == StreamRequest::kHeaderFieldNumber
                                                ? "a second header in the same stream"
                                                : "expected tensor data chunks");
        }
        const int64_t total = input_.spec.input_bytes();
        RETURN_IF_ERROR(CheckChunk("data", chunk_size, received_data_, total));
        if (streaming_) {
          // Kept as received; the engine reads it in place (ReadRows).
          if (held_.empty()) release_rows_.store(RowsCovering(received_data_ + chunk_size));
          held_.push_back(
              {received_data_,
               chunk ? std::move(*chunk) : api::BytesFieldView::Copying(field, *parsed_bytes)});
          held_bytes_ += static_cast<int64_t>(chunk_size);
          service_->StreamHeld(static_cast<int64_t>(chunk_size));
        } else {
          copy_chunk(input_.data.data() + received_data_);
        }
        received_data_ += static_cast<int64_t>(chunk_size);
        if (received_data_ == total) {
          phase_ = Phase::kDone;
          *submit = SubmitOnceLocked();
        }
        return absl::OkStatus();
      }
      case Phase::kDone:
        return absl::InvalidArgumentError("more messages after the tensor was complete");
    }
    return absl::InternalError("unreachable");
  }

  absl::Status CheckChunk(const char* what, size_t size, int64_t received, int64_t total) const {
    if (size == 0) return absl::InvalidArgumentError(absl::StrCat("empty ", what, " chunk"));
    if (static_cast<int64_t>(size) > service_->options().max_chunk_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(what, " chunk of ", size,
                                                     " bytes exceeds the limit of ",
                                                     service_->options().max_chunk_bytes));
    }
    if (received + static_cast<int64_t>(size) > total) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " chunks exceed the ", total, " bytes that header.shape and header.dtype imply"));
    }
    return absl::OkStatus();
  }

  bool SubmitOnceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (submitted_) return false;
    submitted_ = true;
    return true;
  }

  // Bytes of rows [0, n).
  int64_t RowBytes(int64_t n) const { return n * row_bytes_; }
  // Rows that must be done before the data byte `end` is no longer needed.
  int64_t RowsCovering(int64_t end) const { return (end + row_bytes_ - 1) / row_bytes_; }

  // Restarts a read paused by flow control, unless the call is failing. True if the caller
  // must StartRead (after releasing the lock; the reactor cannot finish meanwhile: a read is
  // in flight).
  bool ResumeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!read_paused_ || final_status_) return false;
    read_paused_ = false;
    read_in_flight_ = true;
    return true;
  }

  // RowSource of a streaming job (engine threads): blocks until rows [0, end) are in, then hands
  // out the held chunks' pieces of rows [begin, end). Returns false (the job is then
  // cancelled) when the call failed, the job was cancelled (CancelJob), or no data came for
  // options().upload_idle_timeout, which also ends the call with DEADLINE_EXCEEDED: a stalled
  // client must not hold a worker.
  bool ReadRows(int64_t begin, int64_t end, RowSource::PieceFn piece) {
    const int64_t needed = RowBytes(end);
    mu_.Lock();
    requested_data_ = std::max(requested_data_, needed);
    if (needed > received_data_ && ResumeReadLocked()) {
      mu_.Unlock();
      StartRead(&request_);
      mu_.Lock();
    }
    auto ready = [this, needed]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return received_data_ >= needed || final_status_.has_value();
    };
    int64_t last_received = received_data_;
    absl::Time last_progress = absl::Now();
    bool stalled = false;
    while (!ready() && !job_->cancel_requested()) {
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
      const absl::Time now = absl::Now();
      if (received_data_ != last_received) {
        last_received = received_data_;
        last_progress = now;
      } else if (!ready() && now - last_progress > service_->options().upload_idle_timeout) {
        SetFinalLocked(absl::DeadlineExceededError(absl::StrCat(
            "no tensor data for ", absl::FormatDuration(service_->options().upload_idle_timeout),
            " (", ProgressLocked(), ")")));
        stalled = true;
      }
    }
    const bool complete = received_data_ >= needed && !job_->cancel_requested();
    if (complete) {
      // Held chunks are in byte order; rows the engine reads were never released (it reports
      // rows done only after reading them).
      const int64_t from = RowBytes(begin);
      auto chunk = std::partition_point(held_.begin(), held_.end(),
                                        [from](const HeldChunk& c) { return HeldEnd(c) <= from; });
      for (; chunk != held_.end() && chunk->begin < needed; ++chunk) {
        const int64_t size = static_cast<int64_t>(chunk->bytes.size());
        chunk->bytes.ForEachPieceIn(static_cast<size_t>(std::max<int64_t>(from - chunk->begin, 0)),
                                    static_cast<size_t>(std::min(needed - chunk->begin, size)),
                                    piece);
      }
    }
    mu_.Unlock();
    // Ends the pending read (OnCancel), so the call can finish once the job reports. The
    // reactor stays alive: it cannot finish before this job has reported.
    if (stalled) context_->TryCancel();
    return complete;
  }

  // Drops the held chunks that end at or before data byte `done`.
  void ReleaseHeldLocked(int64_t done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t before = held_bytes_;
    while (!held_.empty() && HeldEnd(held_.front()) <= done) {
      held_bytes_ -= static_cast<int64_t>(held_.front().bytes.size());
      held_.pop_front();
    }
    release_rows_.store(held_.empty() ? std::numeric_limits<int64_t>::max()
                                      : RowsCovering(HeldEnd(held_.front())));
    if (held_bytes_ != before) service_->StreamHeld(held_bytes_ - before);
  }

  // From an engine thread: rows [0, rows) of the output are final (and their input was read).
  // Takes the lock only when that completes the next packed chunk (wake_rows_) or lets a held
  // chunk go (release_rows_), not for every engine chunk.
  void OnRowsDone(int64_t rows) {
    int64_t seen = rows_done_.load();
    while (rows > seen && !rows_done_.compare_exchange_weak(seen, rows)) {
    }
    if (rows < wake_rows_.load() && rows < release_rows_.load()) return;
    mu_.Lock();
    bool resume = false;
    if (rows_done_.load() >= release_rows_.load()) {
      ReleaseHeldLocked(RowBytes(rows_done_.load()));
      if (held_bytes_ <= service_->options().stream_window_bytes) resume = ResumeReadLocked();
    }
    PumpAndUnlock();  // cannot finish the call: the job has not reported yet
    if (resume) StartRead(&request_);
  }

  void Submit() {
    Scheduler::Task task;
    std::shared_ptr<Scheduler::Admission> admission;
    std::shared_ptr<TensorJobOutput> output;
    {
      absl::MutexLock lock(&mu_);
      admission = admission_;
      output = engine_output_;  // never dropped before the job reports (output_ may be)
    }
    // The task keeps the output alive while the engine writes it, even if the call drops it.
    task.run = [this, output](QuantizerBackend& engine) {
      if (!streaming_) {
        OnJobDone(RunTensorJob(input_, *output, *job_, engine));
        return;
      }
      class Rows final : public RowSource {
       public:
        explicit Rows(TensorStreamReactor* reactor) : reactor_(reactor) {}
        bool ReadRows(int64_t begin, int64_t end, PieceFn piece) override {
          return reactor_->ReadRows(begin, end, piece);
        }

       private:
        TensorStreamReactor* const reactor_;
      } rows(this);
      const QuantizerBackend::RowsDoneFn rows_done = [this](int64_t n) { OnRowsDone(n); };
      OnJobDone(RunTensorJob(input_, *output, *job_, engine, &rows, &rows_done));
    };
    task.abandon = [this](const absl::Status& status) { OnJobDone(status); };
    service_->scheduler()->Submit(std::move(admission), std::move(task));
  }

  // Called on a worker thread (or where a queued job is abandoned), not in a reaction: the
  // state update and the next gRPC operation happen under one lock hold, because once the
  // lock is released without a write in flight the reactor may finish and be deleted.
  void OnJobDone(absl::Status status) {
    mu_.Lock();
    // A job cancelled (CancelJob) while the client's upload is still open: the read waiting
    // for its next chunk would hold the call, until the upload-idle timeout when the client
    // has stalled. The outcome is CANCELLED either way, so the read is ended now. The final
    // status is set first, so that OnCancel does not record the call as ended by the client.
    if (status.code() == absl::StatusCode::kCancelled && !final_status_ && read_in_flight_ &&
        !context_->IsCancelled()) {
      SetFinalLocked(status);
      mu_.Unlock();
      context_->TryCancel();  // the job has not reported: the call cannot finish meanwhile
      mu_.Lock();
    }
    job_reported_ = true;
    engine_output_.reset();  // the task holds its own reference until it returns
    // The engine is done with the input (reactions stop writing it once the job ran): back to
    // the pool now, not when the call winds down, so the client's next tensor can reuse it.
    input_.data = {};
    input_.importance = {};
    ReleaseHeldLocked(std::numeric_limits<int64_t>::max());
    if (status.ok() && output_ && announced_ &&
        (absl::bit_cast<uint32_t>(output_->summary.global_scale) !=
             absl::bit_cast<uint32_t>(announced_->global_scale) ||
         absl::bit_cast<uint32_t>(output_->summary.amax) !=
             absl::bit_cast<uint32_t>(announced_->amax))) {
      // The header already sent must be the engine's; an engine deriving g differently is a bug.
      status = absl::InternalError(
          absl::StrCat("the engine's global scale ", output_->summary.global_scale, " / amax ",
                       output_->summary.amax, " differ from the announced ",
                       announced_->global_scale, " / ", announced_->amax));
    }
    if (!status.ok()) {
      SetFinalLocked(context_->IsCancelled() && status.code() == absl::StatusCode::kCancelled
                         ? ClientEndedCall(*context_)
                         : status);
    } else if (!final_status_ && output_) {
      RecordSuccess(*service_, input_.spec, *output_, *job_);
      SetFinalLocked(absl::OkStatus());
    }
    PumpAndUnlock();
  }

  void DropResultsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    outbox_.clear();
    output_.reset();
  }

  absl::Status CancelledWhileUploadingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::CancelledError(absl::StrCat(
        "the job was cancelled while its tensor was uploading (", ProgressLocked(), ")"));
  }

  // Decides the RPC's outcome (once) and records it.
  void SetFinalLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (final_status_) return;
    final_status_ = status;
    if (!status.ok()) {
      outbox_.clear();
      output_.reset();
      if (job_) job_->MarkFinished(status, std::nullopt, "");
    }
    service_->RecordOutcome(status, job_.get(), absl::ToDoubleSeconds(absl::Now() - start_));
  }

  struct Bytes {
    const uint8_t* data;
    size_t size;
  };

  // What a byte section sends (nothing when not asked for).
  Bytes SectionBytesLocked(Section section) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const TensorJobOutput& o = *output_;
    const api::TensorSpec& spec = input_.spec;
    switch (section) {
      case Section::kPacked:
        return {o.packed.data(), static_cast<size_t>(ResultPackedBytes(spec))};
      case Section::kScales:
        return {o.scales.data(), static_cast<size_t>(ResultScaleBytes(spec))};
      case Section::kDequantized:
        return {o.dequantized.data(), static_cast<size_t>(spec.dequantized_bytes())};
      default:
        return {nullptr, 0};
    }
  }

  // The job succeeded: the only way the call's outcome becomes OK.
  bool JobSucceededLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return final_status_.has_value() && final_status_->ok();
  }

  // Bytes of a section that are final: all once the job succeeded; before that, with early
  // results, the packed bytes of the rows the engine reported done.
  size_t FinalBytesLocked(Section section, size_t section_bytes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (JobSucceededLocked()) return section_bytes;
    if (!announced_ || section != Section::kPacked) return 0;
    return static_cast<size_t>(rows_done_.load() * (PaddedCols(input_.spec.cols) / 2));
  }

  // Before the job is done: have OnRowsDone pump once `rows` rows are done (no wake-up for
  // other sections: OnJobDone pumps). True if they already are (the report raced this call).
  bool WakeAtRowsLocked(int64_t rows) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    wake_rows_.store(rows);
    return rows_done_.load() >= rows;
  }

  static grpc::ByteBuffer SerializeResponse(const StreamResponse& message) {
    grpc::ByteBuffer buffer;
    bool own_buffer = false;
    // Cannot fail for a message this code built (no size limit is near).
    (void)grpc::SerializationTraits<StreamResponse>::Serialize(message, &buffer, &own_buffer);
    return buffer;
  }

  // A slice of the job's output that keeps the output alive while gRPC holds it.
  grpc::Slice OutputSliceLocked(const uint8_t* data, size_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    using Holder = std::shared_ptr<TensorJobOutput>;
    return grpc::Slice(
        const_cast<uint8_t*>(data), size, [](void* holder) { delete static_cast<Holder*>(holder); },
        new Holder(output_));
  }

  // Next result message, if any.
  bool NextMessageLocked(grpc::ByteBuffer* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!outbox_.empty()) {
      *out = std::move(outbox_.front());
      outbox_.pop_front();
      return true;
    }
    if (!output_ || (final_status_ && !final_status_->ok())) return false;
    if (!JobSucceededLocked() && !announced_) return false;
    const api::TensorSpec& spec = input_.spec;
    const int64_t packed_row_bytes = PaddedCols(spec.cols) / 2;
    for (;;) {
      switch (section_) {
        case Section::kResult: {
          if (!JobSucceededLocked() && rows_done_.load() == 0 && !WakeAtRowsLocked(1)) return false;
          const QuantizedSummary& scales = JobSucceededLocked() ? output_->summary : *announced_;
          StreamResponse message;
          FillResultHeader(spec, scales.global_scale, scales.amax, message.mutable_result());
          *out = SerializeResponse(message);
          section_ = Section::kPacked;
          return true;
        }
        case Section::kPacked:
        case Section::kScales:
        case Section::kDequantized: {
          // The byte sections, each sent in chunks; an empty one is skipped.
          const Bytes bytes = SectionBytesLocked(section_);
          if (bytes.size > 0) {
            // The whole message (payload + field tag and length) stays within max_chunk_bytes,
            // so clients with gRPC's default 4 MiB receive limit can read every chunk.
            const size_t n = std::min(
                static_cast<size_t>(service_->options().max_chunk_bytes) - kResultChunkFramingBytes,
                bytes.size - offset_);
            if (FinalBytesLocked(section_, bytes.size) < offset_ + n) {
              // Not final yet (early results): wait for the rows that complete this chunk.
              const int64_t rows =
                  section_ == Section::kPacked
                      ? static_cast<int64_t>(offset_ + n + packed_row_bytes - 1) / packed_row_bytes
                      : std::numeric_limits<int64_t>::max();
              if (!WakeAtRowsLocked(rows)) return false;
              continue;
            }
            const uint32_t field = section_ == Section::kPacked ? StreamResponse::kPackedFieldNumber
                                   : section_ == Section::kScales
                                       ? StreamResponse::kScalesFieldNumber
                                       : StreamResponse::kDequantizedFieldNumber;
            *out = api::SingleBytesFieldMessage(field, OutputSliceLocked(bytes.data + offset_, n));
            offset_ += n;
          }
          if (offset_ == bytes.size) {
            section_ = static_cast<Section>(static_cast<int>(section_) + 1);
            offset_ = 0;
          }
          if (bytes.size > 0) return true;
          continue;
        }
        case Section::kMetrics: {
          if (!JobSucceededLocked()) return false;
          StreamResponse message;
          FillMetrics(*output_, *job_, message.mutable_metrics());
          *out = SerializeResponse(message);
          section_ = Section::kEnd;
          return true;
        }
        case Section::kEnd:
          output_.reset();  // results sent: free them before the RPC winds down
          return false;
      }
    }
  }

  // With mu_ held: releases it and then starts the next write, finishes the RPC when
  // everything is written and nothing is in flight, or cancels a submitted job whose call
  // failed. Must be the last thing its caller does.
  void PumpAndUnlock() ABSL_UNLOCK_FUNCTION(mu_) {
    if (final_status_ && !final_status_->ok() && submitted_ && !job_reported_ && !cancel_sent_) {
      // The call failed (bad chunk, early end, client gone) after submission: stop the job;
      // the call finishes when it reports. Reactions and OnRowsDone (engine threads) get here,
      // never OnJobDone (it has reported).
      cancel_sent_ = true;
      std::shared_ptr<Job> job = job_;
      job->RequestCancel();
      mu_.Unlock();
      service_->scheduler()->CancelQueued(*job);
      return;
    }
    if (finished_ || write_in_flight_) {
      mu_.Unlock();
      return;
    }
    if (NextMessageLocked(&current_)) {
      write_in_flight_ = true;
      // No row reports needed until this write is done (OnWriteDone pumps and re-arms).
      wake_rows_.store(std::numeric_limits<int64_t>::max());
      mu_.Unlock();
      StartWrite(&current_);
      return;
    }
    if (!final_status_ || read_in_flight_ || expiring_ || (submitted_ && !job_reported_)) {
      mu_.Unlock();
      return;
    }
    finished_ = true;
    const grpc::Status status = api::ToGrpcStatus(*final_status_);
    mu_.Unlock();
    Finish(status);
  }

  QuantizerService* const service_;
  const QuantizerService::ActiveCall active_call_{service_};
  grpc::CallbackServerContext* const context_;
  const absl::Time start_;
  grpc::ByteBuffer request_;  // the read in flight
  StreamRequest message_;     // request_ parsed, when it is not a byte chunk
  grpc::ByteBuffer current_;  // the write in flight

  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kHeader;
  bool read_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_sent_ ABSL_GUARDED_BY(mu_) = false;   // the job was told to stop
  bool job_reported_ ABSL_GUARDED_BY(mu_) = false;  // the submitted job called OnJobDone
  bool expiring_ ABSL_GUARDED_BY(mu_) = false;  // between ExpireIfStalledOrCancelled and EndExpired
  absl::Time last_message_ ABSL_GUARDED_BY(mu_);  // when the last message was read
  bool streaming_ = false;                        // set with the header, before submission
  std::optional<absl::Status> final_status_ ABSL_GUARDED_BY(mu_);
  std::deque<grpc::ByteBuffer> outbox_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Job> job_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Scheduler::Admission> admission_ ABSL_GUARDED_BY(mu_);
  TensorJobInput input_;  // written by reactions before submission, read by the worker after
  int64_t received_importance_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t received_data_ ABSL_GUARDED_BY(mu_) = 0;
  // Allocated at admission; shared with the running job and the result slices gRPC holds.
  // output_ is what the call sends (dropped when the call fails); engine_output_ is what the job
  // writes, kept until the job reports so a call failing around submission cannot hand the
  // job a null output.
  std::shared_ptr<TensorJobOutput> output_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<TensorJobOutput> engine_output_ ABSL_GUARDED_BY(mu_);
  // Early results: g and amax the header announces before the job is done (set with the
  // header, before submission).
  std::optional<QuantizedSummary> announced_;
  // Streaming jobs: the data chunks received and not yet released, kept as gRPC delivered them
  // (no copy), in byte order. A chunk goes once the engine reports all its rows done; reading
  // pauses (flow control) while more than options().stream_window_bytes are held and the engine
  // waits for nothing (requested_data_).
  struct HeldChunk {
    int64_t begin;  // byte offset of the chunk in the tensor's data
    api::BytesFieldView bytes;
  };
  static int64_t HeldEnd(const HeldChunk& chunk) {
    return chunk.begin + static_cast<int64_t>(chunk.bytes.size());
  }
  std::deque<HeldChunk> held_ ABSL_GUARDED_BY(mu_);
  int64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t requested_data_ ABSL_GUARDED_BY(mu_) = 0;  // bytes an engine thread has asked for
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  int64_t row_bytes_ = 1;  // set with the header, before submission
  // OnRowsDone takes the lock from this many rows on to release held_.front().
  std::atomic<int64_t> release_rows_{std::numeric_limits<int64_t>::max()};
  std::atomic<int64_t> rows_done_{0};  // rows the engine reported final
  // OnRowsDone pumps from this many rows on (re-armed by NextMessageLocked when it waits).
  std::atomic<int64_t> wake_rows_{0};
  Section section_ ABSL_GUARDED_BY(mu_) = Section::kResult;
  size_t offset_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------------------------
// Unary tensor job: the whole tensor in one message.
class TensorUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  TensorUnaryReactor(QuantizerService* service, grpc::CallbackServerContext* context,
                     const v1::QuantizeTensorUnaryRequest* request,
                     v1::QuantizeTensorUnaryResponse* response)
      : service_(service), context_(context), response_(response), start_(absl::Now()) {
    const absl::Status status = Start(*request);
    if (!status.ok()) {
      service_->RecordOutcome(status, job_.get(), absl::ToDoubleSeconds(absl::Now() - start_));
      Finish(api::ToGrpcStatus(status));
      return;
    }
    Scheduler::Task task;
    task.run = [this](QuantizerBackend& engine) {
      OnJobDone(RunTensorJob(input_, *output_, *job_, engine));
    };
    task.abandon = [this](const absl::Status& status) { OnJobDone(status); };
    service_->scheduler()->Submit(admission_, std::move(task));
  }

  void OnCancel() override {
    {
      // Why, decided now: by the time the job reports, a distant deadline may be near.
      absl::MutexLock lock(&ended_mu_);
      client_ended_ = ClientEndedCall(*context_);
    }
    if (!job_) return;
    job_->RequestCancel();
    service_->scheduler()->CancelQueued(*job_);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Start(const v1::QuantizeTensorUnaryRequest& request) {
    RETURN_IF_ERROR(service_->Authenticate(*context_));
    ASSIGN_OR_RETURN(api::TensorSpec spec, api::SpecFromHeader(request.header()));
    if (static_cast<int64_t>(request.data().size()) != spec.input_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("data has ", request.data().size(),
                                                     " bytes; header.shape and header.dtype imply ",
                                                     spec.input_bytes()));
    }
    if (static_cast<int64_t>(request.importance().size()) != spec.importance_values() * 4) {
      return absl::InvalidArgumentError(absl::StrCat("importance has ", request.importance().size(),
                                                     " bytes; header.importance_layout "
                                                     "implies ",
                                                     spec.importance_values() * 4));
    }
    // The response is one message too: refuse now what the send limit would refuse after the
    // work (a RESOURCE_EXHAUSTED then would be retried, and the job redone, in vain).
    const int64_t response_bytes =
        ResultPackedBytes(spec) + ResultScaleBytes(spec) + spec.dequantized_bytes();
    if (response_bytes > service_->options().max_message_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the result (", response_bytes, " bytes) would exceed the largest message (",
                       service_->options().max_message_bytes,
                       " bytes, limits.max_message_bytes): use the streamed QuantizeTensor"));
    }
    RETURN_IF_ERROR(CheckDeadline(*context_));
    RETURN_IF_ERROR(
        AdmitTensorJob(*service_, spec, /*streamed=*/false, &job_, &admission_, &input_, &output_));
    std::memcpy(input_.data.data(), request.data().data(), request.data().size());
    if (!request.importance().empty()) {
      std::memcpy(input_.importance.data(), request.importance().data(),
                  request.importance().size());
    }
    return absl::OkStatus();
  }

  void OnJobDone(const absl::Status& status) {
    if (status.ok()) {
      const api::TensorSpec& spec = input_.spec;
      const TensorJobOutput& out = *output_;
      RecordSuccess(*service_, spec, out, *job_);
      response_->set_job_id(job_->id());
      FillResultHeader(spec, out.summary.global_scale, out.summary.amax,
                       response_->mutable_result());
      response_->set_packed(out.packed.data(), static_cast<size_t>(ResultPackedBytes(spec)));
      response_->set_scales(out.scales.data(), static_cast<size_t>(ResultScaleBytes(spec)));
      response_->set_dequantized(out.dequantized.data(),
                                 static_cast<size_t>(spec.dequantized_bytes()));
      FillMetrics(out, *job_, response_->mutable_metrics());
      // The response holds the bytes now: the buffers go back to the pool before it is sent.
      output_.reset();
      input_ = {};
      service_->RecordOutcome(status, job_.get(), absl::ToDoubleSeconds(absl::Now() - start_));
      Finish(api::ToGrpcStatus(status));
      return;
    }
    // A job the client stopped (its deadline, or a cancel) is recorded as such.
    absl::Status final_status = status;
    if (status.code() == absl::StatusCode::kCancelled) {
      absl::MutexLock lock(&ended_mu_);
      if (client_ended_) final_status = *client_ended_;
    }
    job_->MarkFinished(final_status, std::nullopt, "");
    service_->RecordOutcome(final_status, job_.get(), absl::ToDoubleSeconds(absl::Now() - start_));
    Finish(api::ToGrpcStatus(final_status));
  }

  QuantizerService* const service_;
  const QuantizerService::ActiveCall active_call_{service_};
  grpc::CallbackServerContext* const context_;
  v1::QuantizeTensorUnaryResponse* const response_;
  const absl::Time start_;
  std::shared_ptr<Job> job_;
  std::shared_ptr<Scheduler::Admission> admission_;
  TensorJobInput input_;
  std::shared_ptr<TensorJobOutput> output_;
  absl::Mutex ended_mu_;
  std::optional<absl::Status> client_ended_ ABSL_GUARDED_BY(ended_mu_);  // set by OnCancel
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(api::ToGrpcStatus(status));
  return reactor;
}

}  // namespace

namespace {
// A chunk never exceeds the largest message: with --max-message-mib below 4 the advertised chunk
// size shrinks with it (else every streamed upload would be refused by gRPC's own limit).
ServiceOptions WithConsistentLimits(ServiceOptions options) {
  options.max_chunk_bytes = std::min(options.max_chunk_bytes, options.max_message_bytes);
  // Room for a result chunk's framing (kResultChunkFramingBytes) and some payload.
  options.max_chunk_bytes = std::max<int64_t>(options.max_chunk_bytes, 4096);
  return options;
}
}  // namespace

QuantizerService::QuantizerService(const ServiceOptions& options, Scheduler* scheduler,
                                   JobRegistry* jobs, ServerMetrics* metrics)
    : options_(WithConsistentLimits(options)),
      scheduler_(scheduler),
      jobs_(jobs),
      metrics_(metrics),
      // Idle buffers and the admitted jobs' reservations together stay within the budget.
      buffer_pool_(static_cast<size_t>(scheduler->options().memory_budget_bytes),
                   options.buffer_idle_release,
                   [scheduler] { return static_cast<size_t>(scheduler->reserved_bytes()); }),
      engines_copy_outputs_(
          std::any_of(scheduler->engines().begin(), scheduler->engines().end(),
                      [](const auto& engine) { return !engine->quantizes_in_place(); })) {}

int64_t QuantizerService::ReservedBytes(const api::TensorSpec& spec, bool streamed) const {
  if (engines_copy_outputs_) {
    // Such an engine gathers a streamed input into one buffer (and the received chunks stay
    // until it is done), and holds a second copy of the outputs.
    return spec.job_bytes() + spec.output_bytes() + (streamed ? spec.input_bytes() : 0);
  }
  if (!streamed) return spec.job_bytes();
  // Held chunks: the flow-control window, the message that crosses it, and the rows the
  // engine's threads read at once (up to 64 threads, each reading whole rows of >= 256 KiB).
  const int64_t held = std::min(spec.input_bytes(),
                                options_.stream_window_bytes + options_.max_chunk_bytes +
                                    64 * std::max<int64_t>(spec.row_bytes(), int64_t{256} << 10));
  return spec.job_bytes() - spec.input_bytes() + held;
}

void QuantizerService::StreamHeld(int64_t delta) {
  const int64_t now = stream_held_bytes_.fetch_add(delta) + delta;
  int64_t peak = stream_held_peak_bytes_.load();
  while (now > peak && !stream_held_peak_bytes_.compare_exchange_weak(peak, now)) {
  }
  if (metrics_ != nullptr) metrics_->SetStreamHeldBytes(static_cast<double>(now));
}

void QuantizerService::WatchUpload(WatchedUpload* upload) {
  absl::MutexLock lock(&uploads_mu_);
  uploads_.insert(upload);
}

void QuantizerService::UnwatchUpload(WatchedUpload* upload) {
  absl::MutexLock lock(&uploads_mu_);
  uploads_.erase(upload);
}

int QuantizerService::ExpireStalledUploads() {
  const absl::Time now = absl::Now();
  std::vector<WatchedUpload*> expired;
  {
    absl::MutexLock lock(&uploads_mu_);
    for (WatchedUpload* upload : uploads_) {
      if (upload->ExpireIfStalledOrCancelled(now, options_.upload_idle_timeout))
        expired.push_back(upload);
    }
  }
  // Alive without the watch list lock: an expiring call does not finish before EndExpired.
  for (WatchedUpload* upload : expired) upload->EndExpired();
  return static_cast<int>(expired.size());
}

absl::Status QuantizerService::Authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.auth_token.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  const std::string& expected = options_.auth_token;
  // The scheme name is case-insensitive (RFC 7235): "Bearer", "bearer", "BEARER".
  constexpr absl::string_view kScheme = "bearer ";
  if (it != metadata.end() && it->second.size() >= kScheme.size() &&
      absl::EqualsIgnoreCase(absl::string_view(it->second.data(), kScheme.size()), kScheme)) {
    const std::string_view got(it->second.data() + kScheme.size(),
                               it->second.size() - kScheme.size());
    // Constant-time comparison: the time taken does not reveal the matching prefix.
    unsigned char diff = got.size() == expected.size() ? 0 : 1;
    for (size_t i = 0; i < expected.size(); ++i) {
      diff |= static_cast<unsigned char>(expected[i] ^ (i < got.size() ? got[i] : 0));
    }
    if (diff == 0) return absl::OkStatus();
  }
  return absl::UnauthenticatedError(
      "missing or invalid bearer token (metadata 'authorization: Bearer <token>')");
}

void QuantizerService::RecordOutcome(const absl::Status& status, const Job* job, double seconds,
                                     const std::string& kind) {
  const std::string code = api::StatusCodeName(status.code());
  if (metrics_) {
    metrics_->JobFinished(kind, code, job ? std::optional(seconds) : std::nullopt);
  }
  const bool failed = !status.ok() && !absl::IsCancelled(status);
  if (options_.job_log == JobLog::kAll || (options_.job_log == JobLog::kFailed && job && failed)) {
    // One line, one write: lines of concurrent calls do not interleave.
    const std::string line =
        job ? absl::StrCat("nvfp4d: ", kind, " job ", job->id(), " '", job->name(), "' ", code,
                           " after ", absl::StrFormat("%.3f", seconds), " s",
                           status.ok() ? "" : ": ", status.message(), "\n")
            : absl::StrCat("nvfp4d: ", kind, " call refused: ", code, ": ", status.message(), "\n");
    std::fputs(line.c_str(), stderr);
  }
}

grpc::ServerWriteReactor<v1::QuantizeCheckpointResponse>* QuantizerService::QuantizeCheckpoint(
    grpc::CallbackServerContext* context, const v1::QuantizeCheckpointRequest* request) {
  return StartCheckpointRpc(this, context, request);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* QuantizerService::QuantizeTensor(
    grpc::CallbackServerContext* context) {
  return new TensorStreamReactor(this, context);
}

grpc::ServerUnaryReactor* QuantizerService::QuantizeTensorUnary(
    grpc::CallbackServerContext* context, const v1::QuantizeTensorUnaryRequest* request,
    v1::QuantizeTensorUnaryResponse* response) {
  return new TensorUnaryReactor(this, context, request, response);
}

absl::StatusOr<std::shared_ptr<Job>> QuantizerService::FindJob(
    const grpc::CallbackServerContext& context, const std::string& job_id) const {
  RETURN_IF_ERROR(Authenticate(context));
  std::shared_ptr<Job> job = jobs_->Find(job_id);
  if (!job) return absl::NotFoundError(absl::StrCat("no job '", job_id, "'"));
  return job;
}

grpc::ServerUnaryReactor* QuantizerService::GetJob(grpc::CallbackServerContext* context,
                                                   const v1::GetJobRequest* request,
                                                   v1::Job* response) {
  absl::StatusOr<std::shared_ptr<Job>> found = FindJob(*context, request->job_id());
  if (!found.ok()) return FinishNow(context, found.status());
  const std::shared_ptr<Job>& job = *found;
  *response = job->ToProto();
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* QuantizerService::ListJobs(grpc::CallbackServerContext* context,
                                                     const v1::ListJobsRequest* request,
                                                     v1::ListJobsResponse* response) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) return FinishNow(context, auth);
  std::vector<v1::JobState> states;
  for (int s : request->states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return FinishNow(context,
                       absl::InvalidArgumentError(absl::StrCat("states: unknown job state ", s)));
    }
    states.push_back(static_cast<v1::JobState>(s));
  }
  for (const auto& job : jobs_->List(states)) *response->add_jobs() = job->ToProto();
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* QuantizerService::CancelJob(grpc::CallbackServerContext* context,
                                                      const v1::CancelJobRequest* request,
                                                      v1::Job* response) {
  absl::StatusOr<std::shared_ptr<Job>> found = FindJob(*context, request->job_id());
  if (!found.ok()) return FinishNow(context, found.status());
  const std::shared_ptr<Job>& job = *found;
  if (!job->finished()) {
    job->RequestCancel();
    scheduler_->CancelQueued(*job);
    // A job still receiving its tensor ends now, not at the next housekeeping sweep.
    ExpireStalledUploads();
  }
  *response = job->ToProto();
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* QuantizerService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest*,
                                                          v1::ServerInfo* response) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) return FinishNow(context, auth);
  response->set_version(kVersion);
  for (const auto& engine : scheduler_->engines()) {
    v1::Device* device = response->add_devices();
    device->set_name(std::string(engine->name()));
    device->set_kind(std::string(engine->name()).rfind("cuda", 0) == 0 ? "cuda" : "cpu");
    device->set_workers(1);
  }
  for (const char* m : {"absmax", "four-over-six", "exhaustive", "scalesweep"}) {
    response->add_methods(m);
  }
  response->add_objectives("mse");
  response->add_objectives("wmse");
  v1::Limits* limits = response->mutable_limits();
  limits->set_max_chunk_bytes(options_.max_chunk_bytes);
  limits->set_max_message_bytes(options_.max_message_bytes);
  limits->set_max_tensor_bytes(scheduler_->options().max_job_bytes);
  limits->set_memory_budget_bytes(scheduler_->options().memory_budget_bytes);
  limits->set_max_queue(scheduler_->options().max_queue);
  limits->set_job_history(jobs_->history());
  response->set_auth_required(!options_.auth_token.empty());
  response->set_draining(scheduler_->draining());
  return FinishNow(context, absl::OkStatus());
}

}  // namespace nvfp4::server
