#include "services/bouncer/suppression.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tern::bouncer {
namespace {

bool IsDomainLabelChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '_'; }

bool IsValidDomainEntry(absl::string_view d) {
  if (absl::StartsWith(d, ".")) {
    d.remove_prefix(1);
  }
  if (d.empty() || d.front() == '.' || d.back() == '.') {
    return false;
  }
  for (absl::string_view label : absl::StrSplit(d, '.')) {
    if (label.empty()) {
      return false;
    }
    for (char c : label) {
      if (!IsDomainLabelChar(c) && static_cast<unsigned char>(c) < 0x80) {
        return false;  // non-ASCII (U-labels) allowed, ASCII punctuation not
      }
    }
  }
  return true;
}

// "c.s.d" where each part is 1-3 digits or "*", c a digit 2/4/5 or "*".
bool IsStatusPattern(absl::string_view p) {
  std::vector<absl::string_view> parts = absl::StrSplit(p, '.');
  if (parts.size() != 3) {
    return false;
  }
  for (size_t i = 0; i < 3; ++i) {
    absl::string_view part = parts[i];
    if (part == "*") {
      continue;
    }
    if (part.empty() || part.size() > 3) {
      return false;
    }
    for (char c : part) {
      if (!absl::ascii_isdigit(c)) {
        return false;
      }
    }
    if (i == 0 && part != "2" && part != "4" && part != "5") {
      return false;
    }
  }
  return true;
}

// "550", "55x", "5xx": a class digit, then digits or x.
bool IsReplyPattern(absl::string_view p) {
  if (p.size() != 3 || !(p[0] >= '2' && p[0] <= '5')) {
    return false;
  }
  for (char c : p.substr(1)) {
    if (!absl::ascii_isdigit(c) && c != 'x') {
      return false;
    }
  }
  return true;
}

bool StatusMatches(absl::string_view pattern, absl::string_view status) {
  std::vector<absl::string_view> want = absl::StrSplit(pattern, '.');
  std::vector<absl::string_view> have = absl::StrSplit(status, '.');
  if (have.size() != 3) {
    return false;
  }
  for (size_t i = 0; i < 3; ++i) {
    if (want[i] != "*" && want[i] != have[i]) {
      return false;
    }
  }
  return true;
}

bool ReplyMatches(absl::string_view pattern, int code) {
  if (code < 200 || code > 599) {
    return false;
  }
  std::string have = absl::StrCat(code);
  for (size_t i = 0; i < 3; ++i) {
    if (pattern[i] != 'x' && pattern[i] != have[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<SuppressionRules> SuppressionRules::Create(const std::vector<std::string>& sender_domains,
                                                          const std::vector<std::string>& status_patterns,
                                                          absl::string_view domains_origin,
                                                          absl::string_view status_origin) {
  SuppressionRules rules;
  for (const std::string& raw : sender_domains) {
    std::string d = absl::AsciiStrToLower(absl::StripAsciiWhitespace(raw));
    if (d.empty()) {
      continue;
    }
    if (!IsValidDomainEntry(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat(domains_origin, ": \"", raw, "\" is not a domain (or .domain for its subdomains)"));
    }
    rules.domains_.push_back(std::move(d));
  }
  for (const std::string& raw : status_patterns) {
    std::string p = absl::AsciiStrToLower(absl::StripAsciiWhitespace(raw));
    if (p.empty()) {
      continue;
    }
    if (IsStatusPattern(p)) {
      rules.statuses_.push_back(std::move(p));
    } else if (IsReplyPattern(p)) {
      rules.reply_codes_.push_back(std::move(p));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          status_origin, ": \"", raw, "\" is neither a status pattern (5.7.1, 5.7.*) nor a reply code (550, 55x)"));
    }
  }
  return rules;
}

bool SuppressionRules::SuppressesSender(absl::string_view sender) const {
  size_t at = sender.rfind('@');
  if (at == absl::string_view::npos || domains_.empty()) {
    return false;
  }
  std::string domain = absl::AsciiStrToLower(sender.substr(at + 1));
  for (const std::string& d : domains_) {
    if (d.front() == '.' ? absl::EndsWith(domain, d) : domain == d) {
      return true;
    }
  }
  return false;
}

bool SuppressionRules::SuppressesRecipient(absl::string_view status, int reply_code) const {
  for (const std::string& p : statuses_) {
    if (StatusMatches(p, status)) {
      return true;
    }
  }
  for (const std::string& p : reply_codes_) {
    if (ReplyMatches(p, reply_code)) {
      return true;
    }
  }
  return false;
}

}  // namespace tern::bouncer
