// tern-bouncer: leases bounce jobs from the queue and sends RFC 3464 DSNs.
//
//   tern-bouncer --config DIR
//
// Reads tern.ini [bouncer], me, outbound.bounce_message*, hooks.ini,
// plugin_timeout and log.ini from DIR (see services/bouncer/README.md). One
// worker thread per queue shard listed in [bouncer] queue. SIGTERM/SIGINT:
// every worker finishes its job in progress, then exit 0. A bad config exits
// 1 with a message naming the file. SIGHUP, or a change of the templates,
// `me`, tern.ini, log.ini or hooks.ini (looked at every [bouncer]
// config_watch_ms),
// reads the config again: templates, me, double_bounce_recipient,
// suppression rules and max_original_bytes apply from each worker's next
// job, log.ini's level and format at once; queue,
// health_listen, metrics_listen and hooks.ini need a restart (logged as
// reload_needs_restart); a config that does not load changes nothing.
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/server.h>

#include "CLI/CLI.hpp"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/common/process.h"
#include "lib/common/signals.h"
#include "lib/config/config_dir.h"
#include "lib/config/config_watcher.h"
#include "lib/config/logging_setup.h"
#include "lib/config/queue_targets.h"
#include "lib/hooks/hooks_channel.h"
#include "lib/hooks/hooks_config.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/bouncer/bounce_worker.h"
#include "services/bouncer/bouncer_config.h"

