#include "services/queue/destination_shaping.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/address/idna.h"
#include "lib/address/mailbox.h"
#include "lib/common/status_macros.h"

namespace tern::queue {
namespace {

constexpr int64_t kSecondMs = 1000;
constexpr int64_t kMinuteMs = 60 * kSecondMs;
constexpr int64_t kHourMs = 60 * kMinuteMs;
constexpr uint32_t kMaxRateCount = 1000000;
constexpr int64_t kMaxConcurrency = 1000000;
// Float slack for comparing theoretical arrival times built by repeated
// addition of a fractional interval (1000/3 ms ...): far below a millisecond.
constexpr double kSlackMs = 1e-3;

constexpr absl::string_view kSitePrefix = "site:";

absl::StatusOr<DestinationLimits> LoadSection(const config::IniFile& ini, const std::string& section,
                                              DestinationLimits limits, bool site) {
  for (const std::string& key : ini.Keys(section)) {
    if (site && (key == "mx" || key == "domains")) {
      continue;
    }
    if (key != "concurrency_max" && key != "rate_max" && key != "backoff" && key != "backoff_seconds") {
      return ini.KeyError(section, key,
                          site ? "unknown key (a [site:NAME] section knows mx, domains, concurrency_max, rate_max, "
                                 "backoff and backoff_seconds)"
                               : "unknown key (shaping.ini knows concurrency_max, rate_max, backoff and "
                                 "backoff_seconds)");
    }
  }
  TERN_ASSIGN_OR_RETURN(int64_t concurrency, ini.GetInt(section, "concurrency_max", limits.concurrency_max));
  if (concurrency < 0 || concurrency > kMaxConcurrency) {
    return ini.KeyError(section, "concurrency_max",
                        absl::StrCat("'", concurrency, "' is not in [0, 1000000] (0 = no limit)"));
  }
  limits.concurrency_max = static_cast<uint32_t>(concurrency);
  if (std::optional<std::string> text = ini.Get(section, "rate_max"); text.has_value()) {
    absl::StatusOr<RateLimit> rate = ParseRateLimit(*text);
    if (!rate.ok()) {
      return ini.KeyError(section, "rate_max", rate.status().message());
    }
    limits.rate = *rate;
  }
  TERN_ASSIGN_OR_RETURN(limits.backoff, ini.GetBool(section, "backoff", limits.backoff));
  TERN_ASSIGN_OR_RETURN(int64_t seconds, ini.GetInt(section, "backoff_seconds", limits.backoff_ms / 1000));
  if (seconds < 1 || seconds > 86400) {
    return ini.KeyError(section, "backoff_seconds", absl::StrCat("'", seconds, "' is not in [1, 86400]"));
  }
  limits.backoff_ms = seconds * 1000;
  return limits;
}

}  // namespace

bool IsCongestion(uint32_t reply_code, absl::string_view reply_text) {
  if (reply_code == 421) {
    return true;
  }
  if (reply_code / 100 != 4) {
    return false;
  }
  const std::string text = absl::AsciiStrToLower(reply_text);
  if (!absl::StrContains(text, "too many")) {
    return false;
  }
  for (absl::string_view what : {"connection", "session", "concurren", "simultaneous"}) {
    if (absl::StrContains(text, what)) {
      return true;
    }
  }
  return false;
}

uint32_t RateLimit::burst() const {
  if (!enabled()) {
    return 0;
  }
  const int64_t per_second = static_cast<int64_t>(count) * kSecondMs / period_ms;
  return static_cast<uint32_t>(std::clamp<int64_t>(per_second, 1, count));
}

std::string RateLimit::ToString() const {
  if (!enabled()) {
    return "none";
  }
  const char* unit = period_ms == kHourMs ? "h" : period_ms == kMinuteMs ? "m" : "s";
  return absl::StrCat(count, "/", unit);
}

absl::StatusOr<RateLimit> ParseRateLimit(absl::string_view text) {
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t.empty() || t == "0" || t == "none") {
    return RateLimit{};
  }
  const size_t slash = t.find('/');
  if (slash == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a rate like 100/s, 600/m or 1000/h"));
  }
  const std::string unit(absl::StripAsciiWhitespace(absl::string_view(t).substr(slash + 1)));
  int64_t period = 0;
  if (unit == "s" || unit == "sec" || unit == "second") {
    period = kSecondMs;
  } else if (unit == "m" || unit == "min" || unit == "minute") {
    period = kMinuteMs;
  } else if (unit == "h" || unit == "hour") {
    period = kHourMs;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "': the period must be s, m or h"));
  }
  uint32_t count = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(t).substr(0, slash)), &count)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a rate like 100/s, 600/m or 1000/h"));
  }
  if (count < 1 || count > kMaxRateCount) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "': the count must be in [1, 1000000] (empty or 0 = no limit)"));
  }
  return RateLimit{count, period};
}

