// File: hook_reply.h
//
// HookRejectReply: the SMTP reply ingest sends when the user's queue_outbound
// hook (proto/tern/v1/hooks.proto) answers REJECT. The hook's code and text
// are not trusted: the code must be 4xx or 5xx, and the text becomes one
// reply line that cannot carry a second line, a control character or
// non-ASCII, at most hooks::CleanHookText's 400 octets of it. Ingest's
// replies always carry an enhanced status code (it advertises
// ENHANCEDSTATUSCODES), so one is added when the text has none (4.7.1 or
// 5.7.1, "delivery not authorized"), and its class is made to match the
// reply code when it does not.
//
//   HookRejectReply(550, "no thanks")        -> "550 5.7.1 no thanks"
//   HookRejectReply(451, "4.7.0 later")      -> "451 4.7.0 later"
//   HookRejectReply(550, "")                 -> "550 5.7.1 Message rejected by policy"
//   HookRejectReply(250, "ok")               -> InvalidArgument
//
// Thread-safety: a stateless function.
//
// Standards: RFC 5321 §4.2 (reply lines, §4.5.3.1.5: at most 512 octets),
// RFC 3463 (enhanced status codes), RFC 2034.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::ingest {

// The reply line (without CRLF) for a hook's REJECT with `code` and `text`,
// or InvalidArgument when `code` is not 400..599 (the answer is invalid).
absl::StatusOr<std::string> HookRejectReply(uint32_t code, absl::string_view text);

}  // namespace tern::ingest
