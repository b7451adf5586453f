// queue_backlog_bench: does the queue stay small and quick with a big backlog?
//
//   queue_backlog_bench --queue-bin PATH --ternctl-bin PATH [--dir DIR]
//       [--messages N] [--size BYTES] [--domains D] [--drain N] [--reuse] [--keep]
//
// The third queue benchmark: N (default 1,000,000) queued SIZE-byte
// messages; the real `tern-queue` binary's RSS must stay <= 256 MB, a restart
// must hand out its first lease within 5 s, and `ternctl qshape` must answer
// within 2 s.
//
// 1. Load: N messages (one recipient each, spread over D domains) are stored
//    through QueueCore in this process (the same code and on-disk format as
//    `tern-queue`; gRPC would only make loading slower), with up to 512
//    synced Enqueues in flight. The core is then closed. With --reuse, a
//    backlog a previous run left (--keep) is used instead.
// 2. Start: `tern-queue` is started on that data directory. Measured from
//    the fork until a Lease call (gRPC, a client that reconnects every 10 ms)
//    returns a delivery: restart to first lease, which includes the
//    process start, RocksDB's open and the queue's recovery scan.
// 3. `ternctl qshape` and `ternctl qshape --deferred` and `ternctl stats`
//    are run as separate processes and timed (process start included).
// 4. Drain: --drain deliveries are leased (100 per call) and reported
//    delivered through gRPC, to show memory does not grow with work done.
// 5. Crash: 1000 deliveries are leased and left out, the queue is killed
//    with SIGKILL and started again: restart to first lease after a crash.
// RSS (VmRSS) and peak RSS (VmHWM) of the queue process are read from /proc
// after each step. The queue process is stopped with SIGTERM at the end and
// DIR is removed unless --keep.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "bench/queue/all_delivered.h"
#include "lib/common/log.h"
#include "services/queue/queue_core.h"
#include "tern/v1/queue.grpc.pb.h"

extern char** environ;

namespace {

using SteadyClock = std::chrono::steady_clock;

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// A free loopback port: bound, read back, closed. The queue binds it a moment
// later; another process taking it in between would fail the start loudly.
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("free port");
    std::exit(1);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Starts argv[0] with stdout and stderr appended to `log`.
pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv;
  for (const auto& a : args) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    std::fprintf(stderr, "cannot start %s: %s\n", argv[0], std::strerror(rc));
    std::exit(1);
  }
  return pid;
}

// Runs a command to completion; returns its wall time, or -1 if it failed.
double Run(const std::vector<std::string>& args, const std::string& log) {
  const auto start = SteadyClock::now();
  const pid_t pid = Spawn(args, log);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const double t = Seconds(SteadyClock::now() - start);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? t : -1;
}

struct Memory {
  long rss_kb = 0;
  long peak_kb = 0;
};

Memory ReadMemory(pid_t pid) {
  Memory m;
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      m.rss_kb = std::atol(line.c_str() + 6);
    } else if (line.rfind("VmHWM:", 0) == 0) {
      m.peak_kb = std::atol(line.c_str() + 6);
    }
  }
  return m;
}

// User + system CPU seconds the process has used so far: unlike wall time,
// this does not depend on what else the machine is running.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) {
    return -1;
  }
  // Fields after "(comm)": state is field 3; utime and stime are 14 and 15.
  std::vector<std::string> f;
  size_t pos = paren + 2;
  while (pos < stat.size() && f.size() < 13) {
    const size_t sp = stat.find(' ', pos);
    f.push_back(stat.substr(pos, sp - pos));
    pos = sp == std::string::npos ? stat.size() : sp + 1;
  }
  if (f.size() < 13) {
    return -1;
  }
  return (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) / ::sysconf(_SC_CLK_TCK);
}

void PrintMemory(const char* when, pid_t pid) {
  const Memory m = ReadMemory(pid);
  std::printf("rss: %-34s %6.1f MB  (peak %6.1f MB)\n", when, m.rss_kb / 1024.0, m.peak_kb / 1024.0);
  std::fflush(stdout);
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) {
      total += e.file_size(ec);
    }
  }
  return total;
}

