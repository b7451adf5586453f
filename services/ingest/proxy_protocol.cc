#include "services/ingest/proxy_protocol.h"

#include <arpa/inet.h>

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace tern::ingest {
namespace {

bool ParsePort(absl::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return false;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

bool IsAddress(absl::string_view text, int family) {
  unsigned char buf[16];
  const std::string s(text);
  return inet_pton(family, s.c_str(), buf) == 1;
}

}  // namespace

absl::StatusOr<ProxyHeader> ParseProxyV1(absl::string_view line) {
  if (line.size() > kProxyV1MaxLine) {
    return absl::InvalidArgumentError("PROXY line too long");
  }
  if (!absl::StartsWith(line, "PROXY ")) {
    return absl::InvalidArgumentError("not a PROXY line");
  }
  ProxyHeader header;
  // Single spaces only: split without skipping empties.
  const std::vector<absl::string_view> words = absl::StrSplit(line, ' ');
  if (words.size() >= 2 && words[1] == "UNKNOWN") {
    // "the receiver must ignore anything presented before the CRLF".
    header.protocol = "UNKNOWN";
    return header;
  }
  if (words.size() != 6) {
    return absl::InvalidArgumentError("PROXY line needs 6 fields");
  }
  int family = 0;
  if (words[1] == "TCP4") {
    family = AF_INET;
  } else if (words[1] == "TCP6") {
    family = AF_INET6;
  } else {
    return absl::InvalidArgumentError("PROXY protocol must be TCP4, TCP6 or UNKNOWN");
  }
  if (!IsAddress(words[2], family) || !IsAddress(words[3], family)) {
    return absl::InvalidArgumentError("bad PROXY address");
  }
  if (!ParsePort(words[4], &header.src_port) || !ParsePort(words[5], &header.dst_port)) {
    return absl::InvalidArgumentError("bad PROXY port");
  }
  header.protocol = std::string(words[1]);
  header.src_ip = std::string(words[2]);
  header.dst_ip = std::string(words[3]);
  return header;
}

}  // namespace tern::ingest
