#include "lib/tlsrpt/tlsrpt.h"

#include <arpa/inet.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "lib/address/authority.h"
#include "lib/address/mailbox.h"
#include "lib/common/json_string.h"
#include "lib/common/status_macros.h"
#include "lib/mime/header.h"

namespace tern::tlsrpt {
namespace {

constexpr absl::string_view kVersion = "v=TLSRPTv1";
constexpr char kCrlf[] = "\r\n";
// RFC 5322 §2.1.1: lines SHOULD stay within 78 characters; we fold there.
constexpr size_t kFoldLineLength = 78;
// RFC 2045 §6.8: base64 lines are at most 76 characters.
constexpr size_t kBase64LineLength = 76;
// Longest message_id / report_id we write between angle brackets: keeps the
// "Message-ID: <...>" line far below RFC 5322's hard limit of 998.
constexpr size_t kMaxIdLength = 900;
// RFC 5321 §4.5.3.1: a path is 256 octets with its brackets (lib/address
// checks the local part's 64 and the labels' 63).
constexpr size_t kMaxAddressLength = 254;
constexpr size_t kMaxDomainLength = 253;

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

absl::string_view TrimLeadingWsp(absl::string_view s) {
  while (!s.empty() && IsWsp(s.front())) {
    s.remove_prefix(1);
  }
  return s;
}

absl::string_view TrimTrailingWsp(absl::string_view s) {
  while (!s.empty() && IsWsp(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

bool IsAllWsp(absl::string_view s) { return TrimLeadingWsp(s).empty(); }

// ---------------------------------------------------------------------------
// Addresses and domains (ASCII only: see ComposeMail in the header).

// A host name of LDH labels, as policy domains and submitters are:
// A-labels, no trailing dot (lib/address, RFC 5321 §4.1.2), and at most 253
// octets, the most a name in DNS can have as text.
bool IsDomainName(absl::string_view s) {
  return s.size() <= kMaxDomainLength && address::IsValidDomain(s, /*smtputf8=*/false);
}

// An address a report goes to or comes from: an RFC 5321 mailbox in ASCII
// (lib/address: dot-string or quoted local part, a domain or an address
// literal), at most 254 octets.
bool IsAddrSpec(absl::string_view s) {
  if (s.size() > kMaxAddressLength) {
    return false;
  }
  absl::StatusOr<address::Mailbox> m = address::ParseMailbox(s, /*smtputf8=*/false);
  return m.ok() && !m->local.empty() && !m->domain.empty();
}

// What may stand between the angle brackets of a msg-id we write: printable
// ASCII without space or angle brackets (RFC 5322 §3.6.4 in spirit; an "@"
// is required only of the Message-ID, see ComposeMail).
bool IsIdText(absl::string_view s) {
  if (s.empty() || s.size() > kMaxIdLength) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f && c != '<' && c != '>'; });
}

// ---------------------------------------------------------------------------
// The record (RFC 8460 §3).
//
//   tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//   field-delim      = *WSP ";" *WSP
//   tlsrpt-field     = tlsrpt-rua / tlsrpt-extension
//   tlsrpt-version   = %s"v=TLSRPTv1"
//   tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//   tlsrpt-uri       = URI   ; RFC 3986; "," "!" (and ";") percent-encoded
//   tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
//   tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//   tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
//
// The grammar is followed as written, which is stricter than some
// published records: names are case-sensitive ("RUA=" is an unknown
// extension, so the record has no rua), whitespace is allowed only around
// ";" and ",", an empty field (";;") or whitespace after the last field
// without a ";" makes the record malformed. A malformed record means the
// domain does not take reports (§3: a sender must then assume the domain
// does not implement TLSRPT), so the error says what was wrong for the log.

// A record "begins with v=TLSRPTv1" (§3) when the version field is whole:
// "v=TLSRPTv10;..." is another version and is ignored, not malformed.
bool IsTlsRptRecord(absl::string_view txt) {
  if (!absl::StartsWith(txt, kVersion)) {
    return false;
  }
  return txt.size() == kVersion.size() || txt[kVersion.size()] == ';' || IsWsp(txt[kVersion.size()]);
}

bool IsExtName(absl::string_view s) {
  if (s.empty() || s.size() > 32 || !absl::ascii_isalnum(s.front())) {
    return false;
  }
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.'; });
}

bool IsExtValue(absl::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x21 && c <= 0x7e && c != ';' && c != '='; });
}

// Characters an RFC 3986 URI holds literally: unreserved, gen-delims and
// sub-delims, less "," and "!" (RFC 8460 §3 wants them percent-encoded: ","
// separates the URIs, "!" separates the parts of a report file name) and
// ";" (the field delimiter). "%" is checked apart, as pct-encoded.
bool IsUriChar(char c) {
  return absl::ascii_isalnum(c) || absl::string_view("-._~:/?#[]@$&'()*+=").find(c) != absl::string_view::npos;
}

// Checks `uri` at the level of its characters and scheme (RFC 3986 §3.1:
// scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":") and returns the
// scheme in lower case (schemes are case-insensitive).
absl::StatusOr<std::string> CheckUri(absl::string_view uri) {
  size_t colon = uri.find(':');
  if (colon == absl::string_view::npos || colon == 0 || !absl::ascii_isalpha(uri.front())) {
    return absl::InvalidArgumentError(absl::StrCat("rua URI without a scheme: \"", absl::CHexEscape(uri), "\""));
  }
  for (char c : uri.substr(0, colon)) {
    if (!absl::ascii_isalnum(c) && c != '+' && c != '-' && c != '.') {
      return absl::InvalidArgumentError(absl::StrCat("rua URI with a bad scheme: \"", absl::CHexEscape(uri), "\""));
    }
  }
  for (size_t i = colon + 1; i < uri.size(); ++i) {
    if (uri[i] == '%') {
      if (i + 2 >= uri.size() || !absl::ascii_isxdigit(uri[i + 1]) || !absl::ascii_isxdigit(uri[i + 2])) {
        return absl::InvalidArgumentError(
            absl::StrCat("rua URI with a bad percent-encoding: \"", absl::CHexEscape(uri), "\""));
      }
      i += 2;
    } else if (!IsUriChar(uri[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("rua URI with a character that must be percent-encoded: \"", absl::CHexEscape(uri), "\""));
    }
  }
  return absl::AsciiStrToLower(uri.substr(0, colon));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  return absl::ascii_tolower(c) - 'a' + 10;
}

// %XX -> byte; CheckUri made sure that every "%" starts a valid escape.
std::string PercentDecode(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && absl::ascii_isxdigit(s[i + 1]) && absl::ascii_isxdigit(s[i + 2])) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Splits RFC 6068's to = addr-spec *("," addr-spec) at commas outside
// quoted local parts.
std::vector<std::string> SplitAddressList(absl::string_view s) {
  std::vector<std::string> out;
  std::string current;
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (quoted && c == '\\' && i + 1 < s.size()) {
      current.push_back(c);
      current.push_back(s[++i]);
      continue;
    }
    if (c == '"') {
      quoted = !quoted;
    }
    if (c == ',' && !quoted) {
      out.push_back(std::move(current));
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  out.push_back(std::move(current));
  return out;
}

// A mailto: URI (RFC 6068) after its scheme: the addresses before any "?"
// (header fields such as "?subject=" are not ours to use), percent-decoded.
// Each usable address is added as "mailto:addr"; the rest go to `skipped`.
void AddMailto(absl::string_view uri, std::vector<std::string>& rua, std::vector<std::string>& skipped) {
  absl::string_view to = uri.substr(std::strlen("mailto:"));
  to = to.substr(0, to.find('?'));
  bool any = false;
  for (std::string& address : SplitAddressList(PercentDecode(to))) {
    if (IsAddrSpec(address)) {
      rua.push_back(absl::StrCat("mailto:", address));
      any = true;
    }
  }
  if (!any) {
    skipped.push_back(absl::StrCat(uri, " (no usable address)"));
  }
}

absl::Status ParseRua(absl::string_view value, std::vector<std::string>& rua, std::vector<std::string>& skipped) {
  std::vector<absl::string_view> uris = absl::StrSplit(value, ',');
  for (size_t i = 0; i < uris.size(); ++i) {
    // WSP is allowed only around the commas, not after "rua=" or at the end
    // (the field's own trailing WSP belongs to the next field-delim).
    absl::string_view uri = uris[i];
    if (i > 0) {
      uri = TrimLeadingWsp(uri);
    }
    if (i + 1 < uris.size()) {
      uri = TrimTrailingWsp(uri);
    }
    if (uri.empty()) {
      return absl::InvalidArgumentError("empty URI in rua");
    }
    TERN_ASSIGN_OR_RETURN(std::string scheme, CheckUri(uri));
    if (scheme == "mailto") {
      AddMailto(uri, rua, skipped);
    } else if (scheme == "https") {
      absl::string_view rest = uri.substr(std::strlen("https:"));
      if (!absl::StartsWith(rest, "//") || rest.size() == 2 || rest[2] == '/' || rest[2] == '?' || rest[2] == '#') {
        skipped.push_back(absl::StrCat(uri, " (no host)"));
      } else {
        rua.push_back(absl::StrCat("https:", rest));
      }
    } else {
      skipped.push_back(absl::StrCat(uri, " (scheme not supported)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Record> ParseOneRecord(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text.substr(kVersion.size()), ';');
  if (!IsAllWsp(parts[0])) {
    return absl::InvalidArgumentError("text after v=TLSRPTv1 that is not a ';'");
  }
  Record record;
  std::vector<std::string> skipped;
  bool saw_rua = false;
  size_t fields = 0;
  for (size_t i = 1; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    // Trailing whitespace after the last field is outside the ABNF, but
    // DNS consoles add it and the intent is plain: tolerated, so such a
    // domain still gets its reports.
    absl::string_view field = TrimTrailingWsp(TrimLeadingWsp(parts[i]));
    if (field.empty()) {
      if (last && fields > 0) {
        break;  // the optional final field-delim
      }
      return absl::InvalidArgumentError(fields == 0 && last ? "no field after v=TLSRPTv1 (rua= is required)"
                                                            : "empty field (\";;\")");
    }
    ++fields;
    size_t eq = field.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("field without '=': \"", absl::CHexEscape(field), "\""));
    }
    absl::string_view name = field.substr(0, eq);
    absl::string_view value = field.substr(eq + 1);
    if (name == "rua") {
      // The grammar allows the field more than once; each adds its URIs.
      saw_rua = true;
      TERN_RETURN_IF_ERROR(ParseRua(value, record.rua, skipped));
    } else if (!IsExtName(name) || !IsExtValue(value)) {
      return absl::InvalidArgumentError(absl::StrCat("malformed field: \"", absl::CHexEscape(field), "\""));
    }
    // Unknown extensions are ignored (§3).
  }
  if (!saw_rua) {
    return absl::InvalidArgumentError("no rua= field");
  }
  if (record.rua.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rua has no usable mailto: or https: URI; skipped: ", absl::StrJoin(skipped, ", ")));
  }
  return record;
}

// ---------------------------------------------------------------------------
// JSON (RFC 8259).


void AppendJsonStringArray(std::string& out, const std::vector<std::string>& values) {
  out.push_back('[');
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) {
      out.push_back(',');
    }
    AppendJsonString(out, values[i]);
  }
  out.push_back(']');
}

// Appends `"name":"value"` (after a comma unless `first`).
void AppendMember(std::string& out, absl::string_view name, absl::string_view value) {
  out.push_back(',');
  AppendJsonString(out, name);
  out.push_back(':');
  AppendJsonString(out, value);
}

// The UTC civil time of `t`, clamped to years 0000-9999 so that the
// four-digit year of RFC 3339 always holds.
absl::CivilSecond UtcCivil(absl::Time t) {
  static const absl::Time kMin = absl::FromCivil(absl::CivilSecond(0, 1, 1, 0, 0, 0), absl::UTCTimeZone());
  static const absl::Time kMax = absl::FromCivil(absl::CivilSecond(9999, 12, 31, 23, 59, 59), absl::UTCTimeZone());
  return absl::ToCivilSecond(std::clamp(t, kMin, kMax), absl::UTCTimeZone());
}

// RFC 3339 §5.6 date-time in UTC, whole seconds: "2026-11-22T00:00:00Z".
std::string Rfc3339(absl::Time t) {
  absl::CivilSecond c = UtcCivil(t);
  return absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02dZ", c.year(), c.month(), c.day(), c.hour(), c.minute(),
                         c.second());
}

int64_t UnixSeconds(absl::Time t) { return std::max<int64_t>(0, absl::ToUnixSeconds(t)); }

// ---------------------------------------------------------------------------
// The mail.

// Folds words (joined by single spaces) at spaces so that lines stay within
// 78 characters where the words allow; `first_line_used` is the length
// already on the first line ("Subject: "). Only used where the grammar
// allows FWS between every two words.
std::string FoldWords(const std::vector<std::string>& words, size_t first_line_used) {
  std::string out;
  size_t line = first_line_used;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) {
      if (line + 1 + words[i].size() > kFoldLineLength) {
        out += kCrlf;
        line = 0;
      }
      out.push_back(' ');
      ++line;
    }
    out += words[i];
    line += words[i].size();
  }
  return out;
}