bool Load(const std::string& db, int messages, size_t size, int domains) {
  tern::queue::CoreOptions options;
  options.data_dir = db;
  auto core = tern::queue::QueueCore::Open(options);
  if (!core.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(core.status().message()).c_str());
    return false;
  }
  // Bodies differ and are not trivially compressible (RocksDB compresses
  // blocks; a body of one repeated letter would shrink to nothing): random
  // letters, as compressible as base64, refreshed per message.
  const std::string head = "Subject: backlog\r\nFrom: bench@src.example\r\n\r\n";
  const size_t text = size > head.size() + 2 ? size - head.size() - 2 : 0;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  auto make_body = [&] {
    std::string b = head;
    b.reserve(size);
    for (size_t i = 0; i < text; ++i) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      b.push_back(i % 76 == 75 ? '\n' : static_cast<char>('A' + rng % 58 % 26 + (rng % 2 ? 32 : 0)));
    }
    b += "\r\n";
    return b;
  };
  constexpr int kInFlight = 512;
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::atomic<int> failed{0};
  const auto start = SteadyClock::now();
  for (int n = 0; n < messages; ++n) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return in_flight < kInFlight; });
      ++in_flight;
    }
    tern::v1::EnqueueHeader h;
    h.mutable_envelope()->set_mail_from("bench@src.example");
    h.mutable_envelope()->add_recipients()->set_address(
        absl::StrCat("rcpt", n % 1000, "@dest", n % domains, ".example"));
    (*core)->Enqueue(std::move(h), make_body(), [&](absl::StatusOr<tern::queue::EnqueueResult> r) {
      if (!r.ok()) {
        failed.fetch_add(1);
      }
      std::lock_guard lock(mu);
      --in_flight;
      cv.notify_one();
    });
    if ((n + 1) % 100000 == 0) {
      std::printf("load: %d messages, %.0f msgs/s\n", n + 1, (n + 1) / Seconds(SteadyClock::now() - start));
      std::fflush(stdout);
    }
  }
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  }
  std::printf("load: %d messages of %zu B in %.1f s (%.0f msgs/s), %d failed\n", messages, head.size() + text + 2,
              Seconds(SteadyClock::now() - start), messages / Seconds(SteadyClock::now() - start), failed.load());
  return failed.load() == 0;
}

std::unique_ptr<tern::v1::Queue::Stub> Connect(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  // Reconnect every 10 ms while the queue starts, so the figure is the
  // queue's start-up and not the client's backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 10);
  return tern::v1::Queue::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(), args));
}

// Leases up to `max_jobs` deliveries; waits (for the queue to come up) up to
// `timeout_s`. Returns false on error.
bool LeaseSome(tern::v1::Queue::Stub& stub, uint32_t max_jobs, double timeout_s, tern::v1::LeaseResponse* out) {
  tern::v1::LeaseRequest req;
  req.set_kind(tern::v1::JOB_KIND_DELIVERY);
  req.set_max_jobs(max_jobs);
  req.set_lease_seconds(600);
  req.set_wait_ms(1000);
  req.set_worker_id("backlog-bench");
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000)));
  grpc::Status s = stub.Lease(&ctx, req, out);
  if (!s.ok()) {
    std::fprintf(stderr, "lease: %s\n", s.error_message().c_str());
  }
  return s.ok();
}

// Starts the queue and measures until the first delivery is leased.
pid_t StartAndLease(const std::vector<std::string>& cmd, const std::string& log, int port, const char* what) {
  const auto start = SteadyClock::now();
  const pid_t pid = Spawn(cmd, log);
  auto stub = Connect(port);
  tern::v1::LeaseResponse resp;
  if (!LeaseSome(*stub, 1, 120, &resp) || resp.deliveries().empty()) {
    std::fprintf(stderr, "%s: no delivery leased\n", what);
    ::kill(pid, SIGKILL);
    std::exit(1);
  }
  std::printf("restart: %-32s %6.2f s to the first lease (target <= 5 s); queue CPU %.2f s\n", what,
              Seconds(SteadyClock::now() - start), CpuSeconds(pid));
  std::fflush(stdout);
  return pid;
}

void Drain(int port, int n) {
  auto stub = Connect(port);
  const auto start = SteadyClock::now();
  int done = 0;
  while (done < n) {
    tern::v1::LeaseResponse lease;
    if (!LeaseSome(*stub, 100, 30, &lease) || lease.deliveries().empty()) {
      break;
    }
    tern::v1::ReportRequest rep = tern::bench::AllDelivered(lease);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    tern::v1::ReportResponse resp;
    if (!stub->Report(&ctx, rep, &resp).ok()) {
      break;
    }
    done += lease.deliveries_size();
  }
  std::printf("drain: %d deliveries leased and reported over gRPC (1 client, 100 per lease): %.0f/s\n", done,
              done / Seconds(SteadyClock::now() - start));
  std::fflush(stdout);
}

