// tern-ingest: Tern's ESMTP relay server. Accepts mail from clients allowed
// to relay and streams it to the queue (tern.v1.Queue/Enqueue); says 250 only
// once the queue holds the message durably.
//
//   tern-ingest [--config DIR]
//
// Signals: SIGTERM/SIGINT stop accepting, tell idle sessions 421 4.3.2, give
// sessions in a transaction up to smtp.ini force_shutdown_timeout (30 s) to
// finish it, then close the rest. SIGHUP reads the config directory again and
// applies it to new sessions (IngestServer::Reload says what it covers): a
// renewed certificate, a changed relay ACL or user list need no restart. A
// config that does not load is logged (`reload_failed`) and the running one
// stays; settings only a restart applies are named (`reload_needs_restart`).
// tern.ini config_watch_ms (default 2 s): a change of the files ingest reads
// reloads the same way, without a signal (`config_changed`).
//
// hooks.ini: when it calls queue_outbound, every message is offered to the
// user's Hooks server before it is queued (queue_outbound_hook.h).
#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/server.h>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "lib/common/log.h"
#include "lib/config/queue_targets.h"
#include "lib/common/process.h"
#include "lib/common/signals.h"
#include "lib/config/config_dir.h"
#include "lib/config/config_watcher.h"
#include "lib/config/haraka_plugins.h"
#include "lib/config/logging_setup.h"
#include "lib/hooks/hooks_channel.h"
#include "lib/hooks/hooks_config.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/ingest/config.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/queue_outbound_hook.h"
#include "services/ingest/server.h"

namespace {

// Extra time for aborted sessions to unwind before the io thread is stopped.
constexpr auto kAbortSlack = std::chrono::seconds(3);

// Every session holds a socket: raise the soft descriptor limit to the hard
// one so max.connections (default 20000) is not cut short by the default 1024.
void RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

int Fail(absl::string_view event, absl::string_view error) {
  tern::log::Event(tern::log::Level::kCrit, event, {{"error", error}});
  return 1;
}

// SIGHUP: the config directory read again and handed to the server. The
// watcher, when there is one, is pointed at the key files the new config
// names. hooks.ini (`running_hooks` is what the hook was made with) is read
// to check it and to name a change, which only a restart applies.
void Reload(const tern::config::ConfigDir& dir, tern::ingest::IngestServer& server,
            const tern::hooks::HooksConfig& running_hooks, std::chrono::milliseconds* shutdown_timeout,
            tern::config::ConfigWatcher* watcher) {
  using tern::log::Level;
  const bool log_ini_loaded = tern::config::ReloadLogging(dir, "ingest");
  auto config = tern::ingest::LoadIngestConfig(dir);
  absl::StatusOr<tern::hooks::HooksConfig> hooks = tern::hooks::LoadHooksConfig(dir);
  if (config.ok() && !hooks.ok()) {
    config = hooks.status();
  }
  if (!config.ok()) {
    tern::config::RecordReload(false);
    tern::log::Event(Level::kError, "reload_failed",
                     {{"error", config.status().message()}, {"effect", "the running config stays"}});
    return;
  }
  // What the log line reports, taken before the config moves.
  const std::chrono::milliseconds new_shutdown_timeout = config->shutdown_timeout;
  const std::string me = config->me;
  const std::string relay_networks = absl::StrCat(config->relay_acl.networks().size());
  const std::string relay_clientcerts = absl::StrCat(config->relay_clientcerts.size());
  const bool tls = config->tls_enabled();
  const std::string certificates =
      absl::StrCat(config->tls_sni_certificates.size() + (config->tls_cert_file.empty() ? 0 : 1));
  const std::string auth_users = absl::StrCat(config->auth.users.size());
  const std::string proxy_hosts = absl::StrCat(config->haproxy_hosts.size());
  std::vector<std::string> watched = tern::ingest::WatchedPaths(dir, *config);
  auto result = server.Reload(*std::move(config));
  if (!result.ok()) {
    tern::config::RecordReload(false);
    tern::log::Event(Level::kError, "reload_failed",
                     {{"error", result.status().message()}, {"effect", "the running config stays"}});
    return;
  }
  tern::config::RecordReload(log_ini_loaded);
  *shutdown_timeout = new_shutdown_timeout;
  if (watcher != nullptr) {
    watcher->SetPaths(std::move(watched));
  }
  if (!(*hooks == running_hooks)) {
    result->needs_restart.push_back("hooks.ini");
  }
  tern::config::LogReloadNeedsRestart(result->needs_restart);
  tern::log::Event(Level::kNotice, "config_reloaded",
                   {{"me", me},
                    {"relay_networks", relay_networks},
                    {"relay_clientcerts", relay_clientcerts},
                    {"tls", tls ? "on" : "off"},
                    {"tls_certificates", certificates},
                    {"auth_users", auth_users},
                    {"proxy_hosts", proxy_hosts}});
}

}  // namespace