// FNV-1a, 64 bits: a stable digest for the boundary (absl::Hash is seeded
// per process, and the same report should give the same message).
uint64_t Fnv1a(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

absl::Status CheckMailOptions(const Report& report, const MailOptions& options) {
  if (!IsAddrSpec(options.from)) {
    return absl::InvalidArgumentError(
        absl::StrCat("from is not an ASCII addr-spec: \"", absl::CHexEscape(options.from), "\""));
  }
  if (!IsAddrSpec(options.to)) {
    return absl::InvalidArgumentError(
        absl::StrCat("to is not an ASCII addr-spec: \"", absl::CHexEscape(options.to), "\""));
  }
  if (!IsDomainName(options.submitter)) {
    return absl::InvalidArgumentError(
        absl::StrCat("submitter is not a domain name: \"", absl::CHexEscape(options.submitter), "\""));
  }
  if (!IsDomainName(options.policy_domain)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy_domain is not a domain name: \"", absl::CHexEscape(options.policy_domain), "\""));
  }
  if (!IsIdText(options.message_id) || !absl::StrContains(options.message_id, '@')) {
    return absl::InvalidArgumentError(
        absl::StrCat("message_id is not id-left@id-right: \"", absl::CHexEscape(options.message_id), "\""));
  }
  if (!IsIdText(report.report_id)) {
    return absl::InvalidArgumentError(absl::StrCat("report_id cannot stand in the Subject as <report_id>: \"",
                                                   absl::CHexEscape(report.report_id), "\""));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t UtcDay(int64_t unix_ms) {
  constexpr int64_t kDayMs = 86'400'000;
  return unix_ms / kDayMs - (unix_ms % kDayMs < 0 ? 1 : 0);
}

uint64_t AddCounts(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

absl::StatusOr<Record> ParseRecord(const std::vector<std::string>& txt) {
  const std::string* found = nullptr;
  size_t count = 0;
  for (const std::string& t : txt) {
    if (IsTlsRptRecord(t)) {
      ++count;
      if (found == nullptr) {
        found = &t;
      }
    }
  }
  if (count == 0) {
    return absl::NotFoundError("no TXT record starts with v=TLSRPTv1");
  }
  if (count > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(count, " TXT records start with v=TLSRPTv1 (RFC 8460 section 3 wants exactly one)"));
  }
  absl::StatusOr<Record> record = ParseOneRecord(*found);
  if (!record.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("malformed TLSRPT record: ", record.status().message()));
  }
  return record;
}

