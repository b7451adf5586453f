// libFuzzer target: the reply parser (reply_parser.h) on arbitrary bytes
// from a remote SMTP server, split into lines at LF (one CR before it
// dropped), as net::Connection::ReadLine hands them to the deliverer. Every
// destination MX, and anyone on the path before STARTTLS, chooses this
// input. Each input is parsed twice: with the default Options and with tiny
// limits, so the over-long-line and too-many-lines errors are reached too.
// Checks:
//   * never crashes, memory stays bounded (ASan, -rss_limit_mb);
//   * a completed reply has a code in 200-599 that is the one on every line
//     fed for it, as many lines as were fed (at most max_lines, each no
//     longer than max_line_length), and an enhanced code only of its class;
//   * a line Feed accepts starts with three digits and a space, '-' or its
//     end; in_progress() is true exactly while a multi-line reply is open;
//   * ParseEnhancedStatusCode on every line consumes no more than it was
//     given and returns class 2, 4 or 5 with subject and detail 0-999;
//   * ParseEhloCapabilities on every completed reply: a SIZE limit implies
//     SIZE, AUTH mechanisms are non-empty, upper case and distinct.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/common/fuzz_check.h"
#include "lib/smtp/reply_parser.h"

namespace {

using tern::smtp::EhloCapabilities;
using tern::smtp::EnhancedStatusCode;
using tern::smtp::ReplyParser;
using tern::smtp::SmtpReply;

using tern::fuzz::Check;

void CheckEnhanced(absl::string_view text) {
  size_t consumed = 0;
  std::optional<EnhancedStatusCode> code = tern::smtp::ParseEnhancedStatusCode(text, &consumed);
  if (!code) {
    return;
  }
  Check(consumed >= 5 && consumed <= text.size());
  Check(code->klass == 2 || code->klass == 4 || code->klass == 5);
  Check(code->subject >= 0 && code->subject <= 999 && code->detail >= 0 && code->detail <= 999);
  // What it consumed is the code, plus at most one space or tab.
  Check(consumed == text.size() || text[consumed - 1] == ' ' || text[consumed - 1] == '\t');
}

void CheckCapabilities(const SmtpReply& reply) {
  const EhloCapabilities caps = tern::smtp::ParseEhloCapabilities(reply);
  Check(caps.size_limit == 0 || caps.size);
  std::set<std::string> seen;
  for (const std::string& mech : caps.auth_mechanisms) {
    Check(!mech.empty() && mech == absl::AsciiStrToUpper(mech) && seen.insert(mech).second);
  }
}

void CheckReply(const SmtpReply& reply, int code, size_t lines_fed, const ReplyParser::Options& options) {
  Check(reply.code >= 200 && reply.code <= 599 && reply.code == code);
  Check(!reply.lines.empty() && reply.lines.size() == lines_fed && reply.lines.size() <= options.max_lines);
  for (const std::string& line : reply.lines) {
    Check(line.size() <= options.max_line_length);
  }
  if (reply.enhanced) {
    Check(reply.enhanced->klass == reply.klass());
  }
  // 3xx (354 after DATA) is intermediate: neither positive nor a failure.
  Check(reply.positive() + reply.transient() + reply.permanent() == (reply.klass() == 3 ? 0 : 1));
  Check(tern::smtp::DefaultEnhancedStatus(reply.code).klass == reply.klass());
  (void)reply.ToString();
  CheckCapabilities(reply);
}

void Run(const std::vector<absl::string_view>& lines, const ReplyParser::Options& options) {
  ReplyParser parser(options);
  size_t fed = 0;  // lines of the reply in progress
  int code = 0;    // its code
  for (absl::string_view line : lines) {
    CheckEnhanced(line);
    if (line.size() > 4) {
      CheckEnhanced(line.substr(4));
    }
    absl::StatusOr<bool> done = parser.Feed(line);
    if (!done.ok()) {
      parser.Reset();
      Check(!parser.in_progress());
      fed = 0;
      code = 0;
      continue;
    }
    Check(line.size() >= 3 && line.size() <= options.max_line_length);
    Check(absl::ascii_isdigit(static_cast<unsigned char>(line[0])) &&
          absl::ascii_isdigit(static_cast<unsigned char>(line[1])) &&
          absl::ascii_isdigit(static_cast<unsigned char>(line[2])));
    Check(line.size() == 3 || line[3] == ' ' || line[3] == '-');
    Check(*done == (line.size() == 3 || line[3] == ' '));
    const int line_code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    Check(code == 0 || code == line_code);
    code = line_code;
    ++fed;
    if (!*done) {
      Check(parser.in_progress());
      continue;
    }
    CheckReply(parser.TakeReply(), code, fed, options);
    Check(!parser.in_progress());
    fed = 0;
    code = 0;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<absl::string_view> lines = absl::StrSplit(input, '\n');
  for (absl::string_view& line : lines) {
    absl::ConsumeSuffix(&line, "\r");
  }
  Run(lines, ReplyParser::Options());
  ReplyParser::Options tiny;
  tiny.max_line_length = 16;
  tiny.max_lines = 3;
  Run(lines, tiny);
  return 0;
}
