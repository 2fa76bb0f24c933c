#include "server/checkpoint/checkpoint_job.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_status.h"
#include "common/path_checks.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/numerics/global_scale.h"
#include "server/checkpoint/checkpoint_config.h"
#include "server/checkpoint/content_hash.h"
#include "server/checkpoint/safetensors.h"
#include "server/checkpoint/source_checkpoint.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr char kJournalName[] = ".nvfp4-journal.json";
constexpr char kLockName[] = ".nvfp4-lock";
// vLLM quantises activations with a fixed F = 448: input_scale = amax_x / (6 * 448).
constexpr float kActivationScaleDenominator = 6.0f * 448.0f;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::Status WriteTextAtomically(const std::string& path, const std::string& text) {
  return io::internal::WriteFileAtomically(path, {{text.data(), text.size()}});
}

absl::StatusOr<std::map<std::string, float>> LoadCalibration(const std::string& path,
                                                             std::string* text_out) {
  ASSIGN_OR_RETURN(*text_out, io::internal::ReadFileToString(path));
  const Json json = Json::parse(*text_out, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": calibration must be a JSON object {\"<module>\": activation amax, ...}"));
  }
  std::map<std::string, float> amax;
  for (const auto& item : json.items()) {
    if (!item.value().is_number() || !std::isfinite(item.value().get<double>()) ||
        item.value().get<double>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": '", item.key(), "' must map to a finite amax >= 0"));
    }
    amax[item.key()] = item.value().get<float>();
  }
  return amax;
}

// Touches one byte per page so the read (page-in) time is measured apart from the quantisation.
void TouchPages(const uint8_t* data, uint64_t bytes) {
  volatile uint8_t sink = 0;
  uint8_t acc = 0;
  for (uint64_t i = 0; i < bytes; i += 4096) acc ^= data[i];
  if (bytes > 0) acc ^= data[bytes - 1];
  sink = acc;
  (void)sink;
}

struct JournalShard {
  std::string hash;
  std::vector<TensorReport> tensors;
};

struct Journal {
  std::string plan_key;
  std::map<std::string, JournalShard> shards;
};

absl::StatusOr<Journal> LoadJournal(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, io::internal::ReadFileToString(path));
  const Json json = Json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("plan_key") ||
      !json.contains("shards")) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable journal"));
  }
  Journal journal;
  try {
    journal.plan_key = json.at("plan_key").get<std::string>();
    for (const auto& item : json.at("shards").items()) {
      JournalShard shard;
      shard.hash = item.value().at("hash").get<std::string>();
      for (const Json& t : item.value().at("tensors")) {
        ASSIGN_OR_RETURN(TensorReport report, TensorReportFromJson(t));
        shard.tensors.push_back(std::move(report));
      }
      journal.shards[item.key()] = std::move(shard);
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable journal: ", e.what()));
  }
  return journal;
}

absl::Status SaveJournal(const std::string& path, const Journal& journal) {
  Json json = Json::object();
  json["plan_key"] = journal.plan_key;
  Json shards = Json::object();
  for (const auto& [file, shard] : journal.shards) {
    Json tensors = Json::array();
    for (const TensorReport& t : shard.tensors) tensors.push_back(TensorReportToJson(t));
    shards[file] = Json::object({{"hash", shard.hash}, {"tensors", std::move(tensors)}});
  }
  json["shards"] = std::move(shards);
  return WriteTextAtomically(path, json.dump(1));
}

absl::Status CopyFile(const fs::path& from, const fs::path& to) {
  ASSIGN_OR_RETURN(const std::string bytes, io::internal::ReadFileToString(from.string()));
  std::error_code ec;
  fs::create_directories(to.parent_path(), ec);
  if (ec) return io::FileErrorCodeStatus(ec, to.parent_path().string(), "cannot create");
  return WriteTextAtomically(to.string(), bytes);
}

// One quantised tensor travelling from a worker to the writer.
struct Quantized {
  absl::StatusOr<QuantizedTensor> result = absl::UnknownError("not run");
  double seconds = 0;
  double read_seconds = 0;
  bool weighted = false;  // an importance vector was used
  bool ready = false;
};

// "a, b, c, d, e, ...": the first names of a list for a message.
std::string FirstNames(const std::vector<std::string>& names, size_t most = 5) {
  const std::vector<std::string> first(names.begin(), names.begin() + std::min(names.size(), most));
  return absl::StrCat(absl::StrJoin(first, ", "), names.size() > most ? ", ..." : "");
}

