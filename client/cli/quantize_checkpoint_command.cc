#include "client/cli/quantize_checkpoint_command.h"

#include <atomic>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/cli/common_flags.h"
#include "client/cli/exit_codes.h"
#include "client/cli/progress.h"
#include "client/cli/remote_commands.h"
#include "client/remote_backend.h"
#include "common/path_checks.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "server/checkpoint/checkpoint_job.h"
#include "server/checkpoint/checkpoint_plan.h"
#include "server/checkpoint/source_checkpoint.h"

namespace nvfp4::cli {
namespace {

struct QuantizeCheckpointFlags {
  std::string model;
  std::string out;
  std::string format = "modelopt";
  std::string importance;
  std::string calibration;
  std::string report;
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  std::string shard_size = "5GB";
  int concurrency = 0;
  bool stream_tensors = false;
  bool dry_run = false;
  bool json = false;
  bool quiet = false;
  EngineFlags engine;
  QuantizeFlags quantize;
  RemoteFlags remote;
};

absl::StatusOr<checkpoint::CheckpointJobOptions> JobOptions(const QuantizeCheckpointFlags& flags) {
  checkpoint::CheckpointJobOptions options;
  options.model_dir = flags.model;
  options.out_dir = flags.out;
  const std::optional<checkpoint::OutputFormat> format =
      checkpoint::ParseOutputFormat(flags.format);
  if (!format.has_value()) {
    return UsageError(
        absl::StrCat("--format must be modelopt or compressed-tensors, got '", flags.format, "'"));
  }
  options.format = *format;
  ASSIGN_OR_RETURN(const QuantizeOptions q, flags.quantize.ToOptions());
  options.method = q.method;
  options.objective = q.objective;
  options.scale_max = q.scale_max;
  options.include = flags.include;
  options.exclude = flags.exclude;
  options.importance_path = flags.importance;
  options.calibration_path = flags.calibration;
  ASSIGN_OR_RETURN(options.shard_bytes, ParseByteSize(flags.shard_size));
  if (options.shard_bytes < (uint64_t{1} << 20)) {
    return UsageError(
        absl::StrCat("--shard-size must be at least 1MiB, got '", flags.shard_size, "'"));
  }
  if (options.objective == Objective::kWmse && flags.importance.empty()) {
    return UsageError("--objective wmse needs --importance");
  }
  return options;
}

// Draws the bar on a terminal; otherwise a line per finished shard-sized step is enough.
class CheckpointProgress {
 public:
  explicit CheckpointProgress(bool quiet) : quiet_(quiet), bar_("nvfp4q") {}
  void operator()(const checkpoint::CheckpointEvent& e) {
    if (!e.message.empty() && (e.warning || !quiet_)) {
      std::fprintf(stderr, "nvfp4q: %s\n", e.message.c_str());
    }
    if (quiet_) return;
    if (e.phase == "quantize") {
      bar_.Update(static_cast<int64_t>(e.bytes_done), static_cast<int64_t>(e.bytes_total),
                  "quantize");
    } else if (e.phase == "amax") {
      bar_.Update(e.done, e.total, "amax", ProgressUnit::kItems);
    }
  }

