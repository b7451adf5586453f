// File: authority.h
//
// HostAuthority: a host and port written as the authority of a URI or the
// value of an HTTP Host field ("mx.example.com:2525", "[2001:db8::1]").
// Shared by the queue's routing key for TLS report POSTs (lib/tlsrpt), the
// deliverer's HTTPS requests and its get_mx hook routes, so all write an
// IPv6 address the same way.
//
// Thread-safety: a pure function.
//
// Standards: RFC 3986 §3.2.2 (IP-literal in brackets), §3.2.3 (port),
// RFC 9110 §7.2 (Host: the port is left out when it is the scheme's).
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace tern::address {

// `host` (a name, an IPv4 address, or an IPv6 address without brackets: any
// host with a ":") followed by ":port", which is left out when `port` equals
// `default_port` (443 for https, 0 for "no port given").
std::string HostAuthority(absl::string_view host, uint32_t port, uint32_t default_port);

}  // namespace tern::address
