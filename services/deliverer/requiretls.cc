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

TlsRequest MessageTlsRequest(bool requiretls, absl::string_view message) {
  if (requiretls) {
    return TlsRequest::kRequireTls;  // §4.1: the header field is then ignored
  }
  // Only the header block is read: the body may be megabytes.
  const std::optional<std::string> value =
      mime::GetHeader(mime::SplitHeaderBlock(message).headers, "TLS-Required");
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
