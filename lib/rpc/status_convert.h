// File: status_convert.h
//
// absl::Status <-> grpc::Status. absl status codes are numerically the gRPC
// codes, so the mapping is 1:1 and loses nothing but payloads.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tern::rpc {

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace tern::rpc
