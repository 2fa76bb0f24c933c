// A progress bar for long transfers and jobs, drawn on stderr only when stderr is a terminal (so
// logs and pipes stay clean): phase, bar, percent, amount done and, once a phase has run for a
// second, its rate and the time left. FormatProgress builds the line (testable without a
// terminal). Not thread-safe: update from one thread.
#ifndef NVFP4_CLIENT_CLI_PROGRESS_H_
#define NVFP4_CLIENT_CLI_PROGRESS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace nvfp4::cli {

// What done/total count: bytes (shown in MiB, with a MiB/s rate) or items (tensors: "12/35").
enum class ProgressUnit { kBytes, kItems };

// One line of the bar, without the carriage return. total <= 0: an indeterminate phase.
// elapsed: time since the phase began; under a second (or nothing done) shows no rate or ETA.
std::string FormatProgress(std::string_view label, std::string_view phase, int64_t done,
                           int64_t total, ProgressUnit unit, absl::Duration elapsed);

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();  // ends the line if anything was drawn
  // total <= 0: an indeterminate phase. A new phase name restarts the rate and ETA.
  void Update(int64_t done, int64_t total, std::string_view phase,
              ProgressUnit unit = ProgressUnit::kBytes);
  bool enabled() const { return enabled_; }

 private:
  const std::string label_;
  const bool enabled_;
  bool drawn_ = false;
  absl::Time last_draw_ = absl::InfinitePast();
  std::string phase_;
  absl::Time phase_start_ = absl::InfinitePast();
};

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_PROGRESS_H_
