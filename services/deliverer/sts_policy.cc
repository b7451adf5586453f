#include "services/deliverer/sts_policy.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/address/mailbox.h"

namespace tern::deliverer {
namespace {

// RFC 8461 §3.2: max_age is at most 31557600 (about a year).
constexpr int64_t kMaxAgeLimit = 31557600;

// "mx.example.com" or "*.example.com" (RFC 8461 §3.2 sts-policy-mx-value):
// an LDH host name of at most 253 octets, after the optional "*.".
bool ValidMxPattern(absl::string_view pattern) {
  absl::ConsumePrefix(&pattern, "*.");
  return pattern.size() <= 253 && address::IsValidDomain(pattern, /*smtputf8=*/false);
}

}  // namespace

const char* StsModeName(StsMode mode) {
  switch (mode) {
    case StsMode::kNone:
      return "none";
    case StsMode::kTesting:
      return "testing";
    case StsMode::kEnforce:
      return "enforce";
  }
  return "none";
}

bool StsPolicy::MatchesMx(absl::string_view host) const {
  const std::string name = address::CanonicalHostName(host);
  if (name.empty()) {
    return false;
  }
  for (const std::string& pattern : mx) {
    if (absl::StartsWith(pattern, "*.")) {
      // The wildcard is one whole label: "*.example.com" matches
      // "mx.example.com", not "example.com" nor "a.b.example.com".
      const absl::string_view suffix = absl::string_view(pattern).substr(1);  // ".example.com"
      if (name.size() > suffix.size() && absl::EndsWith(name, suffix) &&
          name.find('.') == name.size() - suffix.size()) {
        return true;
      }
    } else if (name == pattern) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<StsPolicy> ParseStsPolicy(absl::string_view text) {
  StsPolicy policy;
  bool have_version = false;
  bool have_mode = false;
  bool have_max_age = false;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty()) {
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, " is not \"key: value\""));
    }
    const absl::string_view key = line.substr(0, colon);
    const absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (key == "version") {
      if (!have_version) {
        if (value != "STSv1") {
          return absl::InvalidArgumentError(absl::StrCat("unsupported version \"", value, "\""));
        }
        have_version = true;
      }
    } else if (key == "mode") {
      if (!have_mode) {
        if (value == "enforce") {
          policy.mode = StsMode::kEnforce;
        } else if (value == "testing") {
          policy.mode = StsMode::kTesting;
        } else if (value == "none") {
          policy.mode = StsMode::kNone;
        } else {
          return absl::InvalidArgumentError(absl::StrCat("unknown mode \"", value, "\""));
        }
        have_mode = true;
      }
    } else if (key == "max_age") {
      if (!have_max_age) {
        int64_t seconds = 0;
        if (value.empty() || value.size() > 10 || !std::all_of(value.begin(), value.end(), absl::ascii_isdigit) ||
            !absl::SimpleAtoi(value, &seconds) || seconds > kMaxAgeLimit) {
          return absl::InvalidArgumentError(
              absl::StrCat("max_age \"", value, "\" is not a number of seconds up to ", kMaxAgeLimit));
        }
        policy.max_age = std::chrono::seconds(seconds);
        have_max_age = true;
      }
    } else if (key == "mx") {
      std::string pattern = address::CanonicalHostName(value);
      if (!ValidMxPattern(pattern)) {
        return absl::InvalidArgumentError(absl::StrCat("mx \"", value, "\" is not a host name or *.domain"));
      }
      policy.mx.push_back(std::move(pattern));
    }
    // Other keys are extensions (RFC 8461 §3.2): ignored.
  }
  if (!have_version) {
    return absl::InvalidArgumentError("no version field");
  }
  if (!have_mode) {
    return absl::InvalidArgumentError("no mode field");
  }
  if (!have_max_age) {
    return absl::InvalidArgumentError("no max_age field");
  }
  if (policy.mx.empty() && policy.mode != StsMode::kNone) {
    return absl::InvalidArgumentError(absl::StrCat("mode ", StsModeName(policy.mode), " without any mx field"));
  }
  return policy;
}

std::optional<std::string> ParseStsRecord(const std::vector<std::string>& records) {
  const std::string* found = nullptr;
  for (const std::string& r : records) {
    if (absl::StartsWith(r, "v=STSv1")) {
      if (found != nullptr) {
        return std::nullopt;  // §3.1: more than one is as good as none
      }
      found = &r;
    }
  }
  if (found == nullptr) {
    return std::nullopt;
  }
  // sts-text-record = sts-version 1*(*WSP ";" *WSP sts-field) [";"]; the
  // version must be its own field ("v=STSv10" is not version STSv1).
  std::optional<std::string> id;
  bool first = true;
  for (absl::string_view field : absl::StrSplit(*found, ';')) {
    field = absl::StripAsciiWhitespace(field);
    if (first) {
      if (field != "v=STSv1") {
        return std::nullopt;
      }
      first = false;
      continue;
    }
    if (field.empty()) {
      continue;
    }
    const size_t eq = field.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return std::nullopt;
    }
    if (field.substr(0, eq) == "id" && !id.has_value()) {
      const absl::string_view value = field.substr(eq + 1);
      if (value.empty() || value.size() > 32 || !std::all_of(value.begin(), value.end(), absl::ascii_isalnum)) {
        return std::nullopt;
      }
      id = std::string(value);
    }
  }
  return id;
}

}  // namespace tern::deliverer
