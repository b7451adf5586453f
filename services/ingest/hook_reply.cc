#include "services/ingest/hook_reply.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/hooks/hooks_config.h"

namespace tern::ingest {
namespace {

// The longest text taken from the hook: with "NNN x.yyy.zzz " and CRLF the
// line stays well inside RFC 5321's 512 octets.
constexpr size_t kMaxTextBytes = 400;

// Length of a leading RFC 3463 code ("5.7.1", class.subject.detail with
// 1..3 digits each) followed by a space or the end, or 0.
size_t EnhancedCodeLength(absl::string_view text) {
  size_t i = 0;
  for (int part = 0; part < 3; ++part) {
    if (part > 0) {
      if (i >= text.size() || text[i] != '.') {
        return 0;
      }
      ++i;
    }
    const size_t start = i;
    while (i < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[i])) && i - start < 3) {
      ++i;
    }
    if (i == start || (part == 0 && i - start != 1)) {
      return 0;
    }
  }
  if (i < text.size() && text[i] != ' ') {
    return 0;
  }
  const char cls = text[0];
  return cls == '2' || cls == '4' || cls == '5' ? i : 0;
}

}  // namespace

absl::StatusOr<std::string> HookRejectReply(uint32_t code, absl::string_view text) {
  if (code < 400 || code > 599) {
    return absl::InvalidArgumentError(absl::StrCat("REJECT with reply code ", code, " (not 4xx or 5xx)"));
  }
  const std::string code_text = absl::StrCat(code);
  // One line, no controls; then plain ASCII, because a client that did not
  // ask for SMTPUTF8 may not expect anything else in a reply.
  std::string clean = hooks::CleanHookText(text, kMaxTextBytes);
  for (char& c : clean) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      c = '?';
    }
  }
  absl::string_view rest = clean;
  // A hook that wrote the whole reply ("550 5.7.1 no") gets its code once.
  if (absl::StartsWith(rest, code_text) && (rest.size() == 3 || rest[3] == ' ' || rest[3] == '-')) {
    rest = absl::StripLeadingAsciiWhitespace(rest.substr(rest.size() == 3 ? 3 : 4));
  }
  std::string enhanced = code < 500 ? "4.7.1" : "5.7.1";
  if (const size_t n = EnhancedCodeLength(rest); n > 0) {
    // RFC 3463 §2: the class must be the reply's; keep the rest of the code.
    enhanced = std::string(rest.substr(0, n));
    enhanced[0] = code_text[0];
    rest = absl::StripLeadingAsciiWhitespace(rest.substr(n));
  }
  if (rest.empty()) {
    rest = code < 500 ? "Message temporarily rejected by policy, try again later" : "Message rejected by policy";
  }
  return absl::StrCat(code_text, " ", enhanced, " ", rest);
}

}  // namespace tern::ingest
