// File: metrics.h
//
// Prometheus metrics: counters and gauges in a registry, rendered in the
// Prometheus text exposition format (version 0.0.4), and a tiny HTTP exporter
// that answers GET /metrics on one thread with blocking sockets (scrapes are
// rare and small; this keeps Asio out of every service's metrics path).
//
//   auto& delivered = metrics::Registry::Global().Counter(
//       "tern_deliverer_recipients_total", "Recipients by outcome", {{"outcome", "delivered"}});
//   delivered.Inc();
//
// Thread-safety: Counter/Gauge updates are lock-free atomics; registry lookups
// take a mutex (look a metric up once and keep the reference, which stays
// valid for the life of the process).
#pragma once

#include <atomic>
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

class Registry {
 public:
  static Registry& Global();

  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // A gauge computed at scrape time (e.g. queue depth read from the store).
  void AddGaugeCallback(const std::string& name, const std::string& help, std::function<double()> fn);

  std::string Render() const;

 private:
  struct Family {
    std::string help;
    std::string type;
    std::map<std::string, std::unique_ptr<Counter>> counters;  // key: rendered labels
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
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
