// FormatProgress: the progress bar's line (client/cli/progress.h).
#include "client/cli/progress.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nvfp4::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(FormatProgress, BytesShowRateAndTimeLeftOnceThePhaseRanASecond) {
  const std::string line = FormatProgress("nvfp4q", "quantize", 512 * kMiB, 1024 * kMiB,
                                          ProgressUnit::kBytes, absl::Seconds(2));
  EXPECT_EQ(line,
            "nvfp4q quantize [###############               ]  50.0%    512.0 MiB   256.0 MiB/s "
            "ETA 0:02");
  const std::string early = FormatProgress("nvfp4q", "quantize", 512 * kMiB, 1024 * kMiB,
                                           ProgressUnit::kBytes, absl::Milliseconds(900));
  EXPECT_THAT(early, Not(HasSubstr("MiB/s")));
  EXPECT_THAT(early, Not(HasSubstr("ETA")));
  const std::string done = FormatProgress("nvfp4q", "quantize", 1024 * kMiB, 1024 * kMiB,
                                          ProgressUnit::kBytes, absl::Seconds(4));
  EXPECT_THAT(done, HasSubstr("100.0%"));
  EXPECT_THAT(done, HasSubstr("256.0 MiB/s"));
  EXPECT_THAT(done, Not(HasSubstr("ETA")));
}

TEST(FormatProgress, ItemsAreCountedNotSizedAndLongWaitsShowHours) {
  const std::string line =
      FormatProgress("nvfp4q", "amax", 12, 35, ProgressUnit::kItems, absl::Seconds(3));
  EXPECT_THAT(line, HasSubstr(" 12/35 ETA 0:06"));
  EXPECT_THAT(line, Not(HasSubstr("MiB")));
  EXPECT_THAT(FormatProgress("x", "amax", 1, 3601, ProgressUnit::kItems, absl::Seconds(1)),
              HasSubstr("ETA 1:00:00"));
}

TEST(FormatProgress, UnknownTotalsAndOvershootStayReadable) {
  EXPECT_EQ(FormatProgress("nvfp4q", "scan", 5, 0, ProgressUnit::kBytes, absl::Seconds(9)),
            "nvfp4q scan     ...");
  EXPECT_THAT(FormatProgress("nvfp4q", "upload", 9, 4, ProgressUnit::kItems, absl::Seconds(2)),
              HasSubstr("100.0% 4/4"));
}

}  // namespace
}  // namespace nvfp4::cli
