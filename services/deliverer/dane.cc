#include "services/deliverer/dane.h"

#include "absl/strings/str_cat.h"

namespace tern::deliverer {
namespace {

bool Usable(const dns::TlsaRecord& r) {
  if (r.usage != 2 && r.usage != 3) {
    return false;
  }
  if (r.selector > 1) {
    return false;
  }
  switch (r.matching_type) {
    case 0:
      return !r.data.empty();
    case 1:
      return r.data.size() == 32;
    case 2:
      return r.data.size() == 64;
  }
  return false;
}

}  // namespace

const char* DaneModeName(DaneMode mode) {
  switch (mode) {
    case DaneMode::kNone:
      return "none";
    case DaneMode::kAuthenticated:
      return "authenticated";
    case DaneMode::kUnauthenticated:
      return "unauthenticated";
    case DaneMode::kLookupFailed:
      return "lookup_failed";
  }
  return "unknown";
}

std::string TlsaName(absl::string_view host, uint16_t port) { return absl::StrCat("_", port, "._tcp.", host); }

DaneHost DaneForHost(const dns::TlsaAnswer& answer) {
  DaneHost host;
  if (answer.status == dns::LookupStatus::kTempFail) {
    host.mode = DaneMode::kLookupFailed;
    host.detail = answer.detail;
    return host;
  }
  // An answer nobody validated says nothing either way (RFC 7672 §2.2):
  // the usual rules apply, as with a validated "no such records".
  if (!answer.secure || answer.status != dns::LookupStatus::kOk || answer.records.empty()) {
    return host;
  }
  for (const dns::TlsaRecord& r : answer.records) {
    if (Usable(r)) {
      host.records.push_back(net::DaneRecord{r.usage, r.selector, r.matching_type, r.data});
    }
  }
  host.mode = host.records.empty() ? DaneMode::kUnauthenticated : DaneMode::kAuthenticated;
  return host;
}

}  // namespace tern::deliverer