class Job {
 public:
  Job(const CheckpointJobOptions& options, QuantizerBackend& backend,
      const CheckpointProgressFn& progress, const std::atomic<bool>* cancelled)
      : options_(options), backend_(backend), progress_(progress), cancelled_(cancelled) {}
  ~Job() {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  // Runs the job. A failed or cancelled job whose staging directory holds no finished shard
  // removes that directory (it has nothing to resume), so a bad input leaves no litter.
  absl::StatusOr<CheckpointReport> Run();

 private:
  absl::StatusOr<CheckpointReport> RunSteps();
  bool Cancelled() const { return cancelled_ != nullptr && cancelled_->load(); }
  void Emit(const CheckpointEvent& event) {
    if (progress_) progress_(event);
  }
  // A warning of the planning phase: on the progress stream and in the report's notes.
  void WarnAndNote(const std::string& text) {
    report_.notes.push_back(text);
    Emit({.phase = "plan", .message = text, .warning = true});
  }
  absl::Status CheckOptions();
  absl::Status LoadInputs();
  std::string PlanKey() const;
  // Warns (event and report note) about calibration and importance entries that name no
  // quantized module: a typo there would otherwise go unnoticed.
  void NoteUnusedEntries();
  // Warns about modules --include forces in although the defaults leave them out: vLLM builds
  // embeddings and LM heads as embedding layers, which have no NVFP4 form.
  void NoteForcedModules();
  absl::Status PrepareStaging();
  absl::Status ComputeGroupAmax();
  QuantizeOptions OptionsFor(const PlannedTensor& t, ImportanceView* importance,
                             std::vector<float>* importance_copy) const;
  Quantized QuantizeOne(size_t index);
  absl::Status WriteShard(size_t shard);
  absl::Status Finalize();
  TensorReport BaseReport(size_t index) const;

  CheckpointJobOptions options_;  // a copy: paths are replaced by their resolved forms
  QuantizerBackend& backend_;
  const CheckpointProgressFn& progress_;
  const std::atomic<bool>* cancelled_;

  std::unique_ptr<SourceCheckpoint> source_;
  std::optional<MappedSafetensors> importance_;
  std::string calibration_text_;
  std::map<std::string, float> calibration_;
  CheckpointPlan plan_;
  QuantizationRecipe recipe_;
  std::vector<float> group_amax_;
  std::vector<float> group_input_amax_;
  std::string staging_;
  int lock_fd_ = -1;  // flock on the staging directory's lock file, held for the whole job
  bool holds_lock_ = false;
  Journal journal_;
  CheckpointReport report_;
  std::vector<std::optional<TensorReport>> rows_;
  int64_t tensors_done_ = 0;
  uint64_t bytes_done_ = 0;
  uint64_t bytes_total_ = 0;
};

absl::Status Job::CheckOptions() {
  if (!IsSupportedScaleMax(options_.scale_max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale_max must be 448 or 256, got ", options_.scale_max));
  }
  if (options_.objective == Objective::kWmse && options_.importance_path.empty()) {
    return absl::InvalidArgumentError("objective wmse needs an importance file (--importance)");
  }
  if (options_.concurrency < 1 || options_.concurrency > 64) {
    return absl::InvalidArgumentError("concurrency must be in [1, 64]");
  }
  if (options_.model_dir.empty() || options_.out_dir.empty()) {
    return absl::InvalidArgumentError("the model and output directories are required");
  }
  if (options_.paths.confined()) {
    ASSIGN_OR_RETURN(options_.model_dir, options_.paths.CheckExisting(options_.model_dir));
    ASSIGN_OR_RETURN(options_.out_dir, options_.paths.CheckNew(options_.out_dir));
    // The staging directory is a sibling of the output: it must be allowed too.
    RETURN_IF_ERROR(options_.paths.CheckNew(StagingDirFor(options_.out_dir)).status());
    if (!options_.importance_path.empty()) {
      ASSIGN_OR_RETURN(options_.importance_path,
                       options_.paths.CheckExisting(options_.importance_path));
    }
    if (!options_.calibration_path.empty()) {
      ASSIGN_OR_RETURN(options_.calibration_path,
                       options_.paths.CheckExisting(options_.calibration_path));
    }
  }
  // The output must be neither the model directory nor inside it (a later run would copy it as
  // part of the model).
  if (IsInsideDirectory(options_.out_dir, options_.model_dir)) {
    return absl::InvalidArgumentError(
        "the output directory must not be the model directory or lie inside it");
  }
  std::error_code ec;
  const fs::path out(options_.out_dir);
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec) || !fs::is_empty(out, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(
          options_.out_dir, " already exists and is not an empty directory; choose a new output"));
    }
  }
  return absl::OkStatus();
}

