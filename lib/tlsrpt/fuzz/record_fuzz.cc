// libFuzzer target: the TLSRPT record parser (tlsrpt.h ParseRecord) on
// arbitrary TXT data. Every domain a deliverer sends to can publish what it
// likes at _smtp._tls.<domain>, so this input is the least trusted in the
// feature. The input is split at NUL bytes into TXT records. Checks:
//   * never crashes, memory stays bounded (ASan, -rss_limit_mb);
//   * a record that parses has at least one rua, each mailto: or https:;
//   * every mailto: address it returns is one ComposeMail accepts as `to`
//     (the queue writes a report e-mail to each).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "lib/tlsrpt/tlsrpt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string> txt = absl::StrSplit(input, '\0');
  absl::StatusOr<tern::tlsrpt::Record> record = tern::tlsrpt::ParseRecord(txt);
  if (!record.ok()) {
    return 0;
  }
  if (record->rua.empty()) {
    std::abort();  // success promises at least one URI
  }
  tern::tlsrpt::Report report;
  report.organization_name = "fuzz";
  report.start = absl::UnixEpoch();
  report.end = absl::UnixEpoch() + absl::Hours(24);
  report.contact_info = "tlsrpt@mail.example.com";
  report.report_id = "fuzz@mail.example.com";
  for (const std::string& uri : record->rua) {
    if (absl::StartsWith(uri, "https://")) {
      continue;
    }
    if (!absl::StartsWith(uri, "mailto:")) {
      std::abort();  // neither scheme: should have been skipped
    }
    tern::tlsrpt::MailOptions mail;
    mail.from = "tlsrpt@mail.example.com";
    mail.to = uri.substr(7);
    mail.submitter = "mail.example.com";
    mail.policy_domain = "example.com";
    mail.message_id = "fuzz@mail.example.com";
    mail.date = absl::UnixEpoch();
    if (!tern::tlsrpt::ComposeMail(report, mail).ok()) {
      std::abort();  // an address the parser gave that no report can go to
    }
  }
  return 0;
}
