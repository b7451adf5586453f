// File: grpc_tls.h
//
// Optional TLS for the gRPC between Tern's services (and ternctl). Off by
// default: the queue listens on loopback or an internal network. Turned on in
// tern.ini, one section read by every service:
//
//   [grpc]
//   tls=false              ; true: every gRPC server of the process (the queue's API,
//                          ; the health ports) speaks only TLS, every channel to the
//                          ; queue uses TLS and verifies the queue's certificate
//   tls_ca=                ; PEM file of the CA(s) that sign the peers' certificates
//                          ; (required with tls=true)
//   tls_cert=              ; PEM certificate chain this process presents (required for
//                          ; a process that serves gRPC: all of them but ternctl)
//   tls_key=               ; its PEM private key
//   tls_client_auth=false  ; servers: require a client certificate signed by tls_ca
//                          ; (mutual TLS: only holders of such a key may enqueue or
//                          ; lease mail); clients then present tls_cert/tls_key
//   tls_server_name=       ; clients: the name the queue's certificate must carry,
//                          ; when it is not the host part of the queue address
//
// Relative paths are relative to the config directory. A process reads the
// files once at start (a restart picks up new certificates).
//
// Usage: each main calls ConfigureGrpcTls() once, before it creates any
// server or channel; MakeChannel(), StartHealthServer() and
// ServerCredentials() (lib/rpc/server_setup.h) then follow it.
//
// Thread-safety: Configure* must run before any other thread uses gRPC; the
// getters are then safe from any thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace tern::config {
class ConfigDir;
}

namespace tern::rpc {

// The PEM contents (not paths) of a TLS setup.
struct GrpcTlsSettings {
  bool enabled = false;
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
  bool client_auth = false;
  std::string server_name;
};

// Reads tern.ini [grpc] from `dir` and the files it names. `serves`: the
// process runs a gRPC server, so it needs a certificate and key.
absl::StatusOr<GrpcTlsSettings> LoadGrpcTls(const config::ConfigDir& dir, bool serves);

// Makes `settings` the process's gRPC TLS setup (see Usage above).
void SetGrpcTls(GrpcTlsSettings settings);
// LoadGrpcTls + SetGrpcTls, logging whether TLS is on.
absl::Status ConfigureGrpcTls(const config::ConfigDir& dir, bool serves);

// The process's setup (default: TLS off).
const GrpcTlsSettings& GrpcTls();

// Credentials for a server / a channel under the process's setup; insecure
// ones when TLS is off.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials();
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials();

}  // namespace tern::rpc
