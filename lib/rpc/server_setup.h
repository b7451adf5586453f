// File: server_setup.h
//
// What every Tern gRPC server and client has in common: health checking
// (grpc.health.v1) and reflection on every server, message size limits that
// fit a large mail body, and client channels that wait for the server to come
// up (so services can start in any order, as compose starts them).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/server_builder.h>

namespace tern::rpc {

// Largest gRPC message Tern sends or accepts: a Lease response carries whole
// bodies, which ingest caps at its max.bytes (default 25 MiB) each.
inline constexpr int kMaxMessageBytes = 256 * 1024 * 1024;

// Sets Tern's limits on `builder`. Health and reflection are on for every
// server of a process that links this library (registered at start-up, since
// gRPC reads plugins when a builder is constructed).
void PrepareServerBuilder(grpc::ServerBuilder& builder);

// A channel to `target` ("host:port") with Tern's limits. Plaintext unless
// tern.ini [grpc] tls is on (lib/rpc/grpc_tls.h): gRPC between services
// listens on loopback or an internal network by default.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// Starts a gRPC server on `listen` that only answers health checks and
// reflection (for services that serve no API of their own: deliverer,
// bouncer), with TLS when [grpc] tls is on. Returns nullptr and logs when it
// cannot bind.
std::unique_ptr<grpc::Server> StartHealthServer(const std::string& listen);

}  // namespace tern::rpc
