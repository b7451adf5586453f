// File: ids.h
//
// Identifiers. Message ids are time-ordered (KumoMTA's spool ids do the same)
// so that RocksDB keys sort by arrival and ids say when a message came in:
// 12 hex digits of Unix milliseconds, then 8 hex digits of a per-process
// sequence that starts at a random value, e.g. "019a4e2c7d10" "3f2a0001".
//
// Thread-safety: all functions are safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

namespace tern {

// A new time-ordered message id (20 lower-case hex characters).
std::string NewMessageId();

// The arrival time encoded in a message id, or -1 if it is not one.
int64_t MessageIdUnixMs(absl::string_view id);

// A random token (32 hex characters, 128 bits) for leases and idempotency.
std::string NewRandomToken();

}  // namespace tern
