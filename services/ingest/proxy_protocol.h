// File: proxy_protocol.h
//
// The HAProxy PROXY protocol: a proxy listed in connection.ini [haproxy]
// hosts[] must start each connection with a header naming the real client,
// and ingest then treats its source address as the client's. Version 1, the
// text form Haraka supports, is one line such as
//
//   PROXY TCP4 192.0.2.1 198.51.100.2 56324 25
//   PROXY TCP6 2001:db8::1 2001:db8::2 56324 25
//   PROXY UNKNOWN
//
// Version 2 is binary (HAProxy's send-proxy-v2; AWS Network Load Balancers
// send only this one, which is why Tern reads it although Haraka does not):
// a 16-octet fixed part (signature, version and command, address family and
// transport, length of the rest), then the addresses and optional TLVs.
// The two are told apart by the first octet: 'P' or the signature's CR.
//
// Pure (no I/O); fuzzable.
//
// Thread-safety: stateless functions.
//
// Standards: haproxy.org proxy-protocol.txt §2.1 (the human-readable header
// format: single spaces, at most 107 octets with CRLF, decimal ports without
// leading zeros), §2.2 (the binary header; LOCAL and UNSPEC mean "use the
// connection's own addresses"; TLVs, of which only PP2_TYPE_CRC32C is
// checked), §2.2.5 (the CRC32c of the whole header).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::ingest {

// The longest v1 line without its CRLF (107 with it).
inline constexpr size_t kProxyV1MaxLine = 105;

// The fixed part of a v2 header: the 12-octet signature, version and
// command, family and transport, and the 2-octet length of the rest.
inline constexpr size_t kProxyV2FixedSize = 16;

struct ProxyHeader {
  // "TCP4", "TCP6" or "UNKNOWN". With UNKNOWN the addresses are empty and
  // the connection's own addresses apply (v1 UNKNOWN; v2 LOCAL, as a
  // proxy's own health check sends, and v2 families other than IPv4 and
  // IPv6 over a stream).
  std::string protocol;
  std::string src_ip;
  std::string dst_ip;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;

  bool unknown() const { return protocol == "UNKNOWN"; }
};

// Parses one line without its CRLF. InvalidArgument names what is wrong.
absl::StatusOr<ProxyHeader> ParseProxyV1(absl::string_view line);

// True when `first` (the connection's first octet) starts a v2 header
// rather than a v1 line.
inline bool IsProxyV2Start(char first) { return first == '\r'; }

// From the fixed part of a v2 header (exactly kProxyV2FixedSize octets): how
// many octets follow it (addresses and TLVs, at most 65,535).
// InvalidArgument if it is not the v2 signature or not version 2.
absl::StatusOr<size_t> ProxyV2RestSize(absl::string_view fixed);

// Parses a whole v2 header: the fixed part and the ProxyV2RestSize octets
// after it. InvalidArgument names what is wrong: an unknown command, family
// or transport, an address block too short for its family, a TLV that
// overruns the header, or a CRC32c TLV that does not match.
absl::StatusOr<ProxyHeader> ParseProxyV2(absl::string_view header);

}  // namespace tern::ingest