std::vector<PolicyResult> Aggregate(absl::string_view policy_domain, const std::vector<SessionCount>& counts) {
  // std::map keys give the sorted, deterministic order: policies by
  // (type, strings, mx hosts), failure details by their four fields.
  using PolicyKey = std::tuple<std::string, std::vector<std::string>, std::vector<std::string>>;
  using DetailKey = std::tuple<std::string, std::string, std::string, std::string>;
  struct Group {
    uint64_t successful = 0;
    uint64_t failed = 0;
    std::map<DetailKey, uint64_t> details;
  };
  std::map<PolicyKey, Group> groups;
  for (const SessionCount& c : counts) {
    if (c.count == 0) {
      continue;  // no sessions: nothing to report, not even the policy
    }
    Group& group = groups[PolicyKey{c.policy_type, c.policy_string, c.mx_host}];
    if (c.result_type.empty()) {
      group.successful = AddCounts(group.successful, c.count);
      continue;
    }
    group.failed = AddCounts(group.failed, c.count);
    uint64_t& detail =
        group.details[DetailKey{c.result_type, c.receiving_mx_hostname, c.receiving_ip, c.failure_reason_code}];
    detail = AddCounts(detail, c.count);
  }
  std::vector<PolicyResult> out;
  out.reserve(groups.size());
  for (auto& [key, group] : groups) {
    PolicyResult& result = out.emplace_back();
    result.policy_type = std::get<0>(key);
    result.policy_string = std::get<1>(key);
    result.policy_domain = std::string(policy_domain);
    result.mx_host = std::get<2>(key);
    result.total_successful_session_count = group.successful;
    result.total_failure_session_count = group.failed;
    for (const auto& [detail_key, n] : group.details) {
      FailureDetail& detail = result.failure_details.emplace_back();
      std::tie(detail.result_type, detail.receiving_mx_hostname, detail.receiving_ip, detail.failure_reason_code) =
          detail_key;
      detail.failed_session_count = n;
    }
  }
  return out;
}