absl::Status Job::LoadInputs() {
  ASSIGN_OR_RETURN(source_, SourceCheckpoint::Open(options_.model_dir, options_.paths));
  RETURN_IF_ERROR(CheckUnquantizedSource(*source_));
  if (!options_.importance_path.empty()) {
    ASSIGN_OR_RETURN(MappedSafetensors file, MappedSafetensors::Open(options_.importance_path));
    importance_ = std::move(file);
  }
  if (!options_.calibration_path.empty()) {
    ASSIGN_OR_RETURN(calibration_, LoadCalibration(options_.calibration_path, &calibration_text_));
  }
  return absl::OkStatus();
}

std::string Job::PlanKey() const {
  std::ostringstream key;
  key << "nvfp4-scalesweep " << kVersion << '\n'
      << OutputFormatName(options_.format) << ' ' << MethodName(options_.method) << ' '
      << ObjectiveName(options_.objective) << ' ' << options_.scale_max << ' '
      << options_.shard_bytes << '\n'
      << "include " << absl::StrJoin(options_.include, "\x1f") << '\n'
      << "exclude " << absl::StrJoin(options_.exclude, "\x1f") << '\n'
      << source_->fingerprint() << "calibration " << calibration_text_ << '\n';
  if (importance_.has_value()) {
    // The whole data section: data(<offset 0>) is its first byte.
    const uint64_t data_bytes = importance_->file_size() - importance_->header().data_start;
    key << "importance " << HashBytes(importance_->data(SafetensorsTensorInfo{}), data_bytes)
        << '\n';
  }
  // The planner's decisions too: a shard finished by a build that selected other tensors (the
  // same options, another planner) must not be reused.
  key << "quantized";
  for (const PlannedTensor& t : plan_.tensors) {
    if (t.quantize) key << ' ' << t.source->name;
  }
  key << '\n';
  const std::string text = key.str();
  return HashBytes(text.data(), text.size());
}

absl::Status Job::PrepareStaging() {
  staging_ = StagingDirFor(options_.out_dir);
  const std::string key = PlanKey();
  std::error_code ec;
  fs::create_directories(staging_, ec);
  if (ec) return io::FileErrorCodeStatus(ec, staging_, "cannot create");
  // One writer per output, taken before anything in the staging directory is read or removed:
  // a second job (another nvfp4q, or a replica still running a job a client gave up on) fails
  // fast instead of interleaving shards. The kernel drops the lock when its holder dies, so a
  // killed job never blocks the resume.
  const std::string lock_path = (fs::path(staging_) / kLockName).string();
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return io::FileErrnoStatus(errno, lock_path, "cannot open");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return io::FileErrnoStatus(errno, lock_path, "flock");
    return absl::AbortedError(
        absl::StrCat("another job is writing ", options_.out_dir, " (", lock_path, " is locked)"));
  }
  holds_lock_ = true;
  const std::string journal_path = (fs::path(staging_) / kJournalName).string();
  absl::StatusOr<Journal> journal = LoadJournal(journal_path);
  const bool reuse = journal.ok() && journal->plan_key == key;
  if (reuse) journal_ = *std::move(journal);
  bool discarded = false;
  for (const fs::directory_entry& entry : fs::directory_iterator(staging_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == kLockName) continue;
    // Temporary files of a crashed writer are garbage; so is everything of another plan.
    if (!reuse || name.find(".tmp.") != std::string::npos) {
      discarded = discarded || (!reuse && name != kJournalName);
      fs::remove_all(entry.path(), ec);
      if (ec) return io::FileErrorCodeStatus(ec, entry.path().string(), "cannot remove");
    }
  }
  if (discarded) {
    Emit({.phase = "plan",
          .message = absl::StrCat("discarding the partial output in ", staging_,
                                  ": it was left by a run with other inputs or arguments"),
          .warning = true});
  }
  journal_.plan_key = key;
  return absl::OkStatus();
}

