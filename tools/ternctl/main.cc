// ternctl: the operator's command line for a running Tern queue.
//
//   ternctl [--queue HOST:PORT[,HOST:PORT...]] [--config DIR] [--timeout S] COMMAND ...
//     stats [--json]                    counters
//     list [filters] [--limit N] [--cursor ID] [--json]
//     show ID | explain ID [--json]     one message; why it is still queued
//     qshape [--deferred] [--top N]     domains x age buckets
//     destinations [--json]             shaping now: leases and waiting per domain / MX site
//     corrupt [--limit N] [--json]      records moved aside as unparseable
//     corrupt show CF KEY [--body] [--out FILE] [--shard QUEUE]   one, raw (or its message's body)
//     corrupt purge CF KEY [--shard QUEUE] | --all   delete them (and bodies they left)
//     flush|hold|release [IDS|filters|--all]
//     delete|bounce [IDS|filters|--all] [--yes] [--reason TEXT]
//     undelete --token T | IDS; deleted [--token T]   put back what delete removed
//     pause | resume                    leasing deliveries (runtime override)
//     watch [--from SEQ] [--oldest] [--no-follow] [--json]
//     hosts [--flag F] | hosts clear HOST   deliverers' flags on MX addresses
//     health [--service NAME]           grpc.health.v1 Check, exit 0 if SERVING
//     tlsrpt list [--json]              TLS report counts waiting (RFC 8460)
//     tlsrpt send [--include-today] [--json]   queue those reports now
//   filters: --domain D --sender S --recipient R --state STATE
//            --older-than DUR --younger-than DUR
//
// --queue defaults to 127.0.0.1:7070 (tern.ini [queue] listen). A sharded
// queue (ARCHITECTURE.md §8) is named by its shards, comma-separated as in
// tern.ini (lib/config/queue_targets.h); every command then asks every shard
// and shows the whole queue: sums where they mean something, a QUEUE column
// or "queue ADDR" where a figure is a shard's own, list cursors and watch
// positions of the form ID@QUEUE and SEQ@QUEUE. With one address the output
// is as it always was. tools/ternctl/README.md has the formats.
//
// --config reads the gRPC TLS settings (tern.ini [grpc], lib/rpc/grpc_tls.h)
// the services use, for a queue that speaks only TLS. Exit status:
// 0 on success, 1 when the queue (or any shard) cannot be reached or refuses
// the request, and CLI11's usage codes for bad arguments. Command groups
// live in their own files (see command_group.h); add them below.
#include <iostream>

#include "CLI/CLI.hpp"
#include "lib/config/config_dir.h"
#include "lib/rpc/grpc_tls.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/command_group.h"
#include "tools/ternctl/destinations_command.h"
#include "tools/ternctl/queue_shards.h"
#include "tools/ternctl/tlsrpt_command.h"

int main(int argc, char** argv) {
  CLI::App app{"ternctl: inspect and manage a Tern queue"};
  tern::ternctl::GlobalOptions globals;
  tern::ternctl::AddQueueOption(app, globals);
  app.add_option("--timeout", globals.timeout_seconds, "Seconds to wait for the queue")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  // An option callback: CLI11 runs it before any subcommand's, so the
  // channels the commands make already carry the credentials.
  app.add_option_function<std::string>(
      "--config",
      [](const std::string& dir) {
        // Load + Set rather than Configure: a CLI logs nothing of its own.
        absl::StatusOr<tern::rpc::GrpcTlsSettings> tls =
            tern::rpc::LoadGrpcTls(tern::config::ConfigDir(dir), /*serves=*/false);
        if (!tls.ok()) {
          throw CLI::ValidationError("--config", std::string(tls.status().message()));
        }
        tern::rpc::SetGrpcTls(*std::move(tls));
      },
      "Config directory whose tern.ini [grpc] says how to reach a queue that speaks TLS");
  app.require_subcommand(1);
  app.fallthrough();  // also accept --queue after the subcommand

  int exit_code = 0;
  tern::ternctl::Io io{std::cout, std::cerr};
  tern::ternctl::AddStatsCommands(app, globals, io, exit_code);
  tern::ternctl::AddListCommands(app, globals, io, exit_code);
  tern::ternctl::AddActionCommands(app, globals, io, exit_code);
  tern::ternctl::AddWatchCommands(app, globals, io, exit_code);
  tern::ternctl::AddHealthCommands(app, globals, io, exit_code);
  tern::ternctl::AddTlsRptCommands(app, globals, io, exit_code);
  tern::ternctl::AddDestinationsCommand(app, globals, io, exit_code);

  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
