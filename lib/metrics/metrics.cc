#include "lib/metrics/metrics.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"

namespace tern::metrics {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    buckets_[i].store(0, std::memory_order_relaxed);
  }
}

void Histogram::Observe(double value) {
  // Linear search: the lists are short (~20) and most observations land in
  // the first few buckets.
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) {
    ++i;
  }
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    out[i] = total;
  }
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};
}

Registry& Registry::Global() {
  static Registry* registry = new Registry;
  return *registry;
}

std::string RenderLabels(const Labels& labels) {
  if (labels.empty()) {
    return "";
  }
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out.push_back(',');
    absl::StrAppend(&out, labels[i].first, "=\"");
    for (char c : labels[i].second) {
      if (c == '\\' || c == '"') {
        out.push_back('\\');
        out.push_back(c);
      } else if (c == '\n') {
        out.append("\\n");
      } else {
        out.push_back(c);
      }
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

Registry::Family& Registry::FamilyFor(const std::string& name, const std::string& help, const char* type) {
  Family& f = families_[name];
  if (f.type.empty()) {
    f.help = help;
    f.type = type;
  }
  return f;
}

Counter& Registry::GetCounter(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  auto& slot = FamilyFor(name, help, "counter").counters[RenderLabels(labels)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  auto& slot = FamilyFor(name, help, "gauge").gauges[RenderLabels(labels)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                                  const Labels& labels) {
  absl::MutexLock lock(&mu_);
  auto& slot = FamilyFor(name, help, "histogram").histograms[RenderLabels(labels)];
  if (!slot.second) {
    slot.first = labels;
    slot.second = std::make_unique<Histogram>(std::move(bounds));
  }
  return *slot.second;
}

void Registry::AddGaugeCallback(const std::string& name, const std::string& help, std::function<double()> fn) {
  absl::MutexLock lock(&mu_);
  FamilyFor(name, help, "gauge").callback = std::move(fn);
}

std::string Registry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, f] : families_) {
    absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n# TYPE ", name, " ", f.type, "\n");
    for (const auto& [labels, c] : f.counters) {
      absl::StrAppend(&out, name, labels, " ", c->value(), "\n");
    }
    for (const auto& [labels, g] : f.gauges) {
      absl::StrAppend(&out, name, labels, " ", g->value(), "\n");
    }
    for (const auto& [labels, entry] : f.histograms) {
      const Histogram& h = *entry.second;
      Labels with_le = entry.first;
      with_le.emplace_back("le", "");
      // One snapshot for every line of this histogram, so _count equals the
      // +Inf bucket.
      const std::vector<uint64_t> cumulative = h.CumulativeCounts();
      for (size_t i = 0; i < cumulative.size(); ++i) {
        with_le.back().second = i < h.bounds().size() ? absl::StrCat(h.bounds()[i]) : "+Inf";
        absl::StrAppend(&out, name, "_bucket", RenderLabels(with_le), " ", cumulative[i], "\n");
      }
      absl::StrAppend(&out, name, "_sum", labels, " ", h.sum(), "\n", name, "_count", labels, " ",
                      cumulative.back(), "\n");
    }
    if (f.callback) {
      absl::StrAppend(&out, name, " ", f.callback(), "\n");
    }
  }
  return out;
}

std::unique_ptr<HttpExporter> HttpExporter::Start(const std::string& listen, const Registry& registry) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    log::Event(log::Level::kError, "metrics_listen_invalid", {{"listen", listen}});
    return nullptr;
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port_text = listen.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res) != 0 || res == nullptr) {
    log::Event(log::Level::kError, "metrics_listen_invalid", {{"listen", listen}});
    return nullptr;
  }
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 16) != 0) {
    log::Event(log::Level::kError, "metrics_listen_failed", {{"listen", listen}, {"error", std::strerror(errno)}});
    if (fd >= 0) ::close(fd);
    freeaddrinfo(res);
    return nullptr;
  }
  freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  int port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  log::Event(log::Level::kInfo, "metrics_listening", {{"listen", listen}, {"port", absl::StrCat(port)}});
  return std::unique_ptr<HttpExporter>(new HttpExporter(fd, port, registry));
}

HttpExporter::HttpExporter(int fd, int port, const Registry& registry)
    : fd_(fd), port_(port), registry_(registry), thread_([this] { Serve(); }) {}

HttpExporter::~HttpExporter() {
  stop_ = true;
  thread_.join();
  ::close(fd_);
}

void HttpExporter::Serve() {
  while (!stop_) {
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 200) <= 0) {
      continue;
    }
    int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      continue;
    }
    timeval tv{2, 0};
    setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string request;
    char buf[2048];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 8192) {
      ssize_t n = ::recv(client, buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    std::string response;
    if (absl::StartsWith(request, "GET /metrics")) {
      const std::string body = registry_.Render();
      response = absl::StrCat("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: ",
                              body.size(), "\r\nConnection: close\r\n\r\n", body);
    } else {
      response = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    }
    size_t sent = 0;
    while (sent < response.size()) {
      ssize_t n = ::send(client, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    ::close(client);
  }
}

}  // namespace tern::metrics
