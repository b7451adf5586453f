// queue_bench: how fast is the durable queue, and does group commit work?
//
//   queue_bench [--dir DIR] [--seconds S] [--size BYTES] [--cycle-messages N] [--cycle-only]
//
// 1. Baselines: a bare loop of write(2 KB) + fdatasync on a file in DIR, for
//    S seconds, appending and inside a preallocated file (RocksDB
//    preallocates its WAL): the syncs per second this disk gives one writer.
// 2. Synced Enqueue of SIZE-byte messages (one recipient) through QueueCore
//    (RocksDB, WAL sync on every group) with 1, 8 and 64 concurrent callers,
//    S seconds each: messages/s and WAL syncs/s (group commits). Group commit
//    works when, with many callers, messages/s far exceeds the baseline's
//    syncs/s while syncs/s stays at or below it.
// 3. Lease + Report cycle: N messages queued, then 4 worker threads lease up
//    to 100 jobs at a time and report every recipient delivered (a no-op
//    worker): deliveries/s until the queue is empty, and the process's CPU
//    time per delivery (all threads), which other load does not change.
//    --cycle-only runs just this part.
//
// The core is used in process, so gRPC's cost is not in these figures.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "bench/queue/all_delivered.h"
#include "lib/metrics/metrics.h"
#include "services/queue/queue_core.h"

namespace {

using Clock = std::chrono::steady_clock;
using tern::queue::QueueCore;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// User + system CPU seconds of this whole process (all threads) so far: with
// other programs competing for the cores, CPU per operation is the figure
// that does not depend on them.
double ProcessCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

uint64_t Commits() {
  return tern::metrics::Registry::Global()
      .GetCounter("tern_queue_wal_syncs_total", "Group writes that were synced (every group but those made only of leases)")
      .value();
}

// With `preallocate`, the file's space is reserved first and the loop writes
// inside it (as RocksDB does with its WAL), so fdatasync need not also commit
// a new file size; without, every write appends.
double FdatasyncLoop(const std::string& dir, double seconds, size_t size, bool preallocate) {
  const std::string path = dir + "/fdatasync.bench";
  int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) {
    std::perror("open");
    return 0;
  }
  constexpr off_t kSpan = 64 << 20;
  if (preallocate && ::posix_fallocate(fd, 0, kSpan) != 0) {
    std::perror("posix_fallocate");
  }
  const std::string block(size, 'x');
  uint64_t n = 0;
  off_t offset = 0;
  const auto start = Clock::now();
  while (Seconds(Clock::now() - start) < seconds) {
    const ssize_t w = preallocate ? ::pwrite(fd, block.data(), block.size(), offset)
                                  : ::write(fd, block.data(), block.size());
    offset = (offset + static_cast<off_t>(size)) % (kSpan - static_cast<off_t>(size));
    if (w != static_cast<ssize_t>(block.size()) || ::fdatasync(fd) != 0) {
      std::perror("write/fdatasync");
      break;
    }
    ++n;
  }
  const double rate = n / Seconds(Clock::now() - start);
  ::close(fd);
  std::filesystem::remove(path);
  return rate;
}

tern::v1::EnqueueHeader Header(int n) {
  tern::v1::EnqueueHeader h;
  h.mutable_envelope()->set_mail_from("bench@src.example");
  h.mutable_envelope()->add_recipients()->set_address(absl::StrCat("rcpt", n % 1000, "@dest", n % 50, ".example"));
  return h;
}

bool EnqueueSync(QueueCore& core, int n, const std::string& body) {
  std::promise<bool> done;
  auto f = done.get_future();
  core.Enqueue(Header(n), body, [&done](absl::StatusOr<tern::queue::EnqueueResult> r) { done.set_value(r.ok()); });
  return f.get();
}

struct EnqueueResult {
  double msgs_per_s;
  double syncs_per_s;
};

EnqueueResult EnqueueRun(QueueCore& core, int callers, double seconds, const std::string& body) {
  std::atomic<uint64_t> count{0};
  std::atomic<bool> stop{false};
  const uint64_t commits_before = Commits();
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      int n = c;
      while (!stop.load(std::memory_order_relaxed)) {
        if (EnqueueSync(core, n, body)) {
          count.fetch_add(1, std::memory_order_relaxed);
        }
        n += callers;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) {
    t.join();
  }
  const double elapsed = Seconds(Clock::now() - start);
  return {count.load() / elapsed, (Commits() - commits_before) / elapsed};
}

struct CycleResult {
  double per_s;
  double cpu_us_per_delivery;
};

