// libFuzzer target: ParseCommand on arbitrary command lines, in every
// ParseContext. Checks that it never crashes and that what it accepts is
// consistent (a refused line has a 5xx code and an x.y.z enhanced code).
//
//   cmake -DTERN_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ...; ninja command_parser_fuzz
//   ./command_parser_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <variant>

#include "lib/smtp/command_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view line(reinterpret_cast<const char*>(data), size);
  for (int mode = 0; mode < 4; ++mode) {
    tern::smtp::ParseContext context;
    context.esmtp = (mode & 1) != 0;
    context.smtputf8 = (mode & 2) != 0;
    tern::smtp::ParseResult result = tern::smtp::ParseCommand(line, context);
    if (const auto* error = std::get_if<tern::smtp::CommandError>(&result)) {
      if (error->code < 500 || error->code > 555 || error->enhanced.size() < 5 || error->enhanced[0] != '5') {
        std::abort();
      }
      continue;
    }
    const auto& cmd = std::get<tern::smtp::Command>(result);
    if (cmd.verb == tern::smtp::Verb::kUnknown) {
      std::abort();  // unknown verbs must be refused
    }
    if (cmd.verb == tern::smtp::Verb::kMail || cmd.verb == tern::smtp::Verb::kRcpt) {
      // A parsed path is always short enough to be sent back (RFC 5321 §4.5.3.1.3).
      if (cmd.path.ToString().size() > tern::address::kMaxPathOctets) {
        std::abort();
      }
    }
  }
  std::string xtext;
  tern::smtp::DecodeXtext(line, &xtext);
  return 0;
}