absl::Status Job::ComputeGroupAmax() {
  group_amax_.assign(plan_.groups.size(), 0.0f);
  group_input_amax_.assign(plan_.groups.size(), 0.0f);
  int64_t total = 0;
  for (const FusedGroup& g : plan_.groups) {
    if (g.members.size() > 1 && plan_.tensors[g.members[0]].quantize) total += g.members.size();
  }
  if (total == 0) return absl::OkStatus();
  // amax is a plain scan: the CPU engine does it at memory speed whatever the backend is.
  ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> scanner, cpu::CpuBackend::Create({}));
  int64_t done = 0;
  for (size_t gi = 0; gi < plan_.groups.size(); ++gi) {
    const FusedGroup& g = plan_.groups[gi];
    if (g.members.size() < 2 || !plan_.tensors[g.members[0]].quantize) continue;
    for (size_t m : g.members) {
      if (Cancelled()) return absl::CancelledError("the checkpoint job was cancelled");
      const PlannedTensor& t = plan_.tensors[m];
      const TensorView view{t.dtype, t.rows, t.cols, t.source->data()};
      absl::StatusOr<float> amax = scanner->ComputeAmax(view);
      if (!amax.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.source->name, "': ", amax.status().message()));
      }
      group_amax_[gi] = std::max(group_amax_[gi], *amax);
      Emit({.phase = "amax", .done = ++done, .total = total});
    }
  }
  return absl::OkStatus();
}

QuantizeOptions Job::OptionsFor(const PlannedTensor& t, ImportanceView* importance,
                                std::vector<float>* importance_copy) const {
  QuantizeOptions q;
  q.method = options_.method;
  q.objective = Objective::kMse;
  q.scale_max = options_.scale_max;
  q.cancelled = cancelled_;
  if (t.group >= 0) q.amax = group_amax_[t.group];
  // With objective mse an importance vector only adds the WMSE figures (as for one tensor).
  if (importance_.has_value()) {
    const SafetensorsTensorInfo* info =
        importance_->header().Find(absl::StrCat(t.module, ".importance"));
    if (info != nullptr) {
      // Copied: the file gives no alignment guarantee for the floats.
      importance_copy->resize(static_cast<size_t>(info->bytes() / 4));
      std::memcpy(importance_copy->data(), importance_->data(*info), importance_copy->size() * 4);
      q.objective = options_.objective;
      *importance = {ImportanceLayout::kPerColumn, importance_copy->data(),
                     static_cast<int64_t>(importance_copy->size())};
    }
  }
  return q;
}

Quantized Job::QuantizeOne(size_t index) {
  const PlannedTensor& t = plan_.tensors[index];
  Quantized out;
  const auto read_start = Clock::now();
  TouchPages(t.source->data(), t.source->info->bytes());
  out.read_seconds = SecondsSince(read_start);
  ImportanceView importance;
  std::vector<float> importance_copy;
  QuantizeOptions q = OptionsFor(t, &importance, &importance_copy);
  q.label = t.source->name;
  out.weighted = importance.present();
  const auto start = Clock::now();
  out.result = backend_.Quantize({t.dtype, t.rows, t.cols, t.source->data()}, importance, q);
  out.seconds = SecondsSince(start);
  if (!out.result.ok() && !absl::IsCancelled(out.result.status())) {
    out.result = absl::Status(
        out.result.status().code(),
        absl::StrCat("tensor '", t.source->name, "': ", out.result.status().message()));
  }
  return out;
}

TensorReport Job::BaseReport(size_t index) const {
  const PlannedTensor& t = plan_.tensors[index];
  TensorReport r;
  r.name = t.source->name;
  r.shape = t.source->info->shape;
  r.dtype = t.source->info->dtype;
  r.quantized = t.quantize;
  r.reason = t.reason;
  r.input_bytes = t.source->info->bytes();
  r.output_bytes = t.output_bytes;
  r.shard = t.shard;
  if (t.quantize) {
    r.method = std::string(MethodName(options_.method));
    r.group = t.group >= 0 ? plan_.groups[t.group].name : "";
  }
  return r;
}

