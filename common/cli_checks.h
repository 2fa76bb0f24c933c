// CLI11 validators with plain messages for the project's command lines (nvfp4q, nvfp4d and the
// tools): "--threads: must be a number >= 0, got '-1'" instead of CLI11's range text with a
// 300-digit bound. Header-only; include where CLI11 is linked.
#ifndef NVFP4_COMMON_CLI_CHECKS_H_
#define NVFP4_COMMON_CLI_CHECKS_H_

#include <cmath>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"

namespace nvfp4::cli_checks {

// A finite number (integer or not, as the option's type then requires) >= min, or > min when
// strict.
inline CLI::Validator NumberFrom(double min, bool strict) {
  const std::string bound = (strict ? "> " : ">= ") + CLI::detail::to_string(min);
  return CLI::Validator(
      [min, strict, bound](std::string& value) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(value.c_str(), &end);
        const bool number =
            !value.empty() && end == value.c_str() + value.size() && std::isfinite(v);
        if (!number || (strict ? !(v > min) : !(v >= min))) {
          return "must be a number " + bound + ", got '" + value + "'";
        }
        return std::string();
      },
      "NUMBER " + bound);
}

inline CLI::Validator NonNegative() { return NumberFrom(0, /*strict=*/false); }
inline CLI::Validator Positive() { return NumberFrom(0, /*strict=*/true); }

}  // namespace nvfp4::cli_checks

#endif  // NVFP4_COMMON_CLI_CHECKS_H_
