// Status propagation macros for absl::Status / absl::StatusOr.
//
// Debian 12's Abseil (20220623) ships no RETURN_IF_ERROR / ASSIGN_OR_RETURN, so the project
// defines its own. Both evaluate their argument exactly once and are statement macros.
//
//   RETURN_IF_ERROR(DoThing());                 // returns the Status if not ok
//   ASSIGN_OR_RETURN(auto value, MakeValue());  // declares/assigns, or returns the Status
#ifndef NVFP4_COMMON_STATUS_MACROS_H_
#define NVFP4_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define NVFP4_STATUS_CONCAT_INNER_(a, b) a##b
#define NVFP4_STATUS_CONCAT_(a, b) NVFP4_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                                         \
  do {                                                                \
    ::absl::Status nvfp4_status_ = ::nvfp4::internal::AsStatus(expr); \
    if (!nvfp4_status_.ok()) return nvfp4_status_;                    \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  NVFP4_ASSIGN_OR_RETURN_IMPL_(NVFP4_STATUS_CONCAT_(nvfp4_statusor_, __LINE__), lhs, rexpr)

#define NVFP4_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

namespace nvfp4::internal {
inline const ::absl::Status& AsStatus(const ::absl::Status& status) { return status; }
template <typename T>
const ::absl::Status& AsStatus(const ::absl::StatusOr<T>& status_or) {
  return status_or.status();
}
}  // namespace nvfp4::internal

#endif  // NVFP4_COMMON_STATUS_MACROS_H_