absl::Status Job::WriteShard(size_t shard) {
  const std::vector<size_t>& members = plan_.shard_tensors[shard];
  const std::string path = (fs::path(staging_) / plan_.shard_files[shard]).string();
  std::vector<SafetensorsEntry> entries;
  for (size_t i : members) {
    for (const OutputTensor& o : plan_.tensors[i].outputs)
      entries.push_back({o.name, o.dtype, o.shape});
  }
  const auto write_start = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, entries, ShardMetadata(recipe_)));
  double write_seconds = SecondsSince(write_start);

  // Workers quantise up to `concurrency` tensors ahead of the writer, which writes in order.
  std::vector<size_t> work;
  for (size_t i : members) {
    if (plan_.tensors[i].quantize) work.push_back(i);
  }
  std::vector<Quantized> results(work.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t next = 0, consumed = 0;
  bool stop = false;
  const size_t window = static_cast<size_t>(options_.concurrency);
  auto worker = [&] {
    for (;;) {
      size_t k;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || next >= work.size() || next < consumed + window; });
        if (stop || next >= work.size()) return;
        k = next++;
      }
      Quantized q = QuantizeOne(work[k]);
      std::lock_guard lock(mu);
      results[k] = std::move(q);
      results[k].ready = true;
      cv.notify_all();
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 0; w < std::min(window, work.size()); ++w) threads.emplace_back(worker);
  auto join = [&] {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    for (std::thread& th : threads) th.join();
    threads.clear();
  };

  absl::Status status;
  JournalShard journal_shard;
  size_t k = 0;
  for (size_t i : members) {
    const PlannedTensor& t = plan_.tensors[i];
    TensorReport row = BaseReport(i);
    if (Cancelled()) {
      status = absl::CancelledError("the checkpoint job was cancelled");
      break;
    }
    if (!t.quantize) {
      const auto start = Clock::now();
      status = writer->Write(t.source->data(), t.source->info->bytes());
      write_seconds += SecondsSince(start);
      if (!status.ok()) break;
    } else {
      Quantized q;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return results[k].ready; });
        q = std::move(results[k]);
        ++consumed;
        cv.notify_all();
      }
      ++k;
      if (!q.result.ok()) {
        status = q.result.status();
        break;
      }
      const QuantizedTensor& qt = *q.result;
      report_.totals.quantize_seconds += q.seconds;
      report_.totals.read_seconds += q.read_seconds;
      row.objective = options_.objective != Objective::kWmse ? "mse"
                      : q.weighted                           ? "wmse"
                                                             : "mse (no importance)";
      row.amax = qt.amax;
      row.global_scale = qt.global_scale;
      row.metrics = qt.metrics;
      row.seconds = q.seconds;
      const auto start = Clock::now();
      for (const OutputTensor& o : t.outputs) {
        switch (o.kind) {
          case OutputTensor::Kind::kPacked:
            status = writer->Write(qt.packed.data(), qt.packed.size());
            break;
          case OutputTensor::Kind::kBlockScales:
            status = writer->Write(qt.scales.data(), qt.scales.size());
            break;
          case OutputTensor::Kind::kWeightGlobalScale: {
            const float v = options_.format == OutputFormat::kModelOpt ? qt.global_scale
                                                                       : 1.0f / qt.global_scale;
            status = writer->Write(&v, sizeof(v));
            break;
          }
          case OutputTensor::Kind::kInputScale: {
            const float amax_x = group_input_amax_.empty() || t.group < 0
                                     ? calibration_.at(t.module)
                                     : group_input_amax_[t.group];
            row.input_amax = amax_x;
            float v = 1.0f;
            if (amax_x > 0) {
              v = options_.format == OutputFormat::kModelOpt ? amax_x / kActivationScaleDenominator
                                                             : kActivationScaleDenominator / amax_x;
            }
            status = writer->Write(&v, sizeof(v));
            break;
          }
          case OutputTensor::Kind::kCopy:
            status = absl::InternalError("copy output on a quantized tensor");
            break;
        }
        if (!status.ok()) break;
      }
      write_seconds += SecondsSince(start);
      if (!status.ok()) break;
    }
    bytes_done_ += t.source->info->bytes();
    rows_[i] = row;
    journal_shard.tensors.push_back(row);
    Emit({.phase = "quantize",
          .done = ++tensors_done_,
          .total = static_cast<int64_t>(plan_.tensors.size()),
          .bytes_done = bytes_done_,
          .bytes_total = bytes_total_,
          .tensor = &*rows_[i]});
  }
  join();
  if (status.ok()) {
    const auto start = Clock::now();
    status = writer->Commit();
    write_seconds += SecondsSince(start);
  }
  report_.totals.write_seconds += write_seconds;
  RETURN_IF_ERROR(status);
  journal_shard.hash = writer->content_hash();
  journal_.shards[plan_.shard_files[shard]] = std::move(journal_shard);
  return SaveJournal((fs::path(staging_) / kJournalName).string(), journal_);
}