std::string RenderJson(const Report& report) {
  // Members in the order of RFC 8460 §4.4; no whitespace, as receivers
  // parse it and the bytes are gzipped anyway.
  std::string out = "{";
  AppendJsonString(out, "organization-name");
  out.push_back(':');
  AppendJsonString(out, report.organization_name);
  out += ",\"date-range\":{\"start-datetime\":";
  AppendJsonString(out, Rfc3339(report.start));
  out += ",\"end-datetime\":";
  AppendJsonString(out, Rfc3339(report.end));
  out.push_back('}');
  AppendMember(out, "contact-info", report.contact_info);
  AppendMember(out, "report-id", report.report_id);
  out += ",\"policies\":[";
  for (size_t p = 0; p < report.policies.size(); ++p) {
    const PolicyResult& policy = report.policies[p];
    if (p > 0) {
      out.push_back(',');
    }
    out += "{\"policy\":{\"policy-type\":";
    AppendJsonString(out, policy.policy_type);
    if (!policy.policy_string.empty()) {
      out += ",\"policy-string\":";
      AppendJsonStringArray(out, policy.policy_string);
    }
    AppendMember(out, "policy-domain", policy.policy_domain);
    if (!policy.mx_host.empty()) {
      out += ",\"mx-host\":";
      AppendJsonStringArray(out, policy.mx_host);
    }
    absl::StrAppend(&out, "},\"summary\":{\"total-successful-session-count\":", policy.total_successful_session_count,
                    ",\"total-failure-session-count\":", policy.total_failure_session_count, "}");
    if (!policy.failure_details.empty()) {
      out += ",\"failure-details\":[";
      for (size_t d = 0; d < policy.failure_details.size(); ++d) {
        const FailureDetail& detail = policy.failure_details[d];
        if (d > 0) {
          out.push_back(',');
        }
        out += "{\"result-type\":";
        AppendJsonString(out, detail.result_type);
        if (!detail.receiving_mx_hostname.empty()) {
          AppendMember(out, "receiving-mx-hostname", detail.receiving_mx_hostname);
        }
        if (!detail.receiving_ip.empty()) {
          AppendMember(out, "receiving-ip", detail.receiving_ip);
        }
        if (!detail.failure_reason_code.empty()) {
          AppendMember(out, "failure-reason-code", detail.failure_reason_code);
        }
        absl::StrAppend(&out, ",\"failed-session-count\":", detail.failed_session_count, "}");
      }
      out.push_back(']');
    }
    out.push_back('}');
  }
  out += "]}";
  return out;
}

