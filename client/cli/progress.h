// A progress bar for long transfers, drawn on stderr only when stderr is a terminal (so logs
// and pipes stay clean). Not thread-safe: update from one thread.
#ifndef NVFP4_CLIENT_CLI_PROGRESS_H_
#define NVFP4_CLIENT_CLI_PROGRESS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace nvfp4::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();  // ends the line if anything was drawn
  // total <= 0: an indeterminate phase.
  void Update(int64_t done, int64_t total, std::string_view phase);
  bool enabled() const { return enabled_; }

 private:
  const std::string label_;
  const bool enabled_;
  bool drawn_ = false;
  absl::Time last_draw_ = absl::InfinitePast();
};

}  // namespace nvfp4::cli

#endif  // NVFP4_CLIENT_CLI_PROGRESS_H_