absl::Status Job::Finalize() {
  const fs::path staging(staging_);
  const fs::path model(options_.model_dir);
  Emit({.phase = "finalize"});
  if (plan_.shard_files.size() > 1) {
    Json index = Json::object();
    uint64_t total = 0;
    Json weight_map = Json::object();
    for (size_t s = 0; s < plan_.shard_files.size(); ++s) {
      for (size_t i : plan_.shard_tensors[s]) {
        for (const OutputTensor& o : plan_.tensors[i].outputs) {
          weight_map[o.name] = plan_.shard_files[s];
        }
        total += plan_.tensors[i].output_bytes;
      }
    }
    index["metadata"] = Json::object({{"total_size", total}});
    index["weight_map"] = std::move(weight_map);
    RETURN_IF_ERROR(WriteTextAtomically((staging / "model.safetensors.index.json").string(),
                                        index.dump(2) + "\n"));
  }
  for (const std::string& file : source_->other_files()) {
    if (file == "config.json" || file == "hf_quant_config.json") continue;
    RETURN_IF_ERROR(CopyFile(model / file, staging / file));
  }
  Json config = source_->config().is_object() ? source_->config() : Json::object();
  if (!source_->config().is_object()) {
    report_.notes.push_back(
        "the model has no config.json: wrote one holding only quantization_config");
  }
  config["quantization_config"] = QuantizationConfig(recipe_);
  RETURN_IF_ERROR(WriteTextAtomically((staging / "config.json").string(), config.dump(2) + "\n"));
  if (std::optional<Json> hf = HfQuantConfig(recipe_)) {
    RETURN_IF_ERROR(
        WriteTextAtomically((staging / "hf_quant_config.json").string(), hf->dump(2) + "\n"));
  }
  std::error_code ec;
  fs::remove(staging / kJournalName, ec);
  fs::remove(staging / kLockName, ec);  // still held (fd open) until the job ends
  // An empty output directory (checked at the start) is replaced atomically by rename(2).
  if (::rename(staging_.c_str(), options_.out_dir.c_str()) != 0) {
    return io::FileErrnoStatus(errno, options_.out_dir,
                               absl::StrCat("cannot rename ", staging_, " to it"));
  }
  io::internal::SyncParentDirectory(options_.out_dir);
  return absl::OkStatus();
}

void Job::NoteUnusedEntries() {
  std::set<std::string> quantized;
  for (const PlannedTensor& t : plan_.tensors) {
    if (t.quantize) quantized.insert(t.module);
  }
  const auto note = [this](const std::string& path, const std::vector<std::string>& unused) {
    if (unused.empty()) return;
    const size_t count = unused.size();
    WarnAndNote(absl::StrCat(path, ": ", count, count == 1 ? " entry matches" : " entries match",
                             " no quantized module and ", count == 1 ? "is" : "are", " unused (",
                             FirstNames(unused), ")"));
  };
  std::vector<std::string> unused;
  for (const auto& [module, amax] : calibration_) {
    if (!quantized.contains(module)) unused.push_back(module);
  }
  note(options_.calibration_path, unused);
  if (importance_.has_value()) {
    unused.clear();
    for (const SafetensorsTensorInfo& info : importance_->header().tensors) {
      const bool matches = absl::EndsWith(info.name, ".importance") &&
                           quantized.contains(info.name.substr(0, info.name.size() - 11));
      if (!matches) unused.push_back(info.name);
    }
    note(options_.importance_path, unused);
  }
}

void Job::NoteForcedModules() {
  std::vector<std::string> forced;
  for (const PlannedTensor& t : plan_.tensors) {
    if (t.quantize && DefaultModuleRole(t.module) != ModuleRole::kLinear) {
      forced.push_back(t.module);
    }
  }
  if (forced.empty()) return;
  WarnAndNote(absl::StrCat(
      "--include quantizes ", forced.size(), forced.size() == 1 ? " module" : " modules",
      " the defaults leave out (", FirstNames(forced),
      "): vLLM keeps embeddings, LM and classification heads, norms, routers and vision/audio "
      "towers unquantized and may refuse to load this checkpoint"));
}

