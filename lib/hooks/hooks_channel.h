// File: hooks_channel.h
//
// The gRPC channel to the user's Hooks server (hooks.ini `address`), with
// TLS when hooks.ini says so. Kept apart from hooks_config.h so that only the
// .cc files that call hooks see gRPC's headers.
#pragma once

#include <memory>

#include "lib/hooks/hooks_config.h"

namespace grpc {
class Channel;
}

namespace tern::hooks {

// Null when `cfg` calls no hook.
std::shared_ptr<grpc::Channel> MakeHooksChannel(const HooksConfig& cfg);

}  // namespace tern::hooks