CycleResult CycleRun(QueueCore& core, int workers) {
  std::atomic<uint64_t> delivered{0};
  const double cpu_before = ProcessCpuSeconds();
  std::atomic<int> idle{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      while (true) {
        tern::v1::LeaseRequest req;
        req.set_kind(tern::v1::JOB_KIND_DELIVERY);
        req.set_max_jobs(100);
        req.set_worker_id(absl::StrCat("bench-", w));
        std::promise<absl::StatusOr<tern::v1::LeaseResponse>> lp;
        auto lf = lp.get_future();
        core.Lease(req, [&lp](absl::StatusOr<tern::v1::LeaseResponse> r) { lp.set_value(std::move(r)); });
        auto lease = lf.get();
        if (!lease.ok() || lease->deliveries().empty()) {
          return;  // the queue is empty (nothing due, no long poll)
        }
        tern::v1::ReportRequest rep = tern::bench::AllDelivered(*lease);
        std::promise<bool> rp;
        auto rf = rp.get_future();
        const size_t n = lease->deliveries_size();
        core.Report(std::move(rep), [&rp](absl::StatusOr<tern::v1::ReportResponse> r) { rp.set_value(r.ok()); });
        if (rf.get()) {
          delivered.fetch_add(n, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  (void)idle;
  const uint64_t n = delivered.load();
  return {n / Seconds(Clock::now() - start), n > 0 ? (ProcessCpuSeconds() - cpu_before) * 1e6 / n : 0};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"queue_bench: synced Enqueue and Lease+Report throughput of the queue core"};
  std::string dir = "/tmp/tern-queue-bench";
  double seconds = 5;
  size_t size = 2048;
  int cycle_messages = 50000;
  app.add_option("--dir", dir, "Scratch directory (emptied first; put it on the disk to measure)")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Duration of each Enqueue run and of the baseline")->capture_default_str();
  app.add_option("--size", size, "Body size in bytes")->capture_default_str();
  app.add_option("--cycle-messages", cycle_messages, "Messages for the Lease+Report cycle")->capture_default_str();
  bool cycle_only = false;
  app.add_flag("--cycle-only", cycle_only, "Run only the Lease+Report cycle (e.g. under perf)");
  CLI11_PARSE(app, argc, argv);

  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string body = absl::StrCat("Subject: bench\r\nFrom: bench@src.example\r\n\r\n",
                                        std::string(size > 64 ? size - 64 : 0, 'b'), "\r\n");
  tern::queue::CoreOptions options;
  if (!cycle_only) {
    const double appending = FdatasyncLoop(dir, seconds, size, /*preallocate=*/false);
    std::printf("baseline: bare append(%zu B)+fdatasync loop: %.0f syncs/s\n", size, appending);
    const double baseline = FdatasyncLoop(dir, seconds, size, /*preallocate=*/true);
    std::printf("baseline: bare pwrite(%zu B)+fdatasync loop in a preallocated file: %.0f syncs/s\n", size, baseline);

    options.data_dir = dir + "/enqueue";
    {
      auto core = QueueCore::Open(options);
      if (!core.ok()) {
        std::fprintf(stderr, "open: %s\n", std::string(core.status().message()).c_str());
        return 1;
      }
      for (int callers : {1, 8, 64}) {
        EnqueueResult r = EnqueueRun(**core, callers, seconds, body);
        std::printf("enqueue: %2d callers: %8.0f msgs/s  %6.0f WAL syncs/s  "
                    "(%.1f msgs per sync; baseline %.0f syncs/s)\n",
                    callers, r.msgs_per_s, r.syncs_per_s, r.syncs_per_s > 0 ? r.msgs_per_s / r.syncs_per_s : 0,
                    baseline);
        std::fflush(stdout);
      }
    }
  }

  options.data_dir = dir + "/cycle";
  {
    auto core = QueueCore::Open(options);
    if (!core.ok()) {
      return 1;
    }
    // Fill with 64 callers (fast), then drain.
    std::atomic<int> next{0};
    std::vector<std::thread> fill;
    for (int c = 0; c < 64; ++c) {
      fill.emplace_back([&] {
        for (int n = next++; n < cycle_messages; n = next++) {
          EnqueueSync(**core, n, body);
        }
      });
    }
    for (auto& t : fill) {
      t.join();
    }
    const CycleResult r = CycleRun(**core, 4);
    std::printf("lease+report: %d messages, 4 workers x 100 jobs per lease: %.0f deliveries/s, %.1f us CPU per "
                "delivery (whole process)\n",
                cycle_messages, r.per_s, r.cpu_us_per_delivery);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