absl::StatusOr<CheckpointReport> Job::Run() {
  absl::StatusOr<CheckpointReport> report = RunSteps();
  if (!report.ok() && holds_lock_ && journal_.shards.empty()) {
    // Renamed away while the lock is held, then removed: a job starting meanwhile finds no
    // staging directory (it makes a fresh one with a fresh lock) rather than one being emptied
    // under it. Best effort: the job's own error is what the caller needs.
    const std::string discarded =
        absl::StrCat(staging_, ".discarded.", ::getpid(), ".", reinterpret_cast<uintptr_t>(this));
    std::error_code ec;
    if (::rename(staging_.c_str(), discarded.c_str()) == 0) fs::remove_all(discarded, ec);
  }
  return report;
}

absl::StatusOr<CheckpointReport> Job::RunSteps() {
  const auto start = Clock::now();
  RETURN_IF_ERROR(CheckOptions());
  Emit({.phase = "plan", .message = absl::StrCat("reading ", options_.model_dir)});
  RETURN_IF_ERROR(LoadInputs());
  if (const std::vector<std::string>& skipped = source_->skipped_subdirectory_weights();
      !skipped.empty()) {
    const std::string text = absl::StrCat(
        "not copied: weight files in subdirectories (", absl::StrJoin(skipped, ", "),
        "); only the model's own weights are quantized, copy these by hand if the model needs "
        "them");
    WarnAndNote(text);
  }
  const PlanOptions plan_options = PlanOptionsFor(options_);
  ASSIGN_OR_RETURN(plan_, BuildCheckpointPlan(*source_, plan_options));
  if (plan_.quantized_count == 0) {
    // Say why, most frequent reason first: "see --include" alone hides e.g. a GPT-2 checkpoint.
    std::map<std::string, int> count_of_reason;
    for (const PlannedTensor& t : plan_.tensors) {
      if (!t.reason.empty()) ++count_of_reason[t.reason];
    }
    std::vector<std::pair<int, std::string>> reasons;
    for (const auto& [reason, count] : count_of_reason) reasons.push_back({-count, reason});
    std::sort(reasons.begin(), reasons.end());
    if (reasons.size() > 4) reasons.resize(4);
    std::vector<std::string> why;
    for (const auto& [minus_count, reason] : reasons) {
      why.push_back(
          absl::StrCat(reason, " (", -minus_count, minus_count == -1 ? " tensor)" : " tensors)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        options_.model_dir, ": no tensor is selected for quantization (see --include/--exclude)",
        why.empty() ? "" : ": ", absl::StrJoin(why, "; ")));
  }
  recipe_ = {options_.format,    plan_options.w4a4,  options_.method,
             options_.objective, options_.scale_max, plan_.ignored_modules};

  report_.model_dir = options_.model_dir;
  report_.out_dir = options_.out_dir;
  report_.format = std::string(OutputFormatName(options_.format));
  report_.method = std::string(MethodName(options_.method));
  report_.objective = std::string(ObjectiveName(options_.objective));
  report_.scale_max = options_.scale_max;
  report_.w4a4 = plan_options.w4a4;

  // W4A4: every quantised module needs its activation amax; fused groups take the max.
  if (plan_options.w4a4) {
    std::vector<std::string> missing;
    for (const PlannedTensor& t : plan_.tensors) {
      if (t.quantize && !calibration_.contains(t.module)) missing.push_back(t.module);
    }
    if (!missing.empty()) {
      if (missing.size() > 5) missing.resize(5);
      return absl::InvalidArgumentError(absl::StrCat(
          options_.calibration_path, ": no activation amax for ", absl::StrJoin(missing, ", "),
          " (every quantized module needs one for W4A4)"));
    }
  }
  // WMSE: modules without an importance vector fall back to MSE; wrong lengths are errors.
  if (importance_.has_value()) {
    int fallback = 0;
    for (const PlannedTensor& t : plan_.tensors) {
      if (!t.quantize) continue;
      const SafetensorsTensorInfo* info =
          importance_->header().Find(absl::StrCat(t.module, ".importance"));
      if (info == nullptr) {
        ++fallback;
        continue;
      }
      if (info->dtype != "F32" || info->shape != std::vector<int64_t>{t.cols}) {
        return absl::InvalidArgumentError(absl::StrCat(options_.importance_path, ": '", info->name,
                                                       "' must be F32 [", t.cols, "]"));
      }
    }
    if (fallback > 0) {
      report_.notes.push_back(absl::StrCat(
          fallback, " of ", plan_.quantized_count,
          " quantized modules have no importance vector in ", options_.importance_path,
          options_.objective == Objective::kWmse ? " and use mse" : ": no WMSE figures for them"));
    }
  }
  NoteUnusedEntries();
  NoteForcedModules();
  RETURN_IF_ERROR(PrepareStaging());
  RETURN_IF_ERROR(ComputeGroupAmax());
  if (plan_options.w4a4) {
    for (size_t gi = 0; gi < plan_.groups.size(); ++gi) {
      for (size_t m : plan_.groups[gi].members) {
        const PlannedTensor& t = plan_.tensors[m];
        if (t.quantize) {
          group_input_amax_[gi] = std::max(group_input_amax_[gi], calibration_.at(t.module));
        }
      }
    }
  }

  rows_.assign(plan_.tensors.size(), std::nullopt);
  for (const PlannedTensor& t : plan_.tensors) bytes_total_ += t.source->info->bytes();
  for (size_t s = 0; s < plan_.shard_files.size(); ++s) {
    if (Cancelled()) return absl::CancelledError("the checkpoint job was cancelled");
    const std::string& file = plan_.shard_files[s];
    const auto done = journal_.shards.find(file);
    const std::string path = (fs::path(staging_) / file).string();
    if (done != journal_.shards.end()) {
      absl::StatusOr<std::string> hash = HashFile(path);
      if (hash.ok() && *hash == done->second.hash &&
          done->second.tensors.size() == plan_.shard_tensors[s].size()) {
        for (size_t k = 0; k < plan_.shard_tensors[s].size(); ++k) {
          const size_t i = plan_.shard_tensors[s][k];
          rows_[i] = done->second.tensors[k];
          bytes_done_ += plan_.tensors[i].source->info->bytes();
          ++tensors_done_;
        }
        ++report_.totals.shards_resumed;
        Emit({.phase = "quantize",
              .done = tensors_done_,
              .total = static_cast<int64_t>(plan_.tensors.size()),
              .bytes_done = bytes_done_,
              .bytes_total = bytes_total_,
              .message = absl::StrCat("resumed ", file, " (content hash matches)")});
        continue;
      }
      journal_.shards.erase(done);
    }
    RETURN_IF_ERROR(WriteShard(s));
  }
  RETURN_IF_ERROR(Finalize());
  for (std::optional<TensorReport>& row : rows_) report_.tensors.push_back(*std::move(row));
  report_.totals.shards = static_cast<int>(plan_.shard_files.size());
  ComputeTotals(report_);
  report_.totals.wall_seconds = SecondsSince(start);
  Emit({.phase = "done",
        .done = static_cast<int64_t>(plan_.tensors.size()),
        .total = static_cast<int64_t>(plan_.tensors.size())});
  return report_;
}

}  // namespace

