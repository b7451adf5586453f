#include "lib/dsn/delivery_status.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

namespace tern::dsn {

absl::string_view ActionName(Action action) {
  switch (action) {
    case Action::kFailed:
      return "failed";
    case Action::kDelayed:
      return "delayed";
    case Action::kDelivered:
      return "delivered";
    case Action::kRelayed:
      return "relayed";
    case Action::kExpanded:
      return "expanded";
  }
  return "failed";
}

bool IsValidStatusCode(absl::string_view code) {
  std::vector<absl::string_view> parts = absl::StrSplit(code, '.');
  if (parts.size() != 3) {
    return false;
  }
  if (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
    return false;
  }
  for (size_t i = 1; i < 3; ++i) {
    if (parts[i].empty() || parts[i].size() > 3) {
      return false;
    }
    for (char c : parts[i]) {
      if (!absl::ascii_isdigit(c)) {
        return false;
      }
    }
  }
  return true;
}

std::string DeriveStatus(const RecipientStatus& recipient) {
  if (IsValidStatusCode(recipient.status)) {
    return recipient.status;
  }
  int reply_class = recipient.reply_code / 100;
  if (reply_class == 5) {
    return "5.0.0";
  }
  if (reply_class == 4) {
    return "4.0.0";
  }
  if (reply_class == 2) {
    return "2.0.0";
  }
  switch (recipient.action) {
    case Action::kFailed:
      return "5.0.0";
    case Action::kDelayed:
      return "4.0.0";
    default:
      return "2.0.0";
  }
}

}  // namespace tern::dsn
