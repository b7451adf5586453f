// File: xtext.h
//
// EncodeXtext: RFC 3461 §4 xtext, for the DSN parameters the deliverer
// relays (ENVID=, ORCPT=). Every octet outside "!".."~", and "+" and "=",
// becomes "+" and two upper-case hex digits; everything else is copied.
// (Decoding lives with the server half: lib/smtp/command_parser.h.)
//
// Thread-safety: a pure function.
//
// Standards: RFC 3461 §4 (xtext).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tern::smtp {

std::string EncodeXtext(absl::string_view text);

}  // namespace tern::smtp
