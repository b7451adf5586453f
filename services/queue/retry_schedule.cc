#include "services/queue/retry_schedule.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tern::queue {
namespace {

// Longest single interval we accept. Haraka has no limit; a year is already
// far beyond any sensible retry and keeps the arithmetic in range.
constexpr double kMaxIntervalSeconds = 365.0 * 86400.0;
// Most intervals a schedule may expand to (Haraka would try to build any list).
constexpr int64_t kMaxIntervals = 10000;
constexpr double kMinIntervalSeconds = 5.0;

bool IsDigitOfBase(char c, int base) {
  if (base == 16) {
    return absl::ascii_isxdigit(static_cast<unsigned char>(c));
  }
  return c >= '0' && c < static_cast<char>('0' + base);
}

// JavaScript's Number(text) for text that has no whitespace and is lower
// case; nullopt where Number() gives NaN. Number("") is 0. Hex, octal and
// binary literals take no sign; decimals may have a sign, a fraction with
// digits on either side of the point, and an exponent. ("Infinity" is case
// sensitive in JavaScript, so after lower-casing it is NaN, as in Haraka.)
std::optional<double> ParseJsNumber(absl::string_view s) {
  if (s.empty()) {
    return 0.0;
  }
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o' || s[1] == 'b')) {
    const int base = s[1] == 'x' ? 16 : s[1] == 'o' ? 8 : 2;
    absl::string_view digits = s.substr(2);
    if (digits.empty()) {
      return std::nullopt;
    }
    double value = 0;
    for (char c : digits) {
      if (!IsDigitOfBase(c, base)) {
        return std::nullopt;
      }
      const int d = absl::ascii_isdigit(static_cast<unsigned char>(c)) ? c - '0' : c - 'a' + 10;
      value = value * base + d;
    }
    return value;
  }
  size_t i = 0;
  if (s[i] == '+' || s[i] == '-') {
    ++i;
  }
  size_t int_digits = 0;
  while (i < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
    ++i;
    ++int_digits;
  }
  size_t frac_digits = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
      ++i;
      ++frac_digits;
    }
  }
  if (int_digits + frac_digits == 0) {
    return std::nullopt;
  }
  if (i < s.size() && s[i] == 'e') {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
      ++i;
    }
    size_t exp_digits = 0;
    while (i < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
      ++i;
      ++exp_digits;
    }
    if (exp_digits == 0) {
      return std::nullopt;
    }
  }
  if (i != s.size()) {
    return std::nullopt;
  }
  // The grammar is checked, so strtod (C locale) reads exactly this literal.
  const std::string copy(s);
  return std::strtod(copy.c_str(), nullptr);
}

absl::Status BadItem(absl::string_view item, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("bad item '", item, "' (", why, ")"));
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseTempFailIntervals(absl::string_view text) {
  std::string normalized;
  normalized.reserve(text.size());
  for (char c : text) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) {
      normalized.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
    }
  }
  if (normalized == "none") {
    return std::vector<int64_t>{};
  }
  if (normalized.empty()) {
    return absl::InvalidArgumentError("empty value (use 'none' for no retries)");
  }
  std::vector<int64_t> out;
  for (absl::string_view item : absl::StrSplit(normalized, ',')) {
    if (item.empty()) {
      return absl::InvalidArgumentError("empty item (two commas in a row, or a trailing comma)");
    }
    std::vector<absl::string_view> parts = absl::StrSplit(item, '*');
    if (parts.size() > 2) {
      return BadItem(item, "more than one '*'");
    }
    absl::string_view delay = parts[0];
    if (delay.empty()) {
      return BadItem(item, "not a number followed by s, m, h or d");
    }
    double unit = 0;
    switch (delay.back()) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      default: return BadItem(item, "not a number followed by s, m, h or d");
    }
    const std::optional<double> number = ParseJsNumber(delay.substr(0, delay.size() - 1));
    if (!number.has_value()) {
      return BadItem(item, "not a number followed by s, m, h or d");
    }
    const double seconds = *number * unit;
    if (!(seconds >= kMinIntervalSeconds)) {
      return BadItem(item, "each item must be at least 5s");
    }
    if (seconds > kMaxIntervalSeconds) {
      return BadItem(item, "each item must be at most 365d");
    }
    double repeat = 1;
    if (parts.size() == 2) {
      const std::optional<double> count = ParseJsNumber(parts[1]);
      if (!count.has_value() || !std::isfinite(*count) || std::trunc(*count) != *count) {
        return BadItem(item, "the repeat count after '*' must be an integer");
      }
      repeat = *count;
    }
    if (repeat <= 0) {
      continue;
    }
    if (static_cast<double>(out.size()) + repeat > static_cast<double>(kMaxIntervals)) {
      return BadItem(item, absl::StrCat("more than ", kMaxIntervals, " intervals in all"));
    }
    const auto ms = static_cast<int64_t>(std::llround(seconds * 1000.0));
    out.insert(out.end(), static_cast<size_t>(repeat), ms);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", normalized, "' gives no intervals (use 'none' for no retries)"));
  }
  return out;
}

std::vector<int64_t> DefaultTempFailIntervals(int max_temp_failures) {
  std::vector<int64_t> out;
  for (int i = 1; i < max_temp_failures; ++i) {
    out.push_back((int64_t{1} << (i + 5)) * 1000);
  }
  return out;
}

absl::StatusOr<RetrySchedule> RetrySchedule::FromOutboundIni(const config::IniFile& outbound) {
  const std::optional<std::string> tfi = outbound.Get("main", "temp_fail_intervals");
  if (tfi.has_value() && !absl::StripAsciiWhitespace(*tfi).empty()) {
    auto parsed = ParseTempFailIntervals(*tfi);
    if (!parsed.ok()) {
      return outbound.KeyError("main", "temp_fail_intervals", parsed.status().message());
    }
    return RetrySchedule(*std::move(parsed));
  }
  auto max = outbound.GetInt("main", "maxTempFailures", 13);
  if (!max.ok()) {
    return max.status();
  }
  // 2^(40+5) s is already a million years; the cap keeps the shift defined.
  if (*max < 0 || *max > 40) {
    return outbound.KeyError("main", "maxTempFailures", absl::StrCat("'", *max, "' must be between 0 and 40"));
  }
  return RetrySchedule(DefaultTempFailIntervals(static_cast<int>(*max)));
}

std::optional<int64_t> RetrySchedule::DelayAfterFailureMs(uint32_t attempts) const {
  if (attempts == 0 || attempts > intervals_ms_.size()) {
    return std::nullopt;
  }
  return intervals_ms_[attempts - 1];
}

}  // namespace tern::queue
