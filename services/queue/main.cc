// tern-queue: the durable queue. Serves tern.v1.Queue and tern.v1.Admin over
// gRPC (with health and reflection) and Prometheus metrics.
//
//   tern-queue [--config DIR] [--data-dir DIR]
//
// Signals: SIGTERM/SIGINT shut down cleanly (long polls answered, the server
// drained with a deadline, the database closed); SIGHUP reloads the config
// and flushes (every waiting delivery is due now), as SIGHUP does in Haraka.
// The config is also reloaded, without a flush, when tern.ini, outbound.ini
// (or Haraka's legacy outbound.* files), shaping.ini or log.ini changes
// (looked at every tern.ini [queue] config_watch_ms, applied once the files
// have stayed the same for as long again; lib/config/config_watcher.h). A
// reload applies outbound.ini (disabled, always_split, the retry schedule),
// shaping.ini, log.ini and most tern.ini [queue] keys at once
// (QueueCore::Reconfigure, config::ReloadLogging), names the settings only a restart
// applies (`reload_needs_restart`), and changes nothing when the files do
// not load (`reload_failed`).
#include <chrono>
#include <csignal>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/common/process.h"
#include "lib/common/signals.h"
#include "lib/config/config_dir.h"
#include "lib/config/config_watcher.h"
#include "lib/config/logging_setup.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/queue/queue_config.h"
#include "services/queue/queue_core.h"
#include "services/queue/queue_service_impl.h"

namespace {

constexpr auto kShutdownGrace = std::chrono::seconds(5);

int Fail(absl::string_view event, absl::string_view error) {
  tern::log::Event(tern::log::Level::kCrit, event, {{"error", error}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  tern::InitServiceProcess();
  CLI::App app{"tern-queue: Tern's durable mail queue (RocksDB, gRPC)"};
  std::string config_path = "./config";
  std::string data_dir_flag;
  app.add_option("--config", config_path, "Haraka-style config directory")->capture_default_str();
  app.add_option("--data-dir", data_dir_flag, "RocksDB directory; overrides tern.ini [queue] data_dir");
  CLI11_PARSE(app, argc, argv);

  // Before any thread exists, so that only WaitForSignal takes the signals.
  tern::BlockServiceSignals();

  const tern::config::ConfigDir dir(config_path);
  if (absl::Status s = tern::config::InitLogging(dir, "queue"); !s.ok()) {
    std::fprintf(stderr, "tern-queue: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::optional<std::string> data_dir;
  if (!data_dir_flag.empty()) {
    data_dir = data_dir_flag;
  }
  auto config = tern::queue::LoadQueueConfig(dir, data_dir);
  if (!config.ok()) {
    return Fail("config_error", config.status().message());
  }
  if (absl::Status s = tern::rpc::ConfigureGrpcTls(dir, /*serves=*/true); !s.ok()) {
    return Fail("config_error", s.message());
  }
  tern::config::RecordConfigLoaded();

  auto core = tern::queue::QueueCore::Open(config->core);
  if (!core.ok()) {
    return Fail("storage_open_failed", core.status().message());
  }

  std::unique_ptr<tern::metrics::HttpExporter> exporter;
  if (!config->metrics_listen.empty()) {
    exporter = tern::metrics::HttpExporter::Start(config->metrics_listen, tern::metrics::Registry::Global());
    if (!exporter) {
      return Fail("metrics_listen_failed", config->metrics_listen);
    }
  }

  tern::queue::QueueServiceImpl queue_service(core->get());
  tern::queue::AdminServiceImpl admin_service(core->get());
  grpc::ServerBuilder builder;
  tern::rpc::PrepareServerBuilder(builder);
  int port = 0;
  builder.AddListeningPort(config->listen, tern::rpc::ServerCredentials(), &port);
  builder.RegisterService(&queue_service);
  builder.RegisterService(&admin_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Fail("listen_failed", config->listen);
  }
  tern::log::Event(tern::log::Level::kNotice, "listening",
                   {{"listen", config->listen},
                    {"port", absl::StrCat(port)},
                    {"data_dir", config->core.data_dir},
                    {"metrics", exporter ? absl::StrCat(exporter->port()) : std::string("off")},
                    {"disabled", config->core.disabled ? "true" : "false"}});

  // Called by the main thread on SIGHUP and by the watcher's thread; one
  // reload at a time.
  std::mutex reload_mu;
  auto reload = [&] {
    std::lock_guard<std::mutex> lock(reload_mu);
    const bool log_ini_loaded = tern::config::ReloadLogging(dir, "queue");
    auto loaded = tern::queue::LoadQueueConfig(dir, data_dir);
    if (!loaded.ok()) {
      tern::config::RecordReload(false);
      tern::log::Event(tern::log::Level::kError, "reload_failed",
                       {{"error", loaded.status().message()}, {"effect", "the running config stays"}});
      return;
    }
    tern::config::LogReloadNeedsRestart(tern::queue::RestartOnlyChanges(*config, *loaded));
    (*core)->SetDisabled(loaded->core.disabled);
    std::promise<absl::Status> applied;
    (*core)->Reconfigure(loaded->core, [&applied](absl::Status s) {
      applied.set_value(std::move(s));
    });
    if (absl::Status s = applied.get_future().get(); !s.ok()) {
      tern::config::RecordReload(false);
      tern::log::Event(tern::log::Level::kError, "reload_failed", {{"error", s.message()}});
      return;
    }
    tern::config::RecordReload(log_ini_loaded);
    const tern::queue::DestinationShaping& shaping = loaded->core.shaping;
    tern::log::Event(tern::log::Level::kInfo, "config_reloaded",
                     {{"disabled", loaded->core.disabled ? "true" : "false"},
                      {"always_split", loaded->core.always_split ? "true" : "false"},
                      {"retries", absl::StrCat(loaded->core.retry.intervals_ms().size())},
                      {"shaping_sections", absl::StrCat(shaping.sections())},
                      {"mx_sites", absl::StrCat(shaping.sites().size())},
                      {"default_concurrency_max", absl::StrCat(shaping.defaults().concurrency_max)}});
  };
  std::unique_ptr<tern::config::ConfigWatcher> watcher;
  if (config->config_watch.count() > 0) {
    watcher = std::make_unique<tern::config::ConfigWatcher>(tern::queue::QueueConfigPaths(dir), config->config_watch,
                                                            reload);
  }

  while (true) {
    const int sig = tern::WaitForSignal();
    if (sig != SIGHUP) {
      tern::log::Event(tern::log::Level::kNotice, "stopping", {{"signal", absl::StrCat(sig)}});
      break;
    }
    reload();
    (*core)->Flush(nullptr);
  }
  watcher.reset();  // before the core its callback uses goes

  // Answer parked long polls first: the server's shutdown waits for every
  // outstanding call, and a long poll would otherwise hold it for its wait.
  (*core)->BeginShutdown();
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  server.reset();
  core->reset();  // drains the writer, closes RocksDB
  exporter.reset();
  tern::log::Event(tern::log::Level::kNotice, "stopped");
  return 0;
}
