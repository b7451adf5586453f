#include "services/deliverer/connection_pool.h"

#include <sys/socket.h>

#include <cerrno>
#include <unordered_map>
#include <vector>

#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/steady_timer.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/metrics/metrics.h"

namespace tern::deliverer {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// True when the peer closed the connection or sent something while the
// session was idle (an unsolicited 421, a TLS close_notify): either way the
// session cannot be used for a new transaction.
bool GoneOrTalking(SmtpSession& s) {
  if (!s.conn || !s.conn->socket().is_open() || s.conn->buffered() > 0) {
    return true;
  }
  char c;
  const ssize_t n = ::recv(s.conn->socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) {
    return true;
  }
  if (n > 0) {
    return true;
  }
  return errno != EAGAIN && errno != EWOULDBLOCK;
}

}  // namespace

asio::awaitable<void> QuitSession(SmtpSession& session, Clock::duration timeout) {
  if (!session.conn) {
    co_return;
  }
  absl::Status s = co_await session.conn->Write("QUIT\r\n", timeout);
  if (s.ok()) {
    // One reply line is enough courtesy; a multi-line 221 is rare.
    (void)co_await session.conn->ReadLine(4096, timeout);
  }
  co_await session.conn->Close(std::chrono::seconds(2));
}

class ConnectionPool::State {
 public:
  struct Entry {
    explicit Entry(asio::any_io_executor ex) : timer(ex) {}
    std::unique_ptr<SmtpSession> session;
    asio::steady_timer timer;
  };

  State(asio::any_io_executor ex, Options o) : executor(std::move(ex)), options(o) {}

  asio::any_io_executor executor;
  Options options;
  std::unordered_map<std::string, std::vector<std::shared_ptr<Entry>>> idle;
  size_t idle_count = 0;
  size_t quitting = 0;
  uint64_t reused = 0;
  bool closing = false;
  metrics::Gauge& idle_gauge =
      metrics::Registry::Global().GetGauge("tern_deliverer_pool_idle_connections", "Idle SMTP connections kept");
  metrics::Counter& reused_counter = metrics::Registry::Global().GetCounter(
      "tern_deliverer_pool_reused_total", "Deliveries that reused a pooled SMTP connection");

  void Remove(const std::string& key, const Entry* e) {
    auto it = idle.find(key);
    if (it == idle.end()) {
      return;
    }
    auto& v = it->second;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].get() == e) {
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
        --idle_count;
        break;
      }
    }
    if (v.empty()) {
      idle.erase(it);
    }
    idle_gauge.Set(static_cast<double>(idle_count));
  }

  static asio::awaitable<void> Quit(std::shared_ptr<State> self, std::unique_ptr<SmtpSession> session) {
    ++self->quitting;
    co_await QuitSession(*session, std::chrono::seconds(5));
    --self->quitting;
  }

  // Waits for the idle timer; if the session is still parked then (expiry or
  // shutdown), takes it out and QUITs it.
  static asio::awaitable<void> Expire(std::shared_ptr<State> self, std::shared_ptr<Entry> entry, std::string key) {
    (void)co_await entry->timer.async_wait(kNoThrow);
    if (!entry->session) {
      co_return;  // taken for reuse
    }
    self->Remove(key, entry.get());
    std::unique_ptr<SmtpSession> session = std::move(entry->session);
    co_await Quit(self, std::move(session));
  }
};

ConnectionPool::ConnectionPool(asio::any_io_executor executor, Options options)
    : state_(std::make_shared<State>(std::move(executor), options)) {}

ConnectionPool::~ConnectionPool() {
  // Parked sessions are dropped (their sockets close); Expire coroutines
  // still waiting hold the state and finish when their timers are cancelled.
  state_->closing = true;
  for (auto& [key, entries] : state_->idle) {
    for (auto& e : entries) {
      e->session.reset();
      e->timer.cancel();
    }
  }
  state_->idle.clear();
  state_->idle_count = 0;
}

bool ConnectionPool::enabled() const { return state_->options.idle_timeout > Clock::duration::zero(); }

std::unique_ptr<SmtpSession> ConnectionPool::Take(const std::string& key) {
  auto it = state_->idle.find(key);
  while (it != state_->idle.end() && !it->second.empty()) {
    std::shared_ptr<State::Entry> entry = it->second.back();
    it->second.pop_back();
    --state_->idle_count;
    std::unique_ptr<SmtpSession> session = std::move(entry->session);
    entry->timer.cancel();
    if (session && !GoneOrTalking(*session)) {
      if (it->second.empty()) {
        state_->idle.erase(it);
      }
      state_->idle_gauge.Set(static_cast<double>(state_->idle_count));
      ++state_->reused;
      state_->reused_counter.Inc();
      return session;
    }
    // Dead while idle: dropping it closes the socket.
  }
  if (it != state_->idle.end() && it->second.empty()) {
    state_->idle.erase(it);
  }
  state_->idle_gauge.Set(static_cast<double>(state_->idle_count));
  return nullptr;
}

void ConnectionPool::Put(const std::string& key, std::unique_ptr<SmtpSession> session) {
  if (!session || !session->conn) {
    return;
  }
  State& st = *state_;
  if (!enabled() || st.closing || session->messages >= st.options.max_messages ||
      st.idle_count >= st.options.max_idle) {
    asio::co_spawn(st.executor, State::Quit(state_, std::move(session)), asio::detached);
    return;
  }
  auto entry = std::make_shared<State::Entry>(st.executor);
  entry->session = std::move(session);
  entry->timer.expires_after(st.options.idle_timeout);
  st.idle[key].push_back(entry);
  ++st.idle_count;
  st.idle_gauge.Set(static_cast<double>(st.idle_count));
  asio::co_spawn(st.executor, State::Expire(state_, std::move(entry), key), asio::detached);
}

asio::awaitable<void> ConnectionPool::Shutdown(Clock::duration timeout) {
  std::shared_ptr<State> st = state_;
  st->closing = true;
  for (auto& [key, entries] : st->idle) {
    for (auto& e : entries) {
      e->timer.cancel();  // Expire then QUITs it
    }
  }
  asio::steady_timer tick(st->executor);
  const Clock::time_point deadline = Clock::now() + timeout;
  while ((st->idle_count > 0 || st->quitting > 0) && Clock::now() < deadline) {
    tick.expires_after(std::chrono::milliseconds(10));
    co_await tick.async_wait(kNoThrow);
  }
}

size_t ConnectionPool::idle() const { return state_->idle_count; }

uint64_t ConnectionPool::reused() const { return state_->reused; }

}  // namespace tern::deliverer
