#include "services/deliverer/connection_pool.h"

#include <sys/socket.h>

#include <cerrno>
#include <deque>
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

class ConnectionPool::State : public std::enable_shared_from_this<ConnectionPool::State> {
 public:
  struct Entry {
    explicit Entry(asio::any_io_executor ex) : timer(ex) {}
    std::unique_ptr<SmtpSession> session;
    std::string destination;  // "" when connections are not counted
    asio::steady_timer timer;
  };
  // A transaction waiting in Acquire: woken (timer cancelled) with `done`
  // set and a session or a slot, or by its timer running out.
  struct Waiter {
    Waiter(asio::any_io_executor ex, std::string k) : key(std::move(k)), timer(ex) {}
    std::string key;
    asio::steady_timer timer;
    bool done = false;
    std::unique_ptr<SmtpSession> session;
    std::unique_ptr<ConnectionSlot> slot;
  };

  State(asio::any_io_executor ex, Options o) : executor(std::move(ex)), options(o) {}

  asio::any_io_executor executor;
  Options options;
  std::unordered_map<std::string, std::vector<std::shared_ptr<Entry>>> idle;
  size_t idle_count = 0;
  size_t quitting = 0;
  uint64_t reused = 0;
  bool closing = false;
  // Only with options.max_per_destination: connections holding a slot, idle
  // sessions and waiting transactions, each per destination.
  std::unordered_map<std::string, size_t> open;
  std::unordered_map<std::string, size_t> idle_by_destination;
  std::unordered_map<std::string, std::deque<std::shared_ptr<Waiter>>> waiters;
  metrics::Gauge& idle_gauge =
      metrics::Registry::Global().GetGauge("tern_deliverer_pool_idle_connections", "Idle SMTP connections kept");
  metrics::Counter& reused_counter = metrics::Registry::Global().GetCounter(
      "tern_deliverer_pool_reused_total", "Deliveries that reused a pooled SMTP connection");
  metrics::Counter& waits_counter = metrics::Registry::Global().GetCounter(
      "tern_deliverer_connection_waits_total",
      "Transactions that waited because their destination had destination_connections_max connections open");
  metrics::Counter& wait_timeouts_counter = metrics::Registry::Global().GetCounter(
      "tern_deliverer_connection_wait_timeouts_total",
      "Transactions that gave up waiting for a connection to their destination (half their lease)");
  metrics::Gauge& waiting_gauge = metrics::Registry::Global().GetGauge(
      "tern_deliverer_connection_waiting", "Transactions waiting for a connection to their destination");

  void CountIdle(const std::string& destination, int delta) {
    if (destination.empty()) {
      return;
    }
    auto it = idle_by_destination.try_emplace(destination, 0).first;
    it->second = static_cast<size_t>(static_cast<int64_t>(it->second) + delta);
    if (it->second == 0) {
      idle_by_destination.erase(it);
    }
  }

  // The waiting gauge, counted from the lines themselves (few destinations
  // have one) after every change to them.
  void UpdateWaitingGauge() {
    size_t n = 0;
    for (const auto& [destination, queue] : waiters) {
      n += queue.size();
    }
    waiting_gauge.Set(static_cast<double>(n));
  }

  // Wakes `w`, already out of its line, with what it waited for.
  void Wake(const std::shared_ptr<Waiter>& w) {
    w->done = true;
    UpdateWaitingGauge();
    w->timer.cancel();
  }

  // A slot of `destination` was freed: grant free slots to waiters, oldest
  // first.
  void Release(const std::string& destination) {
    auto it = open.find(destination);
    if (it == open.end()) {
      return;
    }
    if (--it->second == 0) {
      open.erase(it);
    }
    auto wit = waiters.find(destination);
    while (wit != waiters.end() && !wit->second.empty() && Open(destination) < options.max_per_destination) {
      std::shared_ptr<Waiter> w = std::move(wit->second.front());
      wit->second.pop_front();
      ++open[destination];
      w->slot = std::make_unique<ConnectionSlot>(weak_from_this(), destination);
      Wake(w);
    }
    if (wit != waiters.end() && wit->second.empty()) {
      waiters.erase(wit);
    }
  }

  size_t Open(const std::string& destination) const {
    auto it = open.find(destination);
    return it == open.end() ? 0 : it->second;
  }

  // Hands `session` to the oldest transaction waiting for the same key.
  // False (session untouched) when none waits for it.
  bool HandOver(const std::string& key, const std::string& destination, std::unique_ptr<SmtpSession>& session) {
    auto wit = waiters.find(destination);
    if (wit == waiters.end()) {
      return false;
    }
    auto& queue = wit->second;
    for (auto i = queue.begin(); i != queue.end(); ++i) {
      if ((*i)->key == key) {
        std::shared_ptr<Waiter> w = std::move(*i);
        queue.erase(i);
        if (queue.empty()) {
          waiters.erase(wit);
        }
        w->session = std::move(session);
        ++reused;
        reused_counter.Inc();
        Wake(w);
        return true;
      }
    }
    return false;
  }

  // Wakes every waiting transaction empty-handed (shutdown): each gives up
  // as if its wait had timed out.
  void WakeAllWaiters() {
    auto all = std::move(waiters);
    waiters.clear();
    UpdateWaitingGauge();
    for (auto& [destination, queue] : all) {
      for (auto& w : queue) {
        w->timer.cancel();
      }
    }
  }

