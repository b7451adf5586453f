// libFuzzer target: lib/address on arbitrary text. ParsePathPrefix sees
// every MAIL FROM / RCPT TO a client sends, ParseMailbox the ORCPT values
// and the configured TLSRPT addresses, DomainToAscii every recipient domain
// (through libidn2 for U-labels). The first input byte chooses the
// PathOptions (one bit each), the rest is the text. Checks:
//   * never crashes, memory stays bounded (ASan, UBSan, -rss_limit_mb);
//   * errors are InvalidArgument, or FailedPrecondition for non-ASCII
//     octets without smtputf8;
//   * a parsed path took no more than the input, its mailbox is within the
//     RFC 5321 §4.5.3.1 limits, has no control characters (none can be
//     written in the grammar, not even quoted), a valid domain or address
//     literal, UTF-8 only with smtputf8, and is what ParsePath gives for the
//     octets it took;
//   * Mailbox::ToString() is "ready to be put back between" brackets: that
//     path parses to the same mailbox, and ParseMailbox takes it bare;
//   * DomainToAscii gives lower-case ASCII (an address literal: the input
//     lower-cased), and is idempotent;
//   * HostAuthority brackets exactly the hosts with a ':'.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/address/authority.h"
#include "lib/address/idna.h"
#include "lib/address/mailbox.h"
#include "lib/common/fuzz_check.h"

namespace {

using tern::address::Mailbox;
using tern::address::PathOptions;

using tern::fuzz::Check;
using tern::fuzz::HasControl;

bool IsAscii(absl::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      return false;
    }
  }
  return true;
}

void CheckError(const absl::Status& status, absl::string_view input, const PathOptions& options) {
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    Check(!options.smtputf8 && !IsAscii(input));
    return;
  }
  Check(status.code() == absl::StatusCode::kInvalidArgument);
}

void CheckDomainToAscii(absl::string_view domain) {
  absl::StatusOr<std::string> ascii = tern::address::DomainToAscii(domain);
  if (!ascii.ok()) {
    Check(ascii.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  if (!domain.empty() && domain.front() == '[') {
    // Address literals are only lower-cased, not checked: the path parser
    // has validated those that come from mail.
    Check(*ascii == absl::AsciiStrToLower(domain));
    return;
  }
  Check(IsAscii(*ascii) && *ascii == absl::AsciiStrToLower(*ascii));
  if (IsAscii(domain)) {
    Check(*ascii == absl::AsciiStrToLower(domain));
  }
  absl::StatusOr<std::string> again = tern::address::DomainToAscii(*ascii);
  Check(again.ok() && *again == *ascii);
}

void CheckMailbox(const Mailbox& mailbox, const PathOptions& options) {
  Check(!HasControl(mailbox.local) && !HasControl(mailbox.domain));
  Check(options.smtputf8 || (IsAscii(mailbox.local) && IsAscii(mailbox.domain)));
  if (mailbox.null()) {
    Check(options.allow_null);
    return;
  }
  Check(!mailbox.local.empty() && mailbox.local.size() <= tern::address::kMaxLocalPartOctets);
  if (mailbox.domain.empty()) {
    Check(options.allow_postmaster && absl::EqualsIgnoreCase(mailbox.local, "postmaster"));
  } else if (mailbox.is_address_literal()) {
    Check(mailbox.domain.back() == ']');
  } else {
    Check(tern::address::IsValidDomain(mailbox.domain, options.smtputf8));
  }
  // Put back between brackets, the path reads as the same mailbox.
  const std::string text = mailbox.ToString();
  Check(text.size() + 2 <= tern::address::kMaxPathOctets);
  absl::StatusOr<Mailbox> again = tern::address::ParsePath(absl::StrCat("<", text, ">"), options);
  Check(again.ok() && *again == mailbox);
  if (!mailbox.domain.empty()) {
    absl::StatusOr<Mailbox> bare = tern::address::ParseMailbox(text, options.smtputf8);
    Check(bare.ok() && *bare == mailbox);
    CheckDomainToAscii(mailbox.domain);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  PathOptions options;
  options.allow_null = (data[0] & 1) != 0;
  options.allow_postmaster = (data[0] & 2) != 0;
  options.smtputf8 = (data[0] & 4) != 0;
  options.allow_missing_brackets = (data[0] & 8) != 0;
  const absl::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  absl::StatusOr<tern::address::ParsedPath> parsed = tern::address::ParsePathPrefix(input, options);
  if (!parsed.ok()) {
    CheckError(parsed.status(), input, options);
  } else {
    Check(parsed->consumed > 0 && parsed->consumed <= input.size());
    Check(parsed->consumed <= tern::address::kMaxPathOctets);
    Check(parsed->non_ascii == !IsAscii(input.substr(0, parsed->consumed)));
    CheckMailbox(parsed->mailbox, options);
    absl::StatusOr<Mailbox> whole = tern::address::ParsePath(input.substr(0, parsed->consumed), options);
    Check(whole.ok() && *whole == parsed->mailbox);
  }
  absl::StatusOr<Mailbox> whole = tern::address::ParsePath(input, options);
  Check(whole.ok() == (parsed.ok() && parsed->consumed == input.size()));

  absl::StatusOr<Mailbox> bare = tern::address::ParseMailbox(input, options.smtputf8);
  if (bare.ok()) {
    PathOptions bare_options;
    bare_options.smtputf8 = options.smtputf8;
    Check(!bare->domain.empty());
    CheckMailbox(*bare, bare_options);
  }

  tern::address::IsValidDomain(input, options.smtputf8);
  CheckDomainToAscii(input);

  const uint32_t port = data[0] & 0x10 ? 443 : 25;
  const std::string authority = tern::address::HostAuthority(input, port, 443);
  const bool v6 = absl::StrContains(input, ':');
  Check(absl::StartsWith(authority, v6 ? absl::StrCat("[", input, "]") : std::string(input)));
  Check(absl::EndsWith(authority, port == 443 ? (v6 ? "]" : "") : ":25"));
  return 0;
}