void Stop(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"queue_backlog_bench: RSS, restart to first lease and qshape time with a big backlog"};
  std::string dir = "/tmp/tern-queue-backlog";
  std::string queue_bin;
  std::string ternctl_bin;
  int messages = 1000000;
  size_t size = 2048;
  int domains = 500;
  int drain = 50000;
  bool reuse = false;
  bool keep = false;
  app.add_option("--dir", dir, "Scratch directory (about 3 GB for the default backlog)")->capture_default_str();
  app.add_option("--queue-bin", queue_bin, "The tern-queue binary")->required();
  app.add_option("--ternctl-bin", ternctl_bin, "The ternctl binary")->required();
  app.add_option("--messages", messages, "Messages in the backlog")->capture_default_str();
  app.add_option("--size", size, "Body size in bytes")->capture_default_str();
  app.add_option("--domains", domains, "Recipient domains")->capture_default_str();
  app.add_option("--drain", drain, "Deliveries to lease and report before the crash restart")->capture_default_str();
  app.add_flag("--reuse", reuse, "Use the backlog a previous --keep run left in --dir");
  app.add_flag("--keep", keep, "Leave --dir (and its backlog) in place");
  CLI11_PARSE(app, argc, argv);

  // The core logs one line per message at info; the load only needs errors.
  tern::log::Init("queue", tern::log::Level::kWarn, tern::log::Format::kDefault);
  const std::string db = dir + "/db";
  const std::string marker = dir + "/loaded";
  if (!(reuse && std::filesystem::exists(marker))) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    if (!Load(db, messages, size, domains)) {
      return 1;
    }
    std::ofstream(marker) << messages << "\n";
  }
  std::printf("disk: %.2f GB in %s\n", DirBytes(db) / 1e9, db.c_str());

  const int port = FreePort();
  const std::string config = dir + "/config";
  std::filesystem::create_directories(config);
  std::ofstream(config + "/tern.ini") << "[queue]\nlisten=127.0.0.1:" << port << "\nmetrics_listen=\n";
  std::ofstream(config + "/log.ini") << "[main]\nlevel=info\n";
  const std::string log = dir + "/queue.log";
  const std::string ctl_log = dir + "/ternctl.log";
  const std::vector<std::string> queue_cmd = {queue_bin, "--config", config, "--data-dir", db};
  const std::string target = absl::StrCat("127.0.0.1:", port);

  pid_t pid = StartAndLease(queue_cmd, log, port, "clean start");
  PrintMemory("after the first lease", pid);
  for (int i = 0; i < 3; ++i) {
    const double t = Run({ternctl_bin, "--queue", target, "qshape"}, ctl_log);
    std::printf("ternctl: qshape                        %6.2f s (target <= 2 s)%s\n", t, t < 0 ? " FAILED" : "");
  }
  const double td = Run({ternctl_bin, "--queue", target, "qshape", "--deferred"}, ctl_log);
  std::printf("ternctl: qshape --deferred             %6.2f s\n", td);
  const double ts = Run({ternctl_bin, "--queue", target, "stats"}, ctl_log);
  std::printf("ternctl: stats                         %6.2f s\n", ts);
  PrintMemory("after qshape and stats", pid);
  if (drain > 0) {
    Drain(port, drain);
    PrintMemory("after the drain", pid);
  }
  {
    auto stub = Connect(port);
    tern::v1::LeaseResponse out;
    LeaseSome(*stub, 1000, 30, &out);
    std::printf("crash: %d deliveries out on lease, SIGKILL\n", out.deliveries_size());
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  pid = StartAndLease(queue_cmd, log, port, "after SIGKILL");
  PrintMemory("after the first lease", pid);
  const double t2 = Run({ternctl_bin, "--queue", target, "qshape"}, ctl_log);
  std::printf("ternctl: qshape                        %6.2f s\n", t2);
  // A few seconds idle: the tick's schedule scans and event pruning run.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  PrintMemory("after 6 s idle", pid);
  Stop(pid);
  if (!keep) {
    std::filesystem::remove_all(dir);
  }
  return 0;
}