  // Closes one idle session to `destination` parked under another key than
  // `key`, so that its slot can go to a transaction that cannot use it.
  void CloseIdleOfOtherKey(const std::string& destination, const std::string& key) {
    if (idle_by_destination.find(destination) == idle_by_destination.end()) {
      return;
    }
    for (auto& [k, entries] : idle) {
      if (k == key) {
        continue;
      }
      for (auto& e : entries) {
        if (e->destination == destination && e->session) {
          e->timer.cancel();  // Expire takes it out and QUITs it; the slot frees when it is closed
          return;
        }
      }
    }
  }

  bool HasWaiters(const std::string& destination) const {
    auto it = waiters.find(destination);
    return it != waiters.end() && !it->second.empty();
  }

  void Remove(const std::string& key, const Entry* e) {
    auto it = idle.find(key);
    if (it == idle.end()) {
      return;
    }
    auto& v = it->second;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].get() == e) {
        CountIdle(e->destination, -1);
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
  state_->idle_by_destination.clear();
  state_->idle_count = 0;
  state_->WakeAllWaiters();
}

bool ConnectionPool::enabled() const { return state_->options.idle_timeout > Clock::duration::zero(); }

std::unique_ptr<SmtpSession> ConnectionPool::Take(const std::string& key) {
  auto it = state_->idle.find(key);
  while (it != state_->idle.end() && !it->second.empty()) {
    std::shared_ptr<State::Entry> entry = it->second.back();
    it->second.pop_back();
    --state_->idle_count;
    state_->CountIdle(entry->destination, -1);
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
  const std::string destination = session->slot ? session->slot->destination() : std::string();
  if (!enabled() || st.closing || session->messages >= st.options.max_messages) {
    asio::co_spawn(st.executor, State::Quit(state_, std::move(session)), asio::detached);
    return;
  }
  if (!destination.empty() && st.HasWaiters(destination)) {
    // A transaction waits for a connection there: the same kind takes this
    // one at once; otherwise closing it frees the slot for the waiter.
    if (!st.HandOver(key, destination, session)) {
      asio::co_spawn(st.executor, State::Quit(state_, std::move(session)), asio::detached);
    }
    return;
  }
  if (st.idle_count >= st.options.max_idle) {
    asio::co_spawn(st.executor, State::Quit(state_, std::move(session)), asio::detached);
    return;
  }
  auto entry = std::make_shared<State::Entry>(st.executor);
  entry->session = std::move(session);
  entry->destination = destination;
  st.CountIdle(destination, 1);
  entry->timer.expires_after(st.options.idle_timeout);
  st.idle[key].push_back(entry);
  ++st.idle_count;
  st.idle_gauge.Set(static_cast<double>(st.idle_count));
  asio::co_spawn(st.executor, State::Expire(state_, std::move(entry), key), asio::detached);
}

asio::awaitable<void> ConnectionPool::Shutdown(Clock::duration timeout) {
  std::shared_ptr<State> st = state_;
  st->closing = true;
  st->WakeAllWaiters();
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

asio::awaitable<ConnectionPool::Acquired> ConnectionPool::Acquire(std::string key, std::string destination,
                                                                  Clock::duration timeout) {
  std::shared_ptr<State> st = state_;  // this pool may be destroyed while the transaction waits
  Acquired out;
  if (enabled()) {
    out.session = Take(key);
    if (out.session) {
      co_return out;
    }
  }
  const uint32_t limit = st->options.max_per_destination;
  if (limit == 0) {
    co_return out;  // connections are not counted: open one
  }
  if (st->Open(destination) < limit && !st->HasWaiters(destination)) {
    ++st->open[destination];
    out.slot = std::make_unique<ConnectionSlot>(st, destination);
    co_return out;
  }
  if (st->closing) {
    out.timed_out = true;
    co_return out;
  }
  st->CloseIdleOfOtherKey(destination, key);
  auto w = std::make_shared<State::Waiter>(st->executor, key);
  w->timer.expires_after(timeout);
  st->waiters[destination].push_back(w);
  st->UpdateWaitingGauge();
  st->waits_counter.Inc();
  (void)co_await w->timer.async_wait(kNoThrow);
  if (!w->done) {
    // Timed out (or shutdown): leave the line.
    auto wit = st->waiters.find(destination);
    if (wit != st->waiters.end()) {
      auto& queue = wit->second;
      for (auto i = queue.begin(); i != queue.end(); ++i) {
        if (*i == w) {
          queue.erase(i);
          break;
        }
      }
      if (queue.empty()) {
        st->waiters.erase(wit);
      }
      st->UpdateWaitingGauge();
    }
    st->wait_timeouts_counter.Inc();
    out.timed_out = true;
    co_return out;
  }
  out.session = std::move(w->session);
  out.slot = std::move(w->slot);
  co_return out;
}

size_t ConnectionPool::open(const std::string& destination) const { return state_->Open(destination); }

ConnectionSlot::ConnectionSlot(std::weak_ptr<ConnectionPool::State> state, std::string destination)
    : state_(std::move(state)), destination_(std::move(destination)) {}

ConnectionSlot::~ConnectionSlot() {
  if (std::shared_ptr<ConnectionPool::State> st = state_.lock()) {
    st->Release(destination_);
  }
}

size_t ConnectionPool::idle() const { return state_->idle_count; }

uint64_t ConnectionPool::reused() const { return state_->reused; }

}  // namespace tern::deliverer