const MxSite* DestinationShaping::SiteForMx(absl::string_view host) const {
  if (sites_.empty() || host.empty()) {
    return nullptr;
  }
  std::string h = absl::AsciiStrToLower(host);
  if (!h.empty() && h.back() == '.') {
    h.pop_back();
  }
  for (const MxSite& site : sites_) {
    for (const std::string& name : site.mx) {
      if (h == name || (h.size() > name.size() && absl::EndsWith(h, name) && h[h.size() - name.size() - 1] == '.')) {
        return &site;
      }
    }
  }
  return nullptr;
}

const MxSite* DestinationShaping::SiteNamed(absl::string_view name) const {
  for (const MxSite& site : sites_) {
    if (site.name == name) {
      return &site;
    }
  }
  return nullptr;
}

absl::Status DestinationShaping::AddSite(const std::string& name, const std::vector<std::string>& mx,
                                         const std::vector<std::string>& domains, DestinationLimits limits) {
  MxSite site;
  site.name = absl::AsciiStrToLower(name);
  site.key = absl::StrCat(kSitePrefix, site.name);
  if (site.name.empty() ||
      !std::all_of(site.name.begin(), site.name.end(),
                   [](char c) { return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.'; })) {
    return absl::InvalidArgumentError("the site name must be letters, digits, '-', '_' or '.'");
  }
  for (const MxSite& other : sites_) {
    if (other.name == site.name) {
      return absl::InvalidArgumentError(absl::StrCat("a second section for site ", site.name));
    }
  }
  for (const std::string& entry : mx) {
    absl::string_view e = absl::StripAsciiWhitespace(entry);
    absl::ConsumePrefix(&e, "*.");
    absl::ConsumePrefix(&e, ".");
    absl::ConsumeSuffix(&e, ".");
    absl::StatusOr<std::string> host = address::DomainToAscii(e);
    if (e.empty() || !host.ok() || !address::IsValidDomain(*host, /*smtputf8=*/false)) {
      return absl::InvalidArgumentError(absl::StrCat("mx: '", entry, "' is not a host name (or *.domain)"));
    }
    site.mx.push_back(*std::move(host));
  }
  if (site.mx.empty()) {
    return absl::InvalidArgumentError(
        "mx: a site needs the MX host names that make a domain part of it (e.g. mx=google.com, googlemail.com)");
  }
  const size_t index = sites_.size();
  for (const std::string& entry : domains) {
    absl::StatusOr<std::string> domain = address::DomainToAscii(absl::StripAsciiWhitespace(entry));
    if (!domain.ok() || !address::IsValidDomain(*domain, /*smtputf8=*/false)) {
      return absl::InvalidArgumentError(absl::StrCat("domains: '", entry, "' is not a mail domain"));
    }
    if (domains_.contains(*domain)) {
      return absl::InvalidArgumentError(
          absl::StrCat("domains: ", *domain, " has a section of its own, whose limits would apply instead"));
    }
    if (auto it = listed_.find(*domain); it != listed_.end() && it->second != index) {
      return absl::InvalidArgumentError(
          absl::StrCat("domains: ", *domain, " is listed in [site:", sites_[it->second].name, "] already"));
    }
    if (listed_.insert_or_assign(*domain, index).second) {
      site.domains.push_back(*std::move(domain));
    }
  }
  domains_.insert_or_assign(site.key, limits);
  sites_.push_back(std::move(site));
  return absl::OkStatus();
}

absl::StatusOr<DestinationShaping> DestinationShaping::Load(const config::IniFile& ini,
                                                            uint32_t default_concurrency) {
  DestinationShaping out(default_concurrency);
  if (ini.HasSection("*")) {
    TERN_ASSIGN_OR_RETURN(out.defaults_, LoadSection(ini, "*", out.defaults_, /*site=*/false));
  }
  // Domains first, so a site's `domains` can be checked against them
  // whatever the order of the sections.
  std::vector<std::string> site_sections;
  for (const std::string& section : ini.Sections()) {
    if (section == "*") {
      continue;
    }
    if (absl::StartsWithIgnoreCase(section, kSitePrefix)) {
      site_sections.push_back(section);
      continue;
    }
    if (section == "main") {
      // IniFile files keys written before any section under "main".
      return ini.KeyError(section, ini.Keys(section).empty() ? "" : ini.Keys(section).front(),
                          "keys belong in a [domain] or [*] section");
    }
    absl::StatusOr<std::string> domain = address::DomainToAscii(section);
    if (!domain.ok() || domain->empty() || domain->front() == '[') {
      return ini.KeyError(section, "", "the section name is not a mail domain (or * for every domain)");
    }
    if (out.domains_.contains(*domain)) {
      return ini.KeyError(section, "", absl::StrCat("a second section for ", *domain));
    }
    TERN_ASSIGN_OR_RETURN(DestinationLimits limits, LoadSection(ini, section, out.defaults_, /*site=*/false));
    out.domains_.emplace(*std::move(domain), limits);
  }
  for (const std::string& section : site_sections) {
    TERN_ASSIGN_OR_RETURN(DestinationLimits limits, LoadSection(ini, section, out.defaults_, /*site=*/true));
    const std::vector<std::string> mx = ini.GetList(section, "mx");
    absl::Status added = out.AddSite(section.substr(kSitePrefix.size()), mx, ini.GetList(section, "domains"),
                                     limits);
    if (!added.ok()) {
      const absl::string_view message = added.message();
      const std::string key = absl::StartsWith(message, "domains:") ? "domains"
                              : absl::StartsWith(message, "mx:")    ? "mx"
                                                                    : "";
      return ini.KeyError(section, key, key.empty() ? message : message.substr(key.size() + 2));
    }
  }
  return out;
}

double RateBuckets::TatOf(const std::string& domain, const RateLimit& rate, int64_t now_ms) {
  const double now = static_cast<double>(now_ms);
  auto it = tat_.find(domain);
  if (it == tat_.end() || it->second < now) {
    return now;
  }
  if (it->second > now + rate.burst() * rate.interval_ms() + kSlackMs) {
    it->second = now;
  }
  return it->second;
}

bool RateBuckets::Allows(const std::string& domain, const RateLimit& rate, int64_t now_ms) {
  const double tolerance = (rate.burst() - 1) * rate.interval_ms();
  return TatOf(domain, rate, now_ms) - tolerance <= static_cast<double>(now_ms) + kSlackMs;
}

void RateBuckets::Take(const std::string& domain, const RateLimit& rate, int64_t now_ms) {
  const double tat = TatOf(domain, rate, now_ms);
  tat_[domain] = tat + rate.interval_ms();
}

void RateBuckets::GiveBack(const std::string& domain, const RateLimit& rate) {
  auto it = tat_.find(domain);
  if (it != tat_.end()) {
    it->second -= rate.interval_ms();
  }
}

uint32_t RateBuckets::Available(const std::string& domain, const RateLimit& rate, int64_t now_ms) {
  const double interval = rate.interval_ms();
  const double ahead = TatOf(domain, rate, now_ms) - static_cast<double>(now_ms);  // >= 0
  const double room = (rate.burst() - 1) * interval - ahead + kSlackMs;
  if (room < 0) {
    return 0;
  }
  return std::min<uint32_t>(rate.burst(), static_cast<uint32_t>(std::floor(room / interval)) + 1);
}

void RateBuckets::Prune(int64_t now_ms) {
  const double now = static_cast<double>(now_ms);
  for (auto it = tat_.begin(); it != tat_.end();) {
    if (it->second <= now) {
      tat_.erase(it++);
    } else {
      ++it;
    }
  }
}

}  // namespace tern::queue
