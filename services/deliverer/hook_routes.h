// File: hook_routes.h
//
// The routes a user's get_mx hook answers with (tern.v1.MxRoute), turned
// into one-host StaticRoutes and checked as outbound_routes.ini entries are:
// the hook cannot give what the config file could not (a bad port, a bind
// address that is not an IP, implicit TLS to a unix socket, ...). Its `tls`
// means what the file's `tls=` means, and unset is the file's default too:
// implicit TLS on port 465, else opportunistic.
//
// Thread-safety: a pure function.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "services/deliverer/static_routes.h"
#include "tern/v1/hooks.pb.h"

namespace tern::deliverer {

// InvalidArgument names what is wrong, never the credentials.
absl::StatusOr<StaticRoute> RouteFromHook(const tern::v1::MxRoute& m, const std::string& domain);

}  // namespace tern::deliverer