 private:
  const bool quiet_;
  ProgressBar bar_;
};

// The flags naming paths the job would write over or into what it reads (a usage error, exit
// code 2, before anything is read or written); empty when none do. The output directory is new
// (the job refuses an existing non-empty one), so only its place matters. In --server modes the
// paths are the server's: for a server sharing this file system the check holds; elsewhere a
// clash of names alone is still refused, which costs nothing.
std::string PathClash(const QuantizeCheckpointFlags& flags) {
  if (IsInsideDirectory(flags.out, flags.model)) {
    return absl::StrCat("--out (", flags.out, ") must not be --model or lie inside it");
  }
  if (IsInsideDirectory(flags.model, flags.out)) {
    return absl::StrCat("--model (", flags.model, ") must not lie inside --out");
  }
  std::vector<std::pair<std::string, std::string>> inputs;  // flag, path
  if (!flags.importance.empty()) inputs.push_back({"--importance", flags.importance});
  if (!flags.calibration.empty()) inputs.push_back({"--calibration", flags.calibration});
  for (const auto& [flag, path] : inputs) {
    if (IsInsideDirectory(path, flags.out)) {
      return absl::StrCat("--out (", flags.out, ") must not be ", flag, " or hold it");
    }
  }
  if (flags.report.empty()) return "";
  if (IsInsideDirectory(flags.report, flags.model)) {
    return absl::StrCat("--report (", flags.report, ") must not name a file inside --model");
  }
  for (const auto& [flag, path] : inputs) {
    if (SameFile(flags.report, path)) {
      return absl::StrCat("--report and ", flag, " name the same file (", path, ")");
    }
  }
  return "";
}

// --dry-run: the plan for the model on this machine, printed; nothing is written.
absl::StatusOr<int> PrintPlan(const QuantizeCheckpointFlags& flags) {
  // The job's own flag checks and refusals first: a plan for a run that would not start is no
  // plan.
  ASSIGN_OR_RETURN(const checkpoint::CheckpointJobOptions options, JobOptions(flags));
  if (flags.stream_tensors && flags.remote.server.empty()) {
    return UsageError("--stream-tensors needs --server");
  }
  const checkpoint::PlanOptions plan_options = checkpoint::PlanOptionsFor(options);
  ASSIGN_OR_RETURN(std::unique_ptr<checkpoint::SourceCheckpoint> source,
                   checkpoint::SourceCheckpoint::Open(flags.model));
  RETURN_IF_ERROR(checkpoint::CheckUnquantizedSource(*source));
  ASSIGN_OR_RETURN(const checkpoint::CheckpointPlan plan,
                   checkpoint::BuildCheckpointPlan(*source, plan_options));
  const auto shape_text = [](const std::vector<int64_t>& shape) {
    return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  };
  if (flags.json) {
    nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
    for (const checkpoint::PlannedTensor& t : plan.tensors) {
      tensors.push_back({{"name", t.source->name},
                         {"dtype", t.source->info->dtype},
                         {"shape", t.source->info->shape},
                         {"quantize", t.quantize},
                         {"reason", t.reason},
                         {"fused_group", t.group >= 0 ? plan.groups[t.group].name : ""},
                         {"shard", plan.shard_files[t.shard]}});
    }
    const nlohmann::ordered_json out = {{"model_dir", flags.model},
                                        {"format", flags.format},
                                        {"quantized", plan.quantized_count},
                                        {"ignore", plan.ignored_modules},
                                        {"shards", plan.shard_files},
                                        {"skipped_files", source->skipped_subdirectory_weights()},
                                        {"tensors", tensors}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    for (const checkpoint::PlannedTensor& t : plan.tensors) {
      std::printf(
          "%-8s %-60s %-5s %-16s %s%s\n", t.quantize ? "quantize" : "copy", t.source->name.c_str(),
          t.source->info->dtype.c_str(), shape_text(t.source->info->shape).c_str(),
          t.group >= 0 ? absl::StrCat("fused ", plan.groups[t.group].name, " ").c_str() : "",
          t.reason.c_str());
    }
    std::printf("%d of %zu tensors quantized into %zu shard(s) (%s); config ignore: [%s]\n",
                plan.quantized_count, plan.tensors.size(), plan.shard_files.size(),
                flags.format.c_str(), absl::StrJoin(plan.ignored_modules, ", ").c_str());
    for (const std::string& file : source->skipped_subdirectory_weights()) {
      std::printf("not copied: %s (a weight file in a subdirectory)\n", file.c_str());
    }
  }
  if (plan.quantized_count == 0) {
    std::fprintf(stderr, "nvfp4q: no tensor is selected for quantization\n");
    return kExitInvalidInput;
  }
  return kExitOk;
}

absl::StatusOr<int> Run(const QuantizeCheckpointFlags& flags) {
  if (flags.dry_run) return PrintPlan(flags);
  if (flags.out.empty()) return UsageError("--out is required (unless --dry-run)");
  ASSIGN_OR_RETURN(checkpoint::CheckpointJobOptions options, JobOptions(flags));
  if (const std::string clash = PathClash(flags); !clash.empty()) return UsageError(clash);
  std::atomic<bool> cancelled{false};
  CheckpointProgress progress(flags.quiet || flags.json);
  absl::StatusOr<checkpoint::CheckpointReport> report;
  if (flags.remote.server.empty()) {
    if (flags.stream_tensors) {
      return UsageError("--stream-tensors needs --server");
    }
    ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> backend, flags.engine.MakeBackend());
    options.concurrency = flags.concurrency > 0 ? flags.concurrency : 1;
    InterruptCancels interrupt(nullptr, &cancelled);
    report = checkpoint::RunCheckpointJob(
        options, *backend, [&](const checkpoint::CheckpointEvent& e) { progress(e); }, &cancelled);
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<client::QuantizerClient> client, flags.remote.Connect());
    InterruptCancels interrupt(client.get(), &cancelled);
    if (flags.stream_tensors) {
      // The server cannot see the files: tensors travel over QuantizeTensor, output is local.
      client::RemoteBackend backend(client.get());
      options.concurrency = flags.concurrency > 0 ? flags.concurrency : 2;
      report = checkpoint::RunCheckpointJob(
          options, backend, [&](const checkpoint::CheckpointEvent& e) { progress(e); }, &cancelled);
      if (report.ok() && backend.retries() > 0) {
        report->notes.push_back(absl::StrCat(backend.retries(),
                                             " tensor request(s) retried after a replica failed "
                                             "or refused (UNAVAILABLE / RESOURCE_EXHAUSTED)"));
      }
    } else {
      // Server paths: a relative path means the client's working directory (for a server that
      // shares the file system); the server checks them against its allowed roots.
      for (std::string* path : {&options.model_dir, &options.out_dir, &options.importance_path,
                                &options.calibration_path}) {
        if (!path->empty()) *path = std::filesystem::absolute(*path).string();
      }
      // A replica that dies or drains mid-job (UNAVAILABLE), or one still finishing an
      // abandoned attempt on this output (ABORTED), is retried; with several replicas on a
      // shared file system the next attempt runs elsewhere and resumes after the finished
      // shards (docs/checkpoints.md).
      absl::Duration backoff = absl::Milliseconds(500);
      for (int attempt = 1;; ++attempt) {
        report = client->QuantizeCheckpoint(
            options, [&](const checkpoint::CheckpointEvent& e) { progress(e); });
        if (report.ok() || attempt >= 5 || client->cancelled() ||
            !(absl::IsUnavailable(report.status()) || absl::IsAborted(report.status()))) {
          break;
        }
        if (!flags.quiet) {
          std::fprintf(stderr, "nvfp4q: %s; retrying (attempt %d of 5)\n",
                       std::string(report.status().message()).c_str(), attempt + 1);
        }
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, absl::Seconds(8));
      }
    }
  }
  if (!report.ok()) return report.status();
  const nlohmann::ordered_json json = checkpoint::CheckpointReportToJson(*report);
  if (!flags.report.empty()) {
    const std::string text = json.dump(2) + "\n";
    RETURN_IF_ERROR(io::internal::WriteFileAtomically(flags.report, {{text.data(), text.size()}}));
  }
  if (flags.json) {
    std::printf("%s\n", json.dump().c_str());
  } else {
    std::printf("%s", checkpoint::FormatReportTable(*report).c_str());
    std::printf("wrote %s (%s, %s/%s, F = %d)\n", report->out_dir.c_str(), report->format.c_str(),
                report->method.c_str(), report->objective.c_str(), report->scale_max);
  }
  return kExitOk;
}

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  size_t end = 0;
  while (end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) {
    ++end;
  }
  const std::string number = text.substr(0, end);
  std::string unit = text.substr(end);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(number, &used);
    if (used != number.size()) throw std::invalid_argument(number);
  } catch (const std::exception&) {
    return UsageError(absl::StrCat("'", text, "' is not a size like 5GB or 512MiB"));
  }
  double scale = 0;
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KB", 1e3},
      {"MB", 1e6},
      {"GB", 1e9},
      {"TB", 1e12},
      {"KIB", 1024.0},
      {"MIB", 1048576.0},
      {"GIB", 1073741824.0},
      {"TIB", 1099511627776.0},
  };
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) scale = factor;
  }
  if (scale == 0 || value <= 0) {
    return UsageError(absl::StrCat("'", text, "' is not a size like 5GB or 512MiB"));
  }
  return static_cast<uint64_t>(value * scale);
}