PlanOptions PlanOptionsFor(const CheckpointJobOptions& options) {
  PlanOptions plan;
  plan.format = options.format;
  plan.include = options.include;
  plan.exclude = options.exclude;
  plan.w4a4 = !options.calibration_path.empty();
  plan.shard_bytes = options.shard_bytes;
  return plan;
}

absl::Status CheckUnquantizedSource(const SourceCheckpoint& source) {
  // "quantization_config": null is what some exporters write for an unquantized model.
  if (const auto q = source.config().find("quantization_config");
      q != source.config().end() && !q->is_null()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.dir(),
                     "/config.json already has a quantization_config: the source must be "
                     "an unquantized checkpoint"));
  }
  return absl::OkStatus();
}

std::string StagingDirFor(const std::string& out_dir) {
  fs::path out(out_dir);
  if (!out.has_filename()) out = out.parent_path();  // "out/" -> "out"
  return (out.parent_path() / absl::StrCat(".", out.filename().string(), ".nvfp4-partial"))
      .string();
}

absl::StatusOr<CheckpointReport> RunCheckpointJob(const CheckpointJobOptions& options,
                                                  QuantizerBackend& backend,
                                                  const CheckpointProgressFn& progress,
                                                  const std::atomic<bool>* cancelled) {
  Job job(options, backend, progress, cancelled);
  return job.Run();
}

}  // namespace nvfp4::checkpoint
