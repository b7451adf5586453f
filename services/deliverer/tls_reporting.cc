#include "services/deliverer/tls_reporting.h"

#include <openssl/x509_vfy.h>

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/tlsrpt/tlsrpt.h"
#include "services/deliverer/mta_sts.h"

namespace tern::deliverer {
namespace {

// A failure reason is the verifier's or a server's words: bounded, so a
// server cannot fill the queue's records (and the report) with its reply.
constexpr size_t kMaxReasonBytes = 256;

}  // namespace

const char* TlsFailureResultType(long verify_error, bool dane) {
  if (dane) {
    return tlsrpt::kValidationFailure;
  }
  switch (verify_error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return tlsrpt::kCertificateExpired;
    case X509_V_ERR_HOSTNAME_MISMATCH:
      return tlsrpt::kCertificateHostMismatch;
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
    case X509_V_ERR_INVALID_CA:
      return tlsrpt::kCertificateNotTrusted;
    default:
      return tlsrpt::kValidationFailure;
  }
}

std::string VerifyErrorText(long verify_error) {
  return absl::StrCat("certificate verify failed: ", X509_verify_cert_error_string(verify_error));
}

const char* StsProblemResultType(absl::string_view problem) {
  // The words are MtaSts's own (mta_sts.cc) and net::Connection's.
  if (absl::StrContains(problem, "certificate verify failed")) {
    return tlsrpt::kStsWebpkiInvalid;
  }
  if (absl::StrContains(problem, ") is invalid: ")) {
    return tlsrpt::kStsPolicyInvalid;
  }
  return tlsrpt::kStsPolicyFetchError;
}

TlsRptPolicy NoPolicyForReport() { return TlsRptPolicy{tlsrpt::kPolicyNone, {}, {}}; }

TlsRptPolicy StsPolicyForReport(const StsPolicy& policy) {
  TlsRptPolicy out{tlsrpt::kPolicySts, {}, policy.mx};
  out.policy_string.push_back("version: STSv1");
  out.policy_string.push_back(absl::StrCat("mode: ", StsModeName(policy.mode)));
  for (const std::string& mx : policy.mx) {
    out.policy_string.push_back(absl::StrCat("mx: ", mx));
  }
  out.policy_string.push_back(absl::StrCat("max_age: ", policy.max_age.count()));
  return out;
}

TlsRptPolicy DanePolicyForReport(const std::vector<net::DaneRecord>& records) {
  TlsRptPolicy out{tlsrpt::kPolicyTlsa, {}, {}};
  for (const net::DaneRecord& r : records) {
    out.policy_string.push_back(absl::StrCat(r.usage, " ", r.selector, " ", r.matching_type, " ",
                                             absl::BytesToHexString(r.data)));
  }
  return out;
}

tern::v1::TlsRptCount MakeTlsRptCount(int64_t day, absl::string_view domain, const TlsRptPolicy& policy,
                                      absl::string_view result_type, absl::string_view mx_host,
                                      absl::string_view ip, absl::string_view reason,
                                      const std::vector<std::string>& rua) {
  tern::v1::TlsRptCount c;
  c.set_day(day);
  c.set_policy_domain(std::string(domain));
  c.set_policy_type(policy.type);
  for (const std::string& s : policy.policy_string) {
    c.add_policy_string(s);
  }
  for (const std::string& s : policy.mx_host) {
    c.add_mx_host(s);
  }
  c.set_result_type(std::string(result_type));
  if (!result_type.empty()) {
    // Where and why only for failures: successes add up per policy.
    c.set_receiving_mx_hostname(std::string(mx_host));
    c.set_receiving_ip(std::string(ip));
    c.set_failure_reason_code(std::string(reason.substr(0, kMaxReasonBytes)));
  }
  c.set_count(1);
  for (const std::string& u : rua) {
    c.add_rua(u);
  }
  return c;
}

std::string TlsRptCounter::Identity(const tern::v1::TlsRptCount& count) {
  tern::v1::TlsRptCount key = count;
  key.clear_count();
  key.clear_rua();
  std::string out;
  // Deterministic, so equal counts always meet under the same key.
  key.SerializeToString(&out);
  return out;
}

bool TlsRptCounter::Add(tern::v1::TlsRptCount count) { return Merge(std::move(count), /*newer=*/true); }

bool TlsRptCounter::Merge(tern::v1::TlsRptCount count, bool newer) {
  std::string id = Identity(count);
  auto it = entries_.find(id);
  if (it != entries_.end()) {
    it->second.set_count(it->second.count() + count.count());
    if (newer) {
      // The newest record's rua wins: that is where the domain wants reports now.
      *it->second.mutable_rua() = std::move(*count.mutable_rua());
    }
    return true;
  }
  if (entries_.size() >= max_entries_) {
    return false;
  }
  entries_.emplace(std::move(id), std::move(count));
  return true;
}

std::vector<tern::v1::TlsRptCount> TlsRptCounter::Take() {
  std::vector<tern::v1::TlsRptCount> out;
  out.reserve(entries_.size());
  for (auto& [id, count] : entries_) {
    out.push_back(std::move(count));
  }
  entries_.clear();
  return out;
}

void TlsRptCounter::PutBack(std::vector<tern::v1::TlsRptCount> counts) {
  for (tern::v1::TlsRptCount& c : counts) {
    Merge(std::move(c), /*newer=*/false);
  }
}

}  // namespace tern::deliverer
