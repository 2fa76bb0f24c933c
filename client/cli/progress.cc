#include "client/cli/progress.h"

#include <unistd.h>

#include <cstdio>

namespace nvfp4::cli {

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) == 1) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fprintf(stderr, "\n");
}

void ProgressBar::Update(int64_t done, int64_t total, std::string_view phase) {
  if (!enabled_) return;
  const absl::Time now = absl::Now();
  const bool complete = total > 0 && done >= total;
  if (!complete && now - last_draw_ < absl::Milliseconds(100)) return;  // ~10 redraws per second
  last_draw_ = now;
  drawn_ = true;
  constexpr int kWidth = 30;
  if (total > 0) {
    const double fraction = static_cast<double>(done) / static_cast<double>(total);
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s %-8.*s [%.*s%*s] %5.1f%% %8.1f MiB", label_.c_str(),
                 static_cast<int>(phase.size()), phase.data(), filled,
                 "##############################", kWidth - filled, "", 100.0 * fraction,
                 static_cast<double>(done) / (1 << 20));
  } else {
    std::fprintf(stderr, "\r%s %-8.*s ...%*s", label_.c_str(), static_cast<int>(phase.size()),
                 phase.data(), kWidth + 20, "");
  }
  std::fflush(stderr);
}

}  // namespace nvfp4::cli