std::function<int()> AddQuantizeCheckpointCommand(CLI::App& app) {
  auto flags = std::make_shared<QuantizeCheckpointFlags>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Quantize a Hugging Face safetensors checkpoint to an NVFP4 checkpoint that vLLM loads");
  cmd->add_option("--model", flags->model, "input checkpoint directory")->required();
  cmd->add_option("--out", flags->out,
                  "output directory (must not exist, or be empty); required unless --dry-run");
  cmd->add_option("--format", flags->format, "modelopt (default) or compressed-tensors")
      ->check(CLI::IsMember({"modelopt", "compressed-tensors"}));
  cmd->add_option(
      "--importance", flags->importance,
      "importance: safetensors of <module>.importance F32 [K] (the WMSE objective's weights; "
      "with mse, the report adds the WMSE figures)");
  cmd->add_option("--calibration", flags->calibration,
                  "W4A4: JSON {\"<module>\": activation amax}; without it the output is W4A16");
  cmd->add_option("--report", flags->report, "write the per-tensor report as JSON");
  cmd->add_option("--include", flags->include, "also quantize modules matching this glob");
  cmd->add_option("--exclude", flags->exclude, "never quantize modules matching this glob");
  cmd->add_option("--shard-size", flags->shard_size,
                  "maximum tensor bytes per output shard (default 5GB)");
  cmd->add_option("--concurrency", flags->concurrency,
                  "tensors in flight (default 1 embedded, 2 with --stream-tensors)")
      ->check(CLI::Range(0, 64));
  cmd->add_flag("--stream-tensors", flags->stream_tensors,
                "with --server: send the tensors to nvfp4d and write the output here (for a "
                "server that cannot see the files)");
  cmd->add_flag("--dry-run", flags->dry_run,
                "print what would be quantized or copied (and why), the config's ignore list and "
                "the shards, then exit without writing; reads --model on this machine");
  cmd->add_flag("--json", flags->json, "print the report as one JSON object");
  cmd->add_flag("--quiet", flags->quiet, "no progress output");
  flags->quantize.Register(cmd);
  flags->engine.Register(cmd);
  flags->remote.Register(cmd, false);
  return SubcommandRunner(cmd, flags, &Run);
}

}  // namespace nvfp4::cli
