// File: server.h
//
// IngestServer: the SMTP listener of tern-ingest. It accepts connections on
// every configured address and runs one Session coroutine per connection
// (session.h) on one of the io_contexts it was given.
//
// Shutdown (SIGTERM/SIGINT in main): Shutdown() stops accepting, tells idle
// sessions "421 4.3.2 Service shutting down" and lets a session that is in a
// transaction (after MAIL) finish it for up to `grace`; then the remaining
// connections are aborted and their queue calls cancelled (nothing half
// received is ever queued).
//
// Shards: sessions are spread round robin over one or more io_contexts
// (smtp.ini nodes), each run by exactly one thread; the first also runs the
// acceptors. A session stays on its shard for its whole life.
//
// Thread-safety: Create() and ports() from any thread before the io_contexts
// run or while they run; Start(), Shutdown() and WaitIdle() from any thread
// (Start() starts each shard's busy measurement there and the acceptors on
// the first; Shutdown() posts to the first). The io_contexts must outlive
// the server.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asio/io_context.hpp"
#include "services/ingest/config.h"

namespace tern::ingest {

class QueueClient;
class QueueOutboundHook;
struct ServerCore;

class IngestServer {
 public:
  // Checks the config (IngestConfig::Validate), loads the TLS certificates
  // and keys, and binds every listen address; a failure names the setting,
  // file or address. Nothing is accepted before Start(). `hook`: the user's
  // queue_outbound hook, shared by every session; null when hooks.ini does
  // not call it.
  static absl::StatusOr<std::unique_ptr<IngestServer>> Create(std::vector<asio::io_context*> shards,
                                                              IngestConfig config, std::shared_ptr<QueueClient> queue,
                                                              std::shared_ptr<QueueOutboundHook> hook = nullptr);
  // One shard.
  static absl::StatusOr<std::unique_ptr<IngestServer>> Create(asio::io_context& io, IngestConfig config,
                                                              std::shared_ptr<QueueClient> queue,
                                                              std::shared_ptr<QueueOutboundHook> hook = nullptr);
  ~IngestServer();

  // The bound ports, in listen order (useful with port 0).
  std::vector<uint16_t> ports() const { return ports_; }

  void Start();
  void Shutdown(std::chrono::milliseconds grace);

  // SIGHUP: replaces the settings new sessions start with by `config` (as
  // LoadIngestConfig read it again), building its TLS contexts first; sessions
  // already open keep theirs to their end. Reloaded: relay_acl_allow,
  // relay_clientcerts, the TLS certificates and tls.ini (except what makes
  // a listener require client certificates), auth_flat_file.ini, `me`,
  // connection.ini's limits, headers and haproxy hosts, inactivity_timeout,
  // enqueue_inline_max. Settings only a restart applies (KeepRestartOnlySettings)
  // keep their running values. On an error (a certificate that does not
  // load) nothing changes. Any thread.
  struct ReloadResult {
    // The restart-only settings that differ in `config`, by file and key.
    std::vector<std::string> needs_restart;
  };
  absl::StatusOr<ReloadResult> Reload(IngestConfig config);
  // Blocks the calling thread (not the io thread) until no session is left
  // after Shutdown(), or `timeout` passed; true if none is left.
  bool WaitIdle(std::chrono::milliseconds timeout);

 private:
  IngestServer(asio::io_context& io, std::shared_ptr<ServerCore> core);

  asio::io_context& io_;
  std::shared_ptr<ServerCore> core_;
  std::vector<uint16_t> ports_;
};

}  // namespace tern::ingest
