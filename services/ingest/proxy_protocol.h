// File: proxy_protocol.h
//
// The HAProxy PROXY protocol, version 1 (the text form), as Haraka supports
// it: a proxy listed in connection.ini [haproxy] hosts[] must start each
// connection with one line such as
//
//   PROXY TCP4 192.0.2.1 198.51.100.2 56324 25
//   PROXY TCP6 2001:db8::1 2001:db8::2 56324 25
//   PROXY UNKNOWN
//
// and ingest then treats the source address as the client's. The v2 binary
// header is not supported (neither does Haraka support it).
//
// Pure (no I/O); fuzzable.
//
// Thread-safety: stateless functions.
//
// Standards: haproxy.org proxy-protocol.txt §2.1 (the human-readable header
// format: single spaces, at most 107 octets with CRLF, decimal ports without
// leading zeros).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::ingest {

// The longest v1 line without its CRLF (107 with it).
inline constexpr size_t kProxyV1MaxLine = 105;

struct ProxyHeader {
  // "TCP4", "TCP6" or "UNKNOWN". With UNKNOWN the addresses are empty and
  // the connection's own addresses apply.
  std::string protocol;
  std::string src_ip;
  std::string dst_ip;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;

  bool unknown() const { return protocol == "UNKNOWN"; }
};

// Parses one line without its CRLF. InvalidArgument names what is wrong.
absl::StatusOr<ProxyHeader> ParseProxyV1(absl::string_view line);

}  // namespace tern::ingest
