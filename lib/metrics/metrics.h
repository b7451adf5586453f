// File: metrics.h
//
// Prometheus metrics: counters, gauges and histograms in a registry, rendered in the
// Prometheus text exposition format (version 0.0.4), and a tiny HTTP exporter
// that answers GET /metrics on one thread with blocking sockets (scrapes are
// rare and small; this keeps Asio out of every service's metrics path).
//
//   auto& delivered = metrics::Registry::Global().Counter(
//       "tern_deliverer_recipients_total", "Recipients by outcome", {{"outcome", "delivered"}});
//   delivered.Inc();
//
//   auto& commit = metrics::Registry::Global().GetHistogram(
//       "tern_queue_commit_seconds", "Write and sync of one commit group", metrics::LatencyBuckets());
//   commit.Observe(seconds);
//
// Thread-safety: Counter/Gauge/Histogram updates are lock-free atomics; registry lookups
// take a mutex (look a metric up once and keep the reference, which stays
// valid for the life of the process).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tern::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// A Prometheus histogram: counts of observations at or below each upper
// bound, their sum and their count. Observe() is a few relaxed atomic adds,
// cheap enough for a per-message hot path; the cumulative counts Prometheus
// wants are summed at scrape time.
class Histogram {
 public:
  // `bounds`: strictly increasing, finite upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);
  // Seconds from `start` until now, on the steady clock.
  void ObserveSince(std::chrono::steady_clock::time_point start) {
    Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  const std::vector<double>& bounds() const { return bounds_; }
  // Element i: observations at or below bounds()[i]; the last element
  // (index bounds().size()) is every observation, the +Inf bucket. Each
  // bucket is read once, so the counts never decrease along the vector even
  // while other threads observe.
  std::vector<uint64_t> CumulativeCounts() const;
  uint64_t cumulative_count(size_t i) const { return CumulativeCounts()[i]; }
  uint64_t count() const { return CumulativeCounts().back(); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bucket, not cumulative; last = above every bound
  std::atomic<double> sum_{0.0};
};

// Upper bounds in seconds for latencies from 50 us to 10 s: the range from a
// lone fdatasync on a fast disk to a remote MTA that answers slowly.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  static Registry& Global();

  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // The bounds of the first call for a name and labels win.
  Histogram& GetHistogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                          const Labels& labels = {});
  // A gauge computed at scrape time (e.g. queue depth read from the store).
  void AddGaugeCallback(const std::string& name, const std::string& help, std::function<double()> fn);

  std::string Render() const;

 private:
  struct Family {
    std::string help;
    std::string type;
    std::map<std::string, std::unique_ptr<Counter>> counters;  // key: rendered labels
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    // key: rendered labels; the labels themselves, to add "le" when rendering
    std::map<std::string, std::pair<Labels, std::unique_ptr<Histogram>>> histograms;
    std::function<double()> callback;
  };
  Family& FamilyFor(const std::string& name, const std::string& help, const char* type);

  mutable absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

// Renders labels as {a="x",b="y"} with Prometheus escaping; "" when empty.
std::string RenderLabels(const Labels& labels);

// Serves GET /metrics for `registry` on `listen` ("host:port"; port 0 picks
// one). Stops and joins its thread on destruction.
class HttpExporter {
 public:
  static std::unique_ptr<HttpExporter> Start(const std::string& listen, const Registry& registry);
  ~HttpExporter();
  int port() const { return port_; }

 private:
  HttpExporter(int fd, int port, const Registry& registry);
  void Serve();

  int fd_;
  int port_;
  const Registry& registry_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tern::metrics