namespace {

using tern::log::Level;

// SIGHUP: the config read again and handed to every worker; `running` and
// `running_hooks` are what the service was started with (hooks.ini is read
// to check it and to name a change, which only a restart applies).
void Reload(const tern::config::ConfigDir& dir, const tern::bouncer::BouncerConfig& running,
            const tern::hooks::HooksConfig& running_hooks,
            const std::vector<std::unique_ptr<tern::bouncer::BounceWorker>>& workers) {
  const bool log_ini_loaded = tern::config::ReloadLogging(dir, "bouncer");
  absl::StatusOr<tern::bouncer::BouncerConfig> config = tern::bouncer::LoadBouncerConfig(dir);
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
  tern::config::RestartOnlySettings restart;
  restart.Note(config->queues != running.queues, "tern.ini [bouncer] queue");
  restart.Note(config->health_listen != running.health_listen, "tern.ini [bouncer] health_listen");
  restart.Note(config->metrics_listen != running.metrics_listen, "tern.ini [bouncer] metrics_listen");
  restart.Note(config->config_watch != running.config_watch, "tern.ini [bouncer] config_watch_ms");
  restart.Note(!(*hooks == running_hooks), "hooks.ini");
  tern::config::LogReloadNeedsRestart(restart.names);
  for (const std::unique_ptr<tern::bouncer::BounceWorker>& worker : workers) {
    worker->Reload(*config);
  }
  tern::config::RecordReload(log_ini_loaded);
  tern::log::Event(Level::kNotice, "config_reloaded",
                   {{"me", config->me},
                    {"template", config->failed_template.origin},
                    {"double_bounce_recipient", config->double_bounce_recipient}});
}

int RealMain(const std::string& config_path) {
  tern::BlockServiceSignals();
  tern::config::ConfigDir dir(config_path);
  if (absl::Status s = tern::config::InitLogging(dir, "bouncer"); !s.ok()) {
    std::cerr << "tern-bouncer: " << s.message() << "\n";
    return 1;
  }
  absl::StatusOr<tern::bouncer::BouncerConfig> config = tern::bouncer::LoadBouncerConfig(dir);
  if (!config.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", config.status().message()}});
    return 1;
  }
  if (absl::Status s = tern::rpc::ConfigureGrpcTls(dir, /*serves=*/!config->health_listen.empty()); !s.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", s.message()}});
    return 1;
  }
  absl::StatusOr<tern::hooks::HooksConfig> hooks = tern::hooks::LoadHooksConfig(dir);
  if (!hooks.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", hooks.status().message()}});
    return 1;
  }
  tern::config::RecordConfigLoaded();
  const bool bounce_hook = hooks->Calls(tern::hooks::Hook::kBounce);
  tern::log::Event(Level::kInfo, "starting",
                   {{"queue", tern::config::JoinQueueTargets(config->queues)},
                    {"shards", absl::StrCat(config->queues.size())},
                    {"me", config->me},
                    {"template", config->failed_template.origin},
                    {"bounce_hook", bounce_hook ? hooks->address : "none"}});

  std::unique_ptr<tern::metrics::HttpExporter> exporter;
  if (!config->metrics_listen.empty()) {
    exporter = tern::metrics::HttpExporter::Start(config->metrics_listen, tern::metrics::Registry::Global());
    if (!exporter) {
      return 1;  // logged by Start
    }
  }
  std::unique_ptr<grpc::Server> health;
  if (!config->health_listen.empty()) {
    health = tern::rpc::StartHealthServer(config->health_listen);
    if (!health) {
      return 1;  // logged by StartHealthServer
    }
  }

  // One worker per queue shard, each with its own channel and thread. A
  // worker enqueues its DSNs into the shard it leased the bounce job from
  // (bounce_worker.h says why: the DSN's idempotency key is only
  // deduplicated within that shard's database).
  tern::bouncer::BounceWorker::Options base_options;
  // The bouncer calls one hook; the other services call the rest. The Hooks
  // stub is shared by every worker (gRPC stubs are thread-safe).
  std::unique_ptr<tern::v1::Hooks::Stub> hooks_stub;
  if (bounce_hook) {
    hooks_stub = tern::v1::Hooks::NewStub(tern::hooks::MakeHooksChannel(*hooks));
    base_options.hooks = hooks_stub.get();
    base_options.hook_timeout = absl::FromChrono(hooks->timeout);
  }
  const std::vector<std::string>& queues = config->queues;
  std::vector<std::unique_ptr<tern::v1::Queue::Stub>> stubs;
  std::vector<std::unique_ptr<tern::bouncer::BounceWorker>> workers;
  for (size_t shard = 0; shard < queues.size(); ++shard) {
    const std::string& target = queues[shard];
    tern::bouncer::BounceWorker::Options options = base_options;
    options.worker_id = queues.size() == 1 ? absl::StrCat("bouncer-", getpid())
                                           : absl::StrCat("bouncer-", getpid(), "-", shard);
    options.queue_target = target;
    options.log_config_warnings = shard == 0;
    options.new_stub = [target]() -> std::unique_ptr<tern::v1::Queue::StubInterface> {
      return tern::v1::Queue::NewStub(tern::rpc::MakeChannel(target));
    };
    stubs.push_back(tern::v1::Queue::NewStub(tern::rpc::MakeChannel(target)));
    tern::log::Event(Level::kInfo, "worker_starting", {{"queue", target}, {"worker", options.worker_id}});
    workers.push_back(std::make_unique<tern::bouncer::BounceWorker>(
        stubs.back().get(), *config, [] { return tern::NewRandomToken(); }, getpid(), std::move(options)));
  }
  std::vector<std::thread> worker_threads;
  worker_threads.reserve(workers.size());
  for (const std::unique_ptr<tern::bouncer::BounceWorker>& worker : workers) {
    worker_threads.emplace_back([w = worker.get()] { w->Run(); });
  }

  // A change of the files reloads as SIGHUP does: the watcher signals this
  // process, and the loop below, the one place that reloads, takes it.
  std::unique_ptr<tern::config::ConfigWatcher> watcher = tern::config::ReloadOnChange(
      tern::config::WatchPaths(dir, {"outbound.bounce_message", "outbound.bounce_message_delayed",
                                     "outbound.bounce_message_delivered", "outbound.bounce_message_html",
                                     "outbound.bounce_message_delayed_html",
                                     "outbound.bounce_message_delivered_html", "outbound.bounce_message_image",
                                     "me", "tern.ini", "log.ini", "hooks.ini", "plugin_timeout"}),
      config->config_watch);
  while (true) {
    int sig = tern::WaitForSignal();
    if (sig == SIGHUP) {
      Reload(dir, *config, *hooks, workers);
      continue;
    }
    tern::log::Event(Level::kInfo, "stopping", {{"signal", absl::StrCat(sig)}});
    break;
  }
  watcher.reset();
  // Every worker is told first, so they all wind down together.
  for (const std::unique_ptr<tern::bouncer::BounceWorker>& worker : workers) {
    worker->Stop();
  }
  for (std::thread& t : worker_threads) {
    t.join();
  }
  if (health) {
    health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  tern::log::Event(Level::kInfo, "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  tern::InitServiceProcess();
  CLI::App app{"tern-bouncer: sends RFC 3464 delivery status notifications for the Tern queue"};
  std::string config_path = "config";
  app.add_option("--config", config_path, "Haraka-style config directory")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return RealMain(config_path);
}
