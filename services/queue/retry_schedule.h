// File: retry_schedule.h
//
// When a recipient that failed temporarily is tried again: Haraka's
// `outbound.ini [main] temp_fail_intervals` with Haraka's exact grammar, or,
// when it is unset, `maxTempFailures` giving 2^(i+5) seconds for
// i = 1 .. maxTempFailures-1 (Haraka's default, 64 s .. 131072 s).
//
// Grammar (haraka-outbound-facts.md §2): all whitespace is removed and the
// text lower-cased; `none` means no retries at all; otherwise a comma list of
// `<num><s|m|h|d>[*<int>]`, where <num> is anything JavaScript's Number()
// accepts (`1.5m`, `0x10s`, `1e1m`) and `*k` repeats the item k times (`*0`,
// `*-1` and a bare `*` add nothing). Each item must be at least 5 s.
//
// Unlike Haraka, which silently falls back to the default on any error, an
// invalid value is an error that names the bad item, so the queue refuses to
// start with a schedule the operator did not ask for.
//
// Thread-safety: RetrySchedule is immutable after construction.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/ini_file.h"

namespace tern::queue {

// Parses a temp_fail_intervals value into delays in milliseconds. Errors are
// InvalidArgument and read like "bad item '4s' (each item must be at least 5s)".
absl::StatusOr<std::vector<int64_t>> ParseTempFailIntervals(absl::string_view text);

// Haraka's default: 2^(i+5) s for i = 1 .. max_temp_failures-1, in ms.
std::vector<int64_t> DefaultTempFailIntervals(int max_temp_failures);

class RetrySchedule {
 public:
  RetrySchedule() : RetrySchedule(DefaultTempFailIntervals(13)) {}
  explicit RetrySchedule(std::vector<int64_t> intervals_ms) : intervals_ms_(std::move(intervals_ms)) {}

  // Reads `temp_fail_intervals` and `maxTempFailures` from outbound.ini's
  // [main] section. An empty `temp_fail_intervals=` counts as unset.
  // Default: maxTempFailures=13, temp_fail_intervals unset.
  static absl::StatusOr<RetrySchedule> FromOutboundIni(const config::IniFile& outbound);

  // The delay before the next try of a recipient that has now failed
  // temporarily `attempts` times (1 after the first failure), or nullopt when
  // the retries are used up (attempts > number of intervals) and it bounces.
  std::optional<int64_t> DelayAfterFailureMs(uint32_t attempts) const;

  const std::vector<int64_t>& intervals_ms() const { return intervals_ms_; }

 private:
  std::vector<int64_t> intervals_ms_;
};

}  // namespace tern::queue
