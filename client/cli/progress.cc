#include "client/cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nvfp4::cli {
namespace {

// "0:42", "12:05", "1:02:03".
std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::ceil(seconds));
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

}  // namespace

std::string FormatProgress(std::string_view label, std::string_view phase, int64_t done,
                           int64_t total, ProgressUnit unit, absl::Duration elapsed) {
  if (total <= 0) return absl::StrFormat("%s %-8s ...", label, phase);
  constexpr int kWidth = 30;
  done = std::clamp<int64_t>(done, 0, total);
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(fraction * kWidth);
  std::string line =
      absl::StrFormat("%s %-8s [%s%s] %5.1f%%", label, phase, std::string(filled, '#'),
                      std::string(kWidth - filled, ' '), 100.0 * fraction);
  constexpr double kMiB = 1 << 20;
  if (unit == ProgressUnit::kBytes) {
    absl::StrAppendFormat(&line, " %8.1f MiB", static_cast<double>(done) / kMiB);
  } else {
    absl::StrAppendFormat(&line, " %d/%d", done, total);
  }
  const double seconds = absl::ToDoubleSeconds(elapsed);
  if (seconds >= 1.0 && done > 0) {
    const double per_second = static_cast<double>(done) / seconds;
    if (unit == ProgressUnit::kBytes)
      absl::StrAppendFormat(&line, " %7.1f MiB/s", per_second / kMiB);
    if (done < total) {
      absl::StrAppend(&line, " ETA ",
                      FormatDuration(static_cast<double>(total - done) / per_second));
    }
  }
  return line;
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) == 1) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fprintf(stderr, "\n");
}

void ProgressBar::Update(int64_t done, int64_t total, std::string_view phase, ProgressUnit unit) {
  if (!enabled_) return;
  const absl::Time now = absl::Now();
  if (phase != phase_) {
    phase_ = std::string(phase);
    phase_start_ = now;
  }
  const bool complete = total > 0 && done >= total;
  if (!complete && now - last_draw_ < absl::Milliseconds(100)) return;  // ~10 redraws per second
  last_draw_ = now;
  drawn_ = true;
  // "\033[K" clears what a longer previous line left on the right.
  std::fprintf(stderr, "\r%s\033[K",
               FormatProgress(label_, phase, done, total, unit, now - phase_start_).c_str());
  std::fflush(stderr);
}

}  // namespace nvfp4::cli