absl::StatusOr<std::string> Gzip(absl::string_view data) {
  // deflate's stream is fed in pieces because avail_in and avail_out are
  // 32-bit; the zpipe.c pattern: call deflate until it leaves output space.
  struct Stream {
    z_stream zs{};
    bool open = false;
    ~Stream() {
      if (open) {
        deflateEnd(&zs);
      }
    }
  } stream;
  // windowBits 15 + 16: the largest window, wrapped in a gzip header and
  // trailer (RFC 1952), not zlib's own (RFC 1950), as application/tlsrpt+gzip
  // and ".json.gz" require. zlib writes MTIME 0, so the output is a function
  // of the input alone.
  int rc = deflateInit2(&stream.zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  if (rc != Z_OK) {
    return absl::InternalError(absl::StrCat("deflateInit2 failed: ", rc));
  }
  stream.open = true;
  constexpr size_t kInChunk = size_t{1} << 20;
  constexpr size_t kOutChunk = size_t{64} << 10;
  std::string out;
  std::string buffer(kOutChunk, '\0');
  size_t offset = 0;
  int flush = Z_NO_FLUSH;
  do {
    size_t take = std::min(kInChunk, data.size() - offset);
    // zlib's next_in is not const without ZLIB_CONST; deflate only reads it.
    stream.zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data() + offset));
    stream.zs.avail_in = static_cast<uInt>(take);
    offset += take;
    flush = offset == data.size() ? Z_FINISH : Z_NO_FLUSH;
    do {
      stream.zs.next_out = reinterpret_cast<Bytef*>(buffer.data());
      stream.zs.avail_out = static_cast<uInt>(buffer.size());
      rc = deflate(&stream.zs, flush);
      if (rc == Z_STREAM_ERROR) {
        return absl::InternalError("deflate failed");
      }
      out.append(buffer.data(), buffer.size() - stream.zs.avail_out);
    } while (stream.zs.avail_out == 0);
  } while (flush != Z_FINISH);
  if (rc != Z_STREAM_END) {
    return absl::InternalError(absl::StrCat("deflate did not finish: ", rc));
  }
  return out;
}

