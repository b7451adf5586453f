// File: requiretls.cc
#include "services/deliverer/requiretls.h"

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/mime/header.h"

namespace tern::deliverer {

const char* TlsRequestName(TlsRequest request) {
  switch (request) {
    case TlsRequest::kDefault:
      return "default";
    case TlsRequest::kRequireTls:
      return "requiretls";
    case TlsRequest::kTlsOptional:
      return "tls_optional";
  }
  return "unknown";
}

namespace {

constexpr absl::string_view kFieldName = "TLS-Required";

// True when some line of `headers` starts with the field's name, in any
// case. This runs for every delivery and almost no message has the field,
// so the full parse (which copies every field) is kept for the few that may.
bool MayHaveTheField(absl::string_view headers) {
  size_t pos = 0;
  while (pos < headers.size()) {
    const size_t eol = headers.find('\n', pos);
    const absl::string_view line = headers.substr(pos, eol == absl::string_view::npos ? eol : eol - pos);
    if (line.size() >= kFieldName.size() && absl::EqualsIgnoreCase(line.substr(0, kFieldName.size()), kFieldName)) {
      return true;
    }
    if (eol == absl::string_view::npos) {
      break;
    }
    pos = eol + 1;
  }
  return false;
}

}  // namespace

TlsRequest MessageTlsRequest(bool requiretls, absl::string_view message) {
  if (requiretls) {
    return TlsRequest::kRequireTls;  // §4.1: the header field is then ignored
  }
  // Only the header block is read: the body may be megabytes.
  const absl::string_view headers = mime::SplitHeaderBlock(message).headers;
  if (!MayHaveTheField(headers)) {
    return TlsRequest::kDefault;
  }
  const std::optional<std::string> value = mime::GetHeader(headers, kFieldName);
  return value && absl::EqualsIgnoreCase(*value, "No") ? TlsRequest::kTlsOptional : TlsRequest::kDefault;
}

std::string RequireTlsMxProblem(absl::string_view domain, bool mx_secure, bool sts_enforced) {
  if (mx_secure || sts_enforced) {
    return "";
  }
  return absl::StrCat("REQUIRETLS: the MX hosts of ", domain,
                      " were not found securely (the MX answer was not DNSSEC-validated and the domain has no "
                      "MTA-STS policy in enforce mode)");
}

}  // namespace tern::deliverer
