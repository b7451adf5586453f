// File: reply_summary.h
//
// ReplySummary(): one line for a recipient's last SMTP result,
// "<code> <x.y.z> <text>" with the missing parts left out, as the queue logs
// and stores it and as ternctl shows it, so both say the same thing.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"
#include "tern/v1/message.pb.h"

namespace tern::rpc {

inline std::string ReplySummary(const tern::v1::RecipientResult& r) {
  std::string out;
  if (r.reply_code() != 0) {
    absl::StrAppend(&out, r.reply_code());
  }
  for (const std::string* part : {&r.enhanced_status(), &r.reply_text()}) {
    if (!part->empty()) {
      absl::StrAppend(&out, out.empty() ? "" : " ", *part);
    }
  }
  return out;
}

}  // namespace tern::rpc