std::string ReportFilename(absl::string_view sender_domain, absl::string_view policy_domain, absl::Time begin,
                           absl::Time end, absl::string_view unique_id) {
  std::string id;
  for (char c : unique_id) {
    if (absl::ascii_isalnum(c)) {
      id.push_back(c);
    }
  }
  std::string name = absl::StrCat(sender_domain, "!", policy_domain, "!", UnixSeconds(begin), "!", UnixSeconds(end));
  if (!id.empty()) {
    absl::StrAppend(&name, "!", id);
  }
  absl::StrAppend(&name, ".json.gz");
  return name;
}

absl::StatusOr<std::string> ComposeMail(const Report& report, const MailOptions& options) {
  TERN_RETURN_IF_ERROR(CheckMailOptions(report, options));
  TERN_ASSIGN_OR_RETURN(std::string gzipped, Gzip(RenderJson(report)));
  std::string base64 = absl::Base64Escape(gzipped);
  std::string filename = ReportFilename(options.submitter, options.policy_domain, report.start, report.end, "");

  // The boundary starts with "=_": base64 uses "=" only as padding at its
  // very end, never followed by "_", and the text part below is ASCII we
  // write from checked domain names and dates, so the boundary cannot occur
  // in either part. The digest only makes it differ between reports (a
  // report forwarded inside another one stays parsable).
  std::string boundary = absl::StrFormat("=_tern-tlsrpt-%016x", Fnv1a(base64));

  std::string m;
  m.reserve(base64.size() + base64.size() / kBase64LineLength * 2 + 2048);
  absl::StrAppend(&m, "From: ", options.from, kCrlf);
  absl::StrAppend(&m, "To: ", options.to, kCrlf);
  absl::StrAppend(&m, "Date: ", mime::FormatRfc5322Date(options.date), kCrlf);
  absl::StrAppend(&m, "Message-ID: <", options.message_id, ">", kCrlf);
  // §5.3 tlsrpt-subject: "Report" "Domain:" domain "Submitter:" domain
  // "Report-ID:" msg-id, with FWS between the words, so it may be folded.
  absl::StrAppend(&m, "Subject: ",
                  FoldWords({"Report", "Domain:", options.policy_domain, "Submitter:", options.submitter,
                             "Report-ID:", absl::StrCat("<", report.report_id, ">")},
                            std::strlen("Subject: ")),
                  kCrlf);
  absl::StrAppend(&m, "TLS-Report-Domain: ", options.policy_domain, kCrlf);
  absl::StrAppend(&m, "TLS-Report-Submitter: ", options.submitter, kCrlf);
  // RFC 8460 §3 and §5.3: a report goes out despite TLS failures, since it
  // may be about exactly those (a domain whose MTA-STS policy or TLSA
  // records are broken must still get the report saying so). RFC 8689 §5's
  // "TLS-Required: No" says that to the deliverer, and Tern's deliverer then
  // ignores MTA-STS and DANE for the message (TLS stays opportunistic), as
  // it does for any message carrying the field; so does a relay that knows
  // RFC 8689.
  absl::StrAppend(&m, "TLS-Required: No", kCrlf);
  // RFC 3834 §5: no vacation or other auto-replies to the report address.
  absl::StrAppend(&m, "Auto-Submitted: auto-generated", kCrlf);
  absl::StrAppend(&m, "MIME-Version: 1.0", kCrlf);
  absl::StrAppend(&m, "Content-Type: multipart/report; report-type=\"tlsrpt\";", kCrlf, " boundary=\"", boundary, "\"",
                  kCrlf);
  m += kCrlf;
  // Preamble for readers without MIME (RFC 2046 §5.1.1).
  absl::StrAppend(&m, "This is a multipart message in MIME format.", kCrlf);

  absl::StrAppend(&m, kCrlf, "--", boundary, kCrlf);
  absl::StrAppend(&m, "Content-Type: text/plain; charset=\"us-ascii\"", kCrlf);
  absl::StrAppend(&m, "Content-Transfer-Encoding: 7bit", kCrlf, kCrlf);
  absl::StrAppend(&m, "This is an aggregate SMTP TLS report (RFC 8460) from ", options.submitter, kCrlf);
  absl::StrAppend(&m, "for the policy domain ", options.policy_domain, ",", kCrlf);
  absl::StrAppend(&m, "covering ", Rfc3339(report.start), " to ", Rfc3339(report.end), ".", kCrlf);
  absl::StrAppend(&m, "The report is the attached gzipped JSON file.", kCrlf);

  absl::StrAppend(&m, kCrlf, "--", boundary, kCrlf);
  absl::StrAppend(&m, "Content-Type: application/tlsrpt+gzip", kCrlf);
  absl::StrAppend(&m, "Content-Transfer-Encoding: base64", kCrlf);
  absl::StrAppend(&m, "Content-Disposition: attachment;", kCrlf, " filename=\"", filename, "\"", kCrlf, kCrlf);
  for (size_t i = 0; i < base64.size(); i += kBase64LineLength) {
    absl::StrAppend(&m, absl::string_view(base64).substr(i, kBase64LineLength), kCrlf);
  }
  absl::StrAppend(&m, kCrlf, "--", boundary, "--", kCrlf);
  return m;
}