int main(int argc, char** argv) {
  tern::InitServiceProcess();
  CLI::App app{"tern-ingest: Tern's ESMTP relay server"};
  std::string config_path = "./config";
  app.add_option("--config", config_path, "Haraka-style config directory")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Before any thread exists, so that only WaitForSignal takes the signals.
  tern::BlockServiceSignals();
  RaiseFileLimit();

  const tern::config::ConfigDir dir(config_path);
  if (absl::Status s = tern::config::InitLogging(dir, "ingest"); !s.ok()) {
    std::fprintf(stderr, "tern-ingest: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  auto config = tern::ingest::LoadIngestConfig(dir);
  if (!config.ok()) {
    return Fail("config_error", config.status().message());
  }
  if (absl::Status s = tern::rpc::ConfigureGrpcTls(dir, /*serves=*/!config->health_listen.empty()); !s.ok()) {
    return Fail("config_error", s.message());
  }
  tern::config::RecordConfigLoaded();
  // A Haraka config directory: say which of its plugins Tern does the work
  // of and which it does not run, once, at startup (haraka_plugins.h).
  if (auto plugins = tern::config::ReadHarakaPlugins(dir); !plugins.ok()) {
    return Fail("config_error", plugins.status().message());
  } else if (!plugins->not_run.empty()) {
    tern::log::Event(tern::log::Level::kWarn, "haraka_plugins_not_run",
                     {{"plugins", absl::StrJoin(plugins->not_run, ",")},
                      {"handled_natively", absl::StrJoin(plugins->handled, ",")},
                      {"effect", "Tern runs no JavaScript; a Hooks server can do their work (README, Hooks)"}});
  } else if (!plugins->handled.empty()) {
    tern::log::Event(tern::log::Level::kInfo, "haraka_plugins",
                     {{"handled_natively", absl::StrJoin(plugins->handled, ",")}});
  }
  auto hooks = tern::hooks::LoadHooksConfig(dir);
  if (!hooks.ok()) {
    return Fail("config_error", hooks.status().message());
  }
  // One channel and stub for every session; none at all when the hook is
  // off, so a message then costs nothing extra.
  std::shared_ptr<tern::ingest::QueueOutboundHook> hook;
  if (hooks->Calls(tern::hooks::Hook::kQueueOutbound)) {
    hook = std::make_shared<tern::ingest::QueueOutboundHook>(tern::hooks::MakeHooksChannel(*hooks), hooks->timeout);
  }

  std::unique_ptr<grpc::Server> health;
  if (!config->health_listen.empty()) {
    health = tern::rpc::StartHealthServer(config->health_listen);
    if (!health) {
      return Fail("health_listen_failed", config->health_listen);
    }
  }
  std::unique_ptr<tern::metrics::HttpExporter> exporter;
  if (!config->metrics_listen.empty()) {
    exporter = tern::metrics::HttpExporter::Start(config->metrics_listen, tern::metrics::Registry::Global());
    if (!exporter) {
      return Fail("metrics_listen_failed", config->metrics_listen);
    }
  }

  auto queue = std::make_shared<tern::ingest::QueueClient>(config->queues, config->queue_timeout);
  // Connect before the first client does, so its message can go whole. Not
  // fatal: sessions answer 451 until a queue is there, and with shards the
  // messages go to those that answer.
  for (const std::string& target : queue->WaitForReady(std::chrono::seconds(5))) {
    tern::log::Event(tern::log::Level::kWarn, "queue_unreachable",
                     {{"queue", target},
                      {"effect", config->queues.size() > 1 ? "messages go to the other shards until it answers"
                                                           : "messages get 451 until it answers"}});
  }
  // One io_context per session thread (smtp.ini nodes): a session and all
  // its I/O stay on one thread, without locks.
  std::vector<std::unique_ptr<asio::io_context>> shards;
  std::vector<asio::io_context*> shard_ptrs;
  for (size_t i = 0; i < config->io_threads; ++i) {
    shards.push_back(std::make_unique<asio::io_context>(1));
    shard_ptrs.push_back(shards.back().get());
  }
  auto server = tern::ingest::IngestServer::Create(shard_ptrs, *config, queue, hook);
  if (!server.ok()) {
    return Fail("listen_failed", server.status().message());
  }
  (*server)->Start();
  // Keeps a shard's thread running while it has no session yet.
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> idle_guards;
  std::vector<std::thread> io_threads;
  for (auto& shard : shards) {
    idle_guards.push_back(asio::make_work_guard(*shard));
    io_threads.emplace_back([io = shard.get()] { io->run(); });
  }
  tern::log::Event(tern::log::Level::kNotice, "started",
                   {{"me", config->me},
                    {"ports", absl::StrJoin((*server)->ports(), ",")},
                    {"queue", tern::config::JoinQueueTargets(config->queues)},
                    {"relay_networks", absl::StrCat(config->relay_acl.networks().size())},
                    {"tls", config->tls_enabled() ? "on" : "off"},
                    {"threads", absl::StrCat(shards.size())},
                    {"auth_users", absl::StrCat(config->auth.users.size())},
                    {"proxy_hosts", absl::StrCat(config->haproxy_hosts.size())},
                    {"queue_outbound_hook", hook ? hooks->address : std::string("off")},
                    {"metrics", exporter ? absl::StrCat(exporter->port()) : std::string("off")}});

  // A change of the files reloads as SIGHUP does: the watcher signals this
  // process, and the loop below, the one place that reloads, takes it.
  std::unique_ptr<tern::config::ConfigWatcher> watcher =
      tern::config::ReloadOnChange(tern::ingest::WatchedPaths(dir, *config), config->config_watch);
  auto grace = config->shutdown_timeout;
  while (true) {
    const int sig = tern::WaitForSignal();
    if (sig != SIGHUP) {
      tern::log::Event(tern::log::Level::kNotice, "stopping", {{"signal", absl::StrCat(sig)}});
      break;
    }
    Reload(dir, **server, *hooks, &grace, watcher.get());
  }
  watcher.reset();

  (*server)->Shutdown(grace);
  if (!(*server)->WaitIdle(grace + kAbortSlack)) {
    tern::log::Event(tern::log::Level::kWarn, "sessions_left_at_exit");
  }
  for (auto& shard : shards) {
    shard->stop();
  }
  for (std::thread& t : io_threads) {
    t.join();
  }
  idle_guards.clear();
  server->reset();
  // Sessions still open end with their shard; ending, each may post to the
  // first shard (ServerCore::CheckIdle), so that one goes last.
  while (!shards.empty()) {
    shards.pop_back();
  }
  if (health) {
    health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  exporter.reset();
  tern::log::Event(tern::log::Level::kNotice, "stopped");
  return 0;
}
