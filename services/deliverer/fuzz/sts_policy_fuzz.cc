// libFuzzer target: the MTA-STS parsers (sts_policy.h) on arbitrary bytes.
// Any recipient domain publishes its own _mta-sts TXT record and serves its
// own policy file, so both are as untrusted as input gets. The whole input
// is parsed as a policy; split at NUL bytes, it is a TXT record set. Checks:
//   * never crashes, memory stays bounded (ASan, UBSan, -rss_limit_mb);
//   * a policy that parses has max_age at most 31557600 s and, unless its
//     mode is none, at least one mx; every mx is lower case, without a
//     trailing dot, and matches itself, in any case and with a trailing
//     dot (a "*." pattern matches a name one label longer);
//   * a record id that parses is 1-32 letters and digits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/address/mailbox.h"
#include "lib/common/fuzz_check.h"
#include "services/deliverer/sts_policy.h"

using tern::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  using tern::deliverer::StsMode;
  absl::StatusOr<tern::deliverer::StsPolicy> policy = tern::deliverer::ParseStsPolicy(input);
  if (policy.ok()) {
    Check(policy->max_age.count() >= 0 && policy->max_age.count() <= 31557600);
    Check(policy->mode == StsMode::kNone || !policy->mx.empty());
    for (const std::string& mx : policy->mx) {
      Check(!mx.empty() && mx.back() != '.' && absl::AsciiStrToLower(mx) == mx);
      Check(tern::address::CanonicalHostName(mx) == mx);
      if (absl::StartsWith(mx, "*.")) {
        Check(policy->MatchesMx(absl::StrCat("a", mx.substr(1))));
      } else {
        Check(policy->MatchesMx(mx) && policy->MatchesMx(absl::StrCat(absl::AsciiStrToUpper(mx), ".")));
      }
    }
  } else {
    Check(policy.status().code() == absl::StatusCode::kInvalidArgument);
  }
  const std::vector<std::string> records = absl::StrSplit(input, '\0');
  if (std::optional<std::string> id = tern::deliverer::ParseStsRecord(records)) {
    Check(!id->empty() && id->size() <= 32);
    for (const char c : *id) {
      Check(absl::ascii_isalnum(static_cast<unsigned char>(c)));
    }
  }
  return 0;
}