std::string HttpsRua::Origin() const { return absl::StrCat("https://", address::HostAuthority(host, port, 443)); }

absl::StatusOr<HttpsRua> ParseHttpsRua(absl::string_view uri) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("https rua \"", uri.substr(0, 200), "\": ", why));
  };
  constexpr absl::string_view kScheme = "https://";
  if (uri.size() < kScheme.size() || !absl::EqualsIgnoreCase(uri.substr(0, kScheme.size()), kScheme)) {
    return bad("not an https:// URI");
  }
  for (char c : uri) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return bad("a control byte, space or non-ASCII byte");
    }
  }
  absl::string_view rest = uri.substr(kScheme.size());
  rest = rest.substr(0, rest.find('#'));  // the fragment stays with the client
  const size_t end = std::min(rest.find('/'), rest.find('?'));
  absl::string_view authority = rest.substr(0, end);
  absl::string_view target = end == absl::string_view::npos ? absl::string_view() : rest.substr(end);
  if (authority.find('@') != absl::string_view::npos) {
    return bad("user information in the URI");
  }
  HttpsRua out;
  absl::string_view host = authority;
  absl::string_view port;
  bool has_port = false;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return bad("an IPv6 literal without \"]\"");
    }
    host = authority.substr(1, close - 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        return bad("bytes after the IPv6 literal");
      }
      port = after.substr(1);
      has_port = true;
    }
    in6_addr v6{};
    if (inet_pton(AF_INET6, std::string(host).c_str(), &v6) != 1) {
      return bad("not an IPv6 address");
    }
  } else {
    const size_t colon = authority.rfind(':');
    if (colon != absl::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      has_port = true;
    }
    if (host.empty()) {
      return bad("no host");
    }
    if (host.size() > 253) {
      return bad("a host name over 253 bytes");
    }
    const bool numeric = std::all_of(host.begin(), host.end(), [](char c) { return absl::ascii_isdigit(c) || c == '.'; });
    if (numeric) {
      in_addr v4{};
      if (inet_pton(AF_INET, std::string(host).c_str(), &v4) != 1) {
        return bad("not an IPv4 address");
      }
    } else {
      for (absl::string_view label : absl::StrSplit(host, '.')) {
        const bool ldh = std::all_of(label.begin(), label.end(), [](char c) { return absl::ascii_isalnum(c) || c == '-'; });
        if (label.empty() || label.size() > 63 || !ldh || label.front() == '-' || label.back() == '-') {
          return bad("a host that is not a DNS name (LDH labels of 1-63 bytes)");
        }
      }
    }
  }
  if (has_port) {
    uint32_t n = 0;
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
        !absl::SimpleAtoi(port, &n) || n == 0 || n > 65535) {
      return bad("a port that is not 1-65535");
    }
    out.port = static_cast<uint16_t>(n);
  }
  out.host = absl::AsciiStrToLower(host);
  out.target = absl::StartsWith(target, "/") ? std::string(target) : absl::StrCat("/", target);
  return out;
}

}  // namespace tern::tlsrpt
